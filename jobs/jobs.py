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
    description="Retrain: train and register the VAE of a release (partition = release).",
)

score_job = dg.define_asset_job(
    "qad_score",
    selection=dg.AssetSelection.assets("anomaly_scores"),
    description="Score spectra partitions with the model vae_model trained for their release.",
)

score_with_champion_job = dg.define_asset_job(
    "qad_score_champion",
    selection=dg.AssetSelection.assets("anomaly_scores"),
    config={"ops": {"anomaly_scores": {"config": {"model": "champion"}}}},
    description="Score-only: score spectra partitions with the registry's champion model (no training).",
)

report_job = dg.define_asset_job(
    "qad_report",
    selection=dg.AssetSelection.assets("validation_report"),
    description="Validate a release's detector and promote its model to champion when the checks pass.",
)

rank_job = dg.define_asset_job(
    "qad_rank",
    selection=dg.AssetSelection.assets("candidate_ranking"),
    description="Re-rank a release's candidates with the labels given in the explorer (partition = release).",
)
