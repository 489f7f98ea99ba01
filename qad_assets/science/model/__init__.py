"""The model: the VAE, its training, the train/validation split, scoring and the model package."""

from qad_assets.science.model.package import ModelPackage
from qad_assets.science.model.scoring import Scorer, fit_scorer, score_spectra
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.training import TrainOptions, train_vae, train_vae_ray
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig, reconstruct

__all__ = [
    "Scorer",
    "ModelPackage",
    "SpectrumVAE",
    "TrainOptions",
    "VaeConfig",
    "fit_scorer",
    "reconstruct",
    "score_spectra",
    "select_rows",
    "train_vae",
    "train_vae_ray",
]
