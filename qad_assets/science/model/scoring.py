"""Per-spectrum anomaly scores: physically distinct components, each calibrated against S/N, combined.

A quasar is anomalous in one of several ways, and each has its own detector
(:mod:`.components`): the VAE cannot reconstruct it (``fit``, ``coherent``), it has a broad
absorption trough (``trough``), lines too weak or too strong for its luminosity (``weak_lines``,
``strong_lines``), a continuum reddened by dust (``colour``), an arm whose calibration jumps
(``arm_step``), an isolated spike (``spikes``) or a second object's lines on the fibre
(``foreground``). Residuals are weighed with the release's own noise model (:mod:`.noise`), so that
sky-line residuals and model imperfection at high S/N are not anomalies.

Raw numbers still move with S/N, so every component is standardised against held-out spectra *as a
function of S/N* (its robust median and width, :mod:`.calibration`), and its upper tail is matched
to a Gaussian one on the held-out spectra, so a given z is equally rare for every component. They are
combined by a soft maximum, ``T·log Σ exp(z_k/T)``, so that one strong component is enough (an
average would dilute it among the quiet ones) while a second still counts; the combination is
standardised against S/N once more and a tail p-value comes from the held-out spectra. The component
that drove the score is reported (``top_component``). The model fits its training spectra better
than unseen ones, so those are standardised against training spectra when their TARGETIDs are given.
Choices and figures: ``docs/scoring.md``. Plain numpy/torch/scikit-learn, no Dagster.
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
from qad_assets.science.model import components as comp
from qad_assets.science.model.calibration import MIN_CALIBRATION_ROWS, SnrCalibration, fit_snr_calibration
from qad_assets.science.model.explanation import explain
from qad_assets.science.model.latent_density import LatentDensity, fit_latent_density
from qad_assets.science.model.line_strength import LineModel, fit_line_model
from qad_assets.science.model.noise import NoiseModel, fit_noise_model, pixel_weights
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.vae import Reconstruction, SpectrumVAE, reconstruct
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid, grid_fingerprint, lya_forest_mask

COMPONENTS = (
    "fit",
    "coherent",
    "trough",
    "weak_lines",
    "strong_lines",
    "colour",
    "arm_step",
    "spikes",
    "foreground",
)
#: The soft maximum's temperature: close to the most significant component, smooth enough that
#: a second one still lifts the score and ties break (docs/scoring.md compares 0.25, 0.5, 1 and max).
SOFT_MAX_TEMPERATURE = 0.25
#: Training spectra the noise and line models are fitted on, at most (a bounded sample of a release).
MAX_MODEL_FIT_ROWS = 10_000
_SCORER_VERSION = 3


@dataclass(frozen=True)
class Scorer:
    """What scoring needs besides the network: the noise, latent-density and line models, the normal
    arm-to-arm calibration scatter, the S/N calibrations, and the held-out reference scores.

    ``calibrations`` come from the held-out spectra, ``train_calibrations`` from the training spectra
    (for scoring those: an in-sample fit is better than an out-of-sample one). Each holds one entry
    per component and ``"anomaly_score"`` for their combination. ``reference`` holds the final scores
    of the held-out spectra, sorted: the p-value of a score is the fraction of them at least as high
    (+1 correction).
    """

    grid_sha256: str
    val_fraction: float
    noise: NoiseModel
    density: LatentDensity
    lines: LineModel
    arm_systematic: float
    calibrations: dict[str, SnrCalibration]
    train_calibrations: dict[str, SnrCalibration]
    reference: np.ndarray

    def combine(
        self, components: dict[str, np.ndarray], snr: np.ndarray, in_training: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Standardised components ``{name: z}`` and the S/N-standardised soft maximum of them; rows
        flagged ``in_training`` against the training spectra.
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
            "noise": self.noise.to_dict(),
            "density": self.density.to_dict(),
            "lines": self.lines.to_dict(),
            "arm_systematic": self.arm_systematic,
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
            noise=NoiseModel.from_dict(d["noise"]),
            density=LatentDensity.from_dict(d["density"]),
            lines=LineModel.from_dict(d["lines"]),
            arm_systematic=float(d["arm_systematic"]),
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


@dataclass(frozen=True)
class _Batch:
    """One batch reconstructed and weighed: what every component is computed from."""

    spectra: Spectra
    rec: Reconstruction
    weights: np.ndarray  # noise-model weights (N, P)
    pull: np.ndarray  # (f − m)·√w

    @classmethod
    def of(cls, model: SpectrumVAE, spectra: Spectra, noise: NoiseModel, device: torch.device | str | None) -> _Batch:
        flux = torch.tensor(spectra.flux, dtype=torch.float32)  # a copy: Arrow-backed input is read-only
        ivar = torch.tensor(spectra.ivar, dtype=torch.float32).clamp_(min=0.0)
        rec = reconstruct(model, flux, ivar, device=device, batch_size=max(len(spectra), 1))
        cfg = model.config
        forest = model.forest_mask.cpu().numpy()
        weights = pixel_weights(spectra, rec.spectrum, noise, forest, cfg.forest_weight, cfg.forest_sigma)
        return cls(spectra, rec, weights, comp.pulls(spectra, rec.spectrum, weights))

    def components(self, lines: LineModel, arm_systematic: float, grid: RestFrameGrid) -> dict[str, np.ndarray]:
        """Every raw component (N,) of :data:`COMPONENTS`, higher = more anomalous."""
        outside = np.where(lya_forest_mask(grid)[None, :], 0.0, self.weights)  # the forest: only in `fit`
        excess = lines.excess(self.spectra, outside)
        spikes = self.spectra.columns.get("spike_pull")
        return {
            "fit": comp.fit(self.pull, self.weights),
            "coherent": comp.coherent(self.pull, outside),
            "trough": comp.trough(self.pull, outside, grid),
            "weak_lines": -excess,
            "strong_lines": excess,
            "colour": comp.colour(self.spectra, self.rec.spectrum, outside, grid),
            "arm_step": comp.arm_step(*self.arm_jumps(), arm_systematic),
            "spikes": np.full(len(self.spectra), np.nan) if spikes is None else np.asarray(spikes, np.float64),
            "foreground": comp.foreground(self.spectra, self.pull, outside, grid),
        }

    def arm_jumps(self) -> tuple[np.ndarray, np.ndarray]:
        return comp.arm_jumps(self.spectra, self.rec.spectrum, self.pull, self.weights)


def fit_scorer(
    model: SpectrumVAE,
    spectra: Spectra,
    *,
    val_fraction: float,
    grid: RestFrameGrid = REST_GRID,
    device: torch.device | str | None = None,
    batch_size: int = 1024,
) -> Scorer:
    """Fit the noise, line, arm-scatter and latent-density models on training rows and every
    calibration on the held-out rows.

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
            f"each needs at least {MIN_CALIBRATION_ROWS}: the release is too small to calibrate a detector"
        )
    sample = spectra[np.flatnonzero(~is_val)[:MAX_MODEL_FIT_ROWS]]
    noise, lines, arm_systematic = _fit_pixel_models(model, sample, grid, device)
    batches = [_Batch.of(model, spectra[s], noise, device) for s in _batches(len(spectra), batch_size)]
    raw = [b.components(lines, arm_systematic, grid) for b in batches]
    latent = np.concatenate([b.rec.latent_mean for b in batches])
    del batches
    components = {name: np.concatenate([r[name] for r in raw]) for name in COMPONENTS}
    snr = spectra.snr
    calibrations = _fit_calibrations({k: v[is_val] for k, v in components.items()}, snr[is_val])
    train_calibrations = _fit_calibrations({k: v[~is_val] for k, v in components.items()}, snr[~is_val])
    _, reference = _standardise(calibrations, {k: v[is_val] for k, v in components.items()}, snr[is_val])
    return Scorer(
        grid_sha256=grid_fingerprint(grid),
        val_fraction=float(val_fraction),
        noise=noise,
        density=fit_latent_density(latent[~is_val]),
        lines=lines,
        arm_systematic=arm_systematic,
        calibrations=calibrations,
        train_calibrations=train_calibrations,
        reference=np.sort(reference[np.isfinite(reference)]),
    )


def _fit_pixel_models(
    model: SpectrumVAE, sample: Spectra, grid: RestFrameGrid, device: torch.device | str | None
) -> tuple[NoiseModel, LineModel, float]:
    """The noise model from the sample's residuals outside the forest, then the line model and the
    normal arm-to-arm scatter weighed by it."""
    first = _Batch.of(model, sample, NoiseModel.identity(), device)
    outside = ~lya_forest_mask(grid)[None, :]
    noise = fit_noise_model(sample, first.rec.spectrum, outside & (sample.ivar > 0))
    weighed = _Batch.of(model, sample, noise, device)
    lines = fit_line_model(sample, np.where(outside, weighed.weights, 0.0), grid)
    return noise, lines, comp.arm_systematic(*weighed.arm_jumps())


def _fit_calibrations(components: dict[str, np.ndarray], snr: np.ndarray) -> dict[str, SnrCalibration]:
    """One calibration per component measured on enough spectra, then one for their soft maximum."""
    calibrations = {
        name: fit_snr_calibration(values, snr)
        for name, values in components.items()
        if np.isfinite(values).sum() >= MIN_CALIBRATION_ROWS
    }
    z = {name: calibrations[name].standardise(components[name], snr) for name in calibrations}
    return calibrations | {"anomaly_score": fit_snr_calibration(soft_maximum(z), snr)}


def _standardise(
    calibrations: dict[str, SnrCalibration], components: dict[str, np.ndarray], snr: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each component's z (NaN where it could not be measured or calibrated) and the final score."""
    nan = np.full(len(snr), np.nan)
    z = {
        name: calibrations[name].standardise(components[name], snr) if name in calibrations else nan
        for name in COMPONENTS
    }
    return z, calibrations["anomaly_score"].standardise(soft_maximum(z), snr)


def soft_maximum(z: dict[str, np.ndarray], temperature: float = SOFT_MAX_TEMPERATURE) -> np.ndarray:
    """``T·log Σ_k exp(z_k/T)`` over the components, an unmeasured one counting as typical (z = 0)."""
    stacked = np.nan_to_num(np.stack(list(z.values()), axis=1), nan=0.0, posinf=1e6, neginf=-1e6) / temperature
    top = stacked.max(axis=1)
    return temperature * (top + np.log(np.exp(stacked - top[:, None]).sum(axis=1)))


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
    batch = _Batch.of(model, spectra, scorer.noise, device)
    components = batch.components(scorer.lines, scorer.arm_systematic, grid)
    rec = batch.rec
    standardised, score = _unobserved_as_nan(*scorer.combine(components, spectra.snr, in_training), rec.n_obs)
    pixel_chi2 = batch.pull**2
    return {
        "reduced_chi2": rec.reduced_chi2,
        "chi2": rec.chi2.astype(np.float64),
        "n_obs": rec.n_obs,
        "kl": rec.kl.astype(np.float64),
        "neg_elbo": 0.5 * rec.chi2.astype(np.float64) + rec.kl,
        "latent_nll": scorer.density.nll(rec.latent_mean),
        **{f"z_{name}": value for name, value in standardised.items()},
        "anomaly_score": score,
        "p_value": scorer.p_value(score),
        "top_component": top_component(standardised),
        **explain(pixel_chi2, batch.weights > 0, spectra.z, grid),
        "latent_mean": rec.latent_mean,
    }


def _unobserved_as_nan(
    standardised: dict[str, np.ndarray], score: np.ndarray, n_obs: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """NaN components and score for spectra without an observed pixel: there is nothing to score, yet some
    components (``spikes``, from the observed frame) stay finite and the soft maximum counts unmeasured ones
    as typical, so such a spectrum would otherwise get a finite score and a rank."""
    observed = np.asarray(n_obs) > 0
    return {name: np.where(observed, z, np.nan) for name, z in standardised.items()}, np.where(observed, score, np.nan)


def top_component(z: dict[str, np.ndarray]) -> np.ndarray:
    """The name of the component with the highest z per spectrum ('' when none was measured)."""
    names = np.asarray(list(z))
    stacked = np.stack(list(z.values()), axis=1)
    measured = np.isfinite(stacked).any(axis=1)
    best = np.argmax(np.where(np.isfinite(stacked), stacked, -np.inf), axis=1)
    return np.where(measured, names[best], "")


def _check_grid(spectra: Spectra, grid: RestFrameGrid) -> None:
    if len(spectra.wave) != grid.npix or grid_fingerprint(spectra.wave) != grid_fingerprint(grid):
        raise GridMismatchError(f"spectra on a {len(spectra.wave)}-pixel grid are not on the model's rest grid")


def _batches(n: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, n, size)]
