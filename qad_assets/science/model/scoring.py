"""Per-spectrum anomaly scores from a trained VAE, calibrated so that they do not track S/N.

A quasar is anomalous when the VAE, which learned what normal quasars look like, cannot reconstruct
it, or can only with an unusual latent code. Raw goodness-of-fit numbers grow with S/N, though: the
model is imperfect at the ~1 % level, invisible at S/N 2 and dominant at S/N 30. So every score
component is standardised against held-out normal spectra *as a function of S/N* (its robust median
and width, fitted against log S/N), the standardised components are summed, the sum is standardised
once more, and a tail p-value comes from the same held-out spectra. The model fits the spectra it was
trained on better than others (noticeably so on a small release), so those are standardised against
the training spectra instead, when their TARGETIDs are given. Choices and measured figures:
``docs/scoring.md``.

Components (higher = worse fit), all from one reconstruction per spectrum:

* ``log_reduced_chi2``: χ²/(n_eff − 1) over observed pixels, Lyα forest down-weighted as in training;
* ``coherent_chi2_8``, ``coherent_chi2_32``: residuals summed over blocks of 8 / 32 pixels (≈ 1400 /
  5500 km/s) before squaring, ``(Σ w·r)² / Σ w`` averaged over blocks. Noise averages out in a block,
  a physical mismatch (a trough, a line of the wrong strength, a bent continuum) adds up, so these
  see broad features that the per-pixel χ² dilutes;
* ``peak_chi2_8``: the largest 8-pixel block: one localized feature in an otherwise normal spectrum;
* ``latent_nll``: −log density of the latent mean under a Gaussian mixture fitted on the training
  spectra's latent means: a spectrum the decoder can fit, but only from an unusual place.

Plain numpy/torch/scikit-learn, no Dagster. Everything scoring needs is in :class:`Scorer`, JSON-safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qad_assets.errors import GridMismatchError, ModelPackageError, TooFewSpectraError
from qad_assets.science.io.atomic_files import write_bytes_atomic
from qad_assets.science.model.calibration import MIN_CALIBRATION_ROWS, SnrCalibration, fit_snr_calibration
from qad_assets.science.model.explanation import explain
from qad_assets.science.model.latent_density import LatentDensity, fit_latent_density
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.vae import SpectrumVAE, reconstruct
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid, grid_fingerprint

#: Block sizes (pixels) of the coherent-residual components: 8 ≈ 1400 km/s, 32 ≈ 5500 km/s on REST_GRID.
COHERENT_BLOCKS = (8, 32)
PEAK_BLOCK = 8
COMPONENTS = ("log_reduced_chi2", "coherent_chi2_8", "coherent_chi2_32", "peak_chi2_8", "latent_nll")
_SCORER_VERSION = 1


@dataclass(frozen=True)
class Scorer:
    """What scoring needs besides the model: latent density, calibrations, reference scores.

    ``calibrations`` come from the held-out spectra, ``train_calibrations`` from the training spectra
    (for scoring those: an in-sample fit is better than an out-of-sample one). Each holds one entry
    per component and ``"anomaly_score"`` for their sum. ``reference`` holds the final scores of the
    held-out spectra, sorted: the p-value of a score is the fraction of them at least as high (+1
    correction).
    """

    grid_sha256: str
    val_fraction: float
    density: LatentDensity
    calibrations: dict[str, SnrCalibration]
    train_calibrations: dict[str, SnrCalibration]
    reference: np.ndarray

    def combine(
        self, components: dict[str, np.ndarray], snr: np.ndarray, in_training: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Standardised components ``{name: z}`` and the S/N-standardised sum of them; rows flagged
        ``in_training`` against the training spectra.
        """
        z, score = _standardise(self.calibrations, components, snr)
        if in_training is None or not np.any(in_training):
            return z, score
        z_train, score_train = _standardise(self.train_calibrations, components, snr)
        z = {name: np.where(in_training, z_train[name], z[name]) for name in z}
        return z, np.where(in_training, score_train, score)

    def training_rows(self, targetid: np.ndarray) -> np.ndarray:
        """Which of these TARGETIDs fall in the training split (if they are from the training release)."""
        return select_rows(np.asarray(targetid, np.int64), "train", self.val_fraction)

    def p_value(self, score: np.ndarray) -> np.ndarray:
        """``(1 + #reference ≥ score) / (1 + n)``, in (0, 1]; NaN for a NaN score."""
        score = np.asarray(score, np.float64)
        above = self.reference.size - np.searchsorted(self.reference, score, side="left")
        return np.where(np.isfinite(score), (1.0 + above) / (1.0 + self.reference.size), np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _SCORER_VERSION,
            "grid_sha256": self.grid_sha256,
            "val_fraction": self.val_fraction,
            "density": self.density.to_dict(),
            "calibrations": {name: c.to_dict() for name, c in self.calibrations.items()},
            "train_calibrations": {name: c.to_dict() for name, c in self.train_calibrations.items()},
            "reference": self.reference.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scorer:
        if d.get("version") != _SCORER_VERSION:
            raise ModelPackageError(f"scorer format version {d.get('version')!r}, expected {_SCORER_VERSION}")
        return cls(
            grid_sha256=str(d["grid_sha256"]),
            val_fraction=float(d["val_fraction"]),
            density=LatentDensity.from_dict(d["density"]),
            calibrations={name: SnrCalibration.from_dict(c) for name, c in d["calibrations"].items()},
            train_calibrations={name: SnrCalibration.from_dict(c) for name, c in d["train_calibrations"].items()},
            reference=np.asarray(d["reference"], np.float64),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON through a temporary file and a rename (readers never see half a scorer)."""
        return write_bytes_atomic(Path(path), json.dumps(self.to_dict()).encode())

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------------------------------
# Raw components, explanations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawScores:
    """Per-spectrum numbers of one batch before calibration."""

    reduced_chi2: np.ndarray
    chi2: np.ndarray
    n_obs: np.ndarray
    kl: np.ndarray
    latent_mean: np.ndarray
    coherent: dict[int, np.ndarray]  # block size → log mean block χ²
    peak: np.ndarray  # log max block χ²

    def components(self, density: LatentDensity) -> dict[str, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_reduced = np.log(self.reduced_chi2)
        return {
            "log_reduced_chi2": log_reduced,
            **{f"coherent_chi2_{b}": self.coherent[b] for b in COHERENT_BLOCKS},
            f"peak_chi2_{PEAK_BLOCK}": self.peak,
            "latent_nll": density.nll(self.latent_mean),
        }


def _raw_scores(
    model: SpectrumVAE, spectra: Spectra, device: torch.device | str | None
) -> tuple[_RawScores, np.ndarray]:
    """Reconstruct one batch and measure every raw component on it; also the per-pixel χ² (N, P)."""
    flux, ivar = spectra.flux, spectra.ivar
    flux_t = torch.tensor(flux, dtype=torch.float32)  # a copy: Arrow-backed input is read-only
    ivar_t = torch.tensor(ivar, dtype=torch.float32).clamp_(min=0.0)
    rec = reconstruct(model, flux_t, ivar_t, device=device, batch_size=max(len(flux), 1))
    weights = model.pixel_weights(ivar_t).numpy()
    residual = np.where(ivar > 0, flux - rec.spectrum, 0.0)
    block_chi2 = {b: _block_chi2(residual, weights, b) for b in {*COHERENT_BLOCKS, PEAK_BLOCK}}
    with np.errstate(divide="ignore", invalid="ignore"):
        coherent = {b: np.log(np.nanmean(block_chi2[b], axis=1)) for b in COHERENT_BLOCKS}
        peak = np.log(np.nanmax(block_chi2[PEAK_BLOCK], axis=1))
    raw = _RawScores(
        reduced_chi2=rec.reduced_chi2,
        chi2=rec.chi2.astype(np.float64),
        n_obs=rec.n_obs,
        kl=rec.kl.astype(np.float64),
        latent_mean=rec.latent_mean,
        coherent=coherent,
        peak=peak,
    )
    return raw, weights * residual**2


def _block_chi2(residual: np.ndarray, weights: np.ndarray, block: int) -> np.ndarray:
    """``(Σ w·r)² / Σ w`` per block of ``block`` pixels (N, P/block), NaN for blocks without data.

    For independent Gaussian noise each block is χ² with one degree of freedom whatever the block
    size; a coherent mismatch of amplitude δ over the block adds ≈ block·δ²·w̄ to it.
    """
    n, npix = residual.shape
    if npix % block:
        raise ValueError(f"grid of {npix} pixels does not split into blocks of {block}")
    summed = (weights * residual).reshape(n, -1, block).sum(axis=2)
    weight = weights.reshape(n, -1, block).sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight > 0, summed**2 / weight, np.nan)


def fit_scorer(
    model: SpectrumVAE,
    spectra: Spectra,
    *,
    val_fraction: float,
    grid: RestFrameGrid = REST_GRID,
    device: torch.device | str | None = None,
    batch_size: int = 2048,
) -> Scorer:
    """Fit the latent density on the training rows and every calibration on the held-out rows.

    Rows split by TARGETID hash exactly as :func:`~qad_assets.science.model.split.select_rows` split
    them for training, so pass the ``val_fraction`` the model was trained with: the calibration
    spectra are then ones the model never saw. They are not known to be normal; the robust fits
    and the p-value reference tolerate the few per cent of anomalies a release holds.
    """
    _check_grid(spectra, grid)
    is_val = select_rows(spectra.targetid, "val", val_fraction)
    if is_val.sum() < MIN_CALIBRATION_ROWS or (~is_val).sum() < MIN_CALIBRATION_ROWS:
        raise TooFewSpectraError(
            f"{is_val.sum()} held-out and {(~is_val).sum()} training rows at val_fraction={val_fraction}; "
            f"each needs at least {MIN_CALIBRATION_ROWS}"
        )
    raw = [_raw_scores(model, spectra[s], device)[0] for s in _batches(len(spectra), batch_size)]
    density = fit_latent_density(np.concatenate([r.latent_mean for r in raw])[~is_val])
    per_batch = [r.components(density) for r in raw]
    components = {name: np.concatenate([c[name] for c in per_batch]) for name in COMPONENTS}
    snr = spectra.snr
    calibrations = _fit_calibrations({k: v[is_val] for k, v in components.items()}, snr[is_val])
    train_calibrations = _fit_calibrations({k: v[~is_val] for k, v in components.items()}, snr[~is_val])
    _, reference = _standardise(calibrations, {k: v[is_val] for k, v in components.items()}, snr[is_val])
    return Scorer(
        grid_sha256=grid_fingerprint(grid),
        val_fraction=float(val_fraction),
        density=density,
        calibrations=calibrations,
        train_calibrations=train_calibrations,
        reference=np.sort(reference[np.isfinite(reference)]),
    )


def _fit_calibrations(components: dict[str, np.ndarray], snr: np.ndarray) -> dict[str, SnrCalibration]:
    """One calibration per component, then one for the sum of the standardised components."""
    calibrations = {name: fit_snr_calibration(components[name], snr) for name in COMPONENTS}
    z_sum = sum(calibrations[name].standardise(components[name], snr) for name in COMPONENTS)
    return calibrations | {"anomaly_score": fit_snr_calibration(z_sum, snr)}


def _standardise(
    calibrations: dict[str, SnrCalibration], components: dict[str, np.ndarray], snr: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    z = {name: calibrations[name].standardise(components[name], snr) for name in COMPONENTS}
    return z, calibrations["anomaly_score"].standardise(sum(z.values()), snr)


def score_spectra(
    model: SpectrumVAE,
    scorer: Scorer,
    spectra: Spectra,
    grid: RestFrameGrid = REST_GRID,
    *,
    in_training: np.ndarray | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 2048,
) -> dict[str, np.ndarray]:
    """Scores and explanations of every spectrum, in batches of ``batch_size`` (vectorised within).

    ``in_training`` (bool per row) marks the spectra the model was trained on (for the release it was
    trained on: :meth:`Scorer.training_rows`); those are standardised against training spectra
    (:class:`Scorer`). Without it every row is treated as unseen, which is right for spectra from
    elsewhere.

    Returns (N,) arrays: ``reduced_chi2``, ``chi2``, ``n_obs``, ``kl``, ``neg_elbo`` (χ²/2 + KL),
    ``latent_nll``, ``z_<component>`` (each standardised component), ``anomaly_score`` (float64,
    higher = more anomalous, ≈ N(0, 1) for normal spectra at every S/N), ``p_value``,
    ``top_region``, ``top_region_share`` (that region's raw share of the spectrum's χ²),
    ``worst_arm``; and ``latent_mean`` (N, L). A spectrum without observed pixels gets NaN scores
    and empty explanations.
    """
    _check_grid(spectra, grid)
    if grid_fingerprint(grid) != scorer.grid_sha256:
        raise GridMismatchError("the scorer was fitted on another rest-frame grid than the data's")
    if len(spectra) == 0:
        raise TooFewSpectraError("no spectra to score")
    in_training = np.zeros(len(spectra), bool) if in_training is None else np.asarray(in_training, bool)
    parts = [
        _score_batch(model, scorer, spectra[s], in_training[s], grid, device)
        for s in _batches(len(spectra), batch_size)
    ]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _score_batch(
    model: SpectrumVAE,
    scorer: Scorer,
    spectra: Spectra,
    in_training: np.ndarray,
    grid: RestFrameGrid,
    device: torch.device | str | None,
) -> dict[str, np.ndarray]:
    raw, pixel_chi2 = _raw_scores(model, spectra, device)
    components = raw.components(scorer.density)
    standardised, score = scorer.combine(components, spectra.snr, in_training)
    return {
        "reduced_chi2": raw.reduced_chi2,
        "chi2": raw.chi2,
        "n_obs": raw.n_obs,
        "kl": raw.kl,
        "neg_elbo": 0.5 * raw.chi2 + raw.kl,
        "latent_nll": components["latent_nll"],
        **{f"z_{name}": value for name, value in standardised.items()},
        "anomaly_score": score,
        "p_value": scorer.p_value(score),
        **explain(pixel_chi2, spectra.ivar > 0, spectra.z, grid),
        "latent_mean": raw.latent_mean,
    }


def _check_grid(spectra: Spectra, grid: RestFrameGrid) -> None:
    if len(spectra.wave) != grid.npix or grid_fingerprint(spectra.wave) != grid_fingerprint(grid):
        raise GridMismatchError(f"spectra on a {len(spectra.wave)}-pixel grid are not on the model's rest grid")


def _batches(n: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, n, size)]
