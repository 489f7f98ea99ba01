"""The science library: plain batch functions over numpy, torch and Arrow. No Dagster import (a test
enforces it); the Dagster layer in ``qad_assets.assets`` only wires these to partitions and resources.

Wings, in pipeline order:

- ``io``: DESI files (coadds, redrock, QSO catalogues, the archive tree), the ingestion ledger, the
  Parquet product store and atomic writes;
- ``spectra``: DESI's arms and their merging, row selection, S/N, the rest-frame grid, resampling,
  normalization, spectra that arrive one by one, physical features;
- ``model``: the VAE, its training, the train/validation split, scoring and its calibration, the model
  package;
- ``validation``: baselines, injected anomalies, evaluation metrics, the release harness, the report.

``partition_steps`` holds the units of work the assets fan out: one partition, read → science → write.
"""
