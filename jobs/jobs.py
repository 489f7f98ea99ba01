"""Jobs: one per way the lab runs the pipeline."""

import dagster as dg

spectra_job = dg.define_asset_job(
    "qad_spectra",
    selection=dg.AssetSelection.groups("spectra"),
    description="raw_spectra → normalized_spectra → spectral_features for the selected spectra partitions.",
)

train_job = dg.define_asset_job(
    "qad_train",
    selection=dg.AssetSelection.assets("vae_model"),
    description="Train and register the VAE of a release (partition = release).",
)
