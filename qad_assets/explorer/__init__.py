"""The candidate explorer (``qad explore``): a web application over a release's products where
astronomers page through candidates, inspect spectra, label them and export lists.

``catalog`` pages, filters and sorts a release on the server; ``spectrum`` reads one spectrum and its
reconstruction; ``plots`` draws it with Bokeh (BokehJS served from the installed package, no CDN);
``export`` writes CSV, FITS and VOTable; ``app`` is the FastAPI application. Labels go to
``qad_assets.labels``. No Dagster import (tests/test_import_contract.py).
"""
