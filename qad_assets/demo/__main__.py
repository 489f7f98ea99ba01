"""``python -m qad_assets.demo ROOT``: write the default demo release under ROOT."""

from qad_assets.demo.release import main

main()
