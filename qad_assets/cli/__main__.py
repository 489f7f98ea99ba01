"""``python -m qad_assets.cli``: the ``qad`` command."""

import sys

from qad_assets.cli import main

sys.exit(main())
