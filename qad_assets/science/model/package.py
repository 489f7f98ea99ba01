"""A registered VAE ready to score: the network, its scorer, and which version of which model it is.

The batch ``anomaly_scores`` step and the scoring service both score through :meth:`ScoringModel.score`,
so a spectrum gets the same numbers whichever way it arrives. Plain numpy/torch, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qad_assets.science.model.scoring import Scorer, score_spectra
from qad_assets.science.model.vae import SpectrumVAE, load_model
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.science.spectra.snr import spectrum_snr

#: Per-spectrum outputs of scoring that the batch table and the service both report, besides S/N.
SCORE_COLUMNS = (
    "reduced_chi2",
    "chi2",
    "n_obs",
    "kl",
    "neg_elbo",
    "latent_nll",
    "anomaly_score",
    "p_value",
    "top_region",
    "top_region_share",
    "worst_arm",
)


@dataclass(frozen=True)
class ScoringModel:
    """One model version in memory. ``training_release`` is the release it was trained on (its
    training-split spectra are scored against the training calibration, as in the batch).
    """

    model: SpectrumVAE
    scorer: Scorer
    version: str
    training_release: str | None = None
    device: str = "cpu"

    @classmethod
    def load(
        cls, model_dir: Path, *, version: str, training_release: str | None = None, device: str = "cpu"
    ) -> ScoringModel:
        """Weights (safetensors) and ``scorer.json`` of a model directory written by ``vae_model``."""
        model, _, _ = load_model(model_dir, grid=REST_GRID, map_location=device)
        return cls(model, Scorer.load(Path(model_dir) / "scorer.json"), version, training_release, device)

    def score(
        self,
        flux: np.ndarray,
        ivar: np.ndarray,
        z: np.ndarray,
        *,
        targetid: np.ndarray | None = None,
        from_training_release: np.ndarray | bool = False,
    ) -> dict[str, np.ndarray]:
        """Rest-frame normalized spectra (N, npix) → ``snr``, every :data:`SCORE_COLUMNS` entry and
        ``latent_mean`` (N, L). Rows with a TARGETID and ``from_training_release`` that fall in the
        training split are standardised against the training spectra.
        """
        in_training = None
        if targetid is not None:
            in_training = self.scorer.training_rows(targetid) & np.asarray(from_training_release, bool)
        snr = spectrum_snr(flux, ivar, REST_GRID)
        scores = score_spectra(
            self.model, self.scorer, flux, ivar, z, snr, REST_GRID, in_training=in_training, device=self.device
        )
        return {"snr": snr, **scores}
