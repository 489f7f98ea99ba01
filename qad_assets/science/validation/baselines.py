"""Baseline anomaly detectors the VAE is judged against: weighted PCA χ², and an isolation forest.

Both are the standard, honest alternatives, given the same data, weights and calibration as the VAE:

* :class:`PcaBaseline`: a linear model of quasar spectra. EM-PCA with per-pixel weights (Bailey 2012,
  "Principal Component Analysis with Noisy and/or Missing Data") handles the partial rest-frame
  coverage of every spectrum: coefficients and components are solved in turn by weighted least
  squares, so unobserved pixels simply carry no weight. A spectrum is projected onto the mean and the
  components by weighted least squares (the mean's coefficient is a free amplitude) and scored by the
  reduced χ² of that fit, with the Lyα forest down-weighted exactly as the VAE's likelihood does.
* :class:`IsolationForestBaseline`: scikit-learn's isolation forest on the PCA coefficients divided by
  the amplitude (the spectrum's shape, independent of its normalization); score = −score_samples.

Both raw scores grow with S/N as the VAE's do (a linear model is further from perfect than a VAE, so
even more), so both are standardised against held-out spectra as a function of S/N with the same
:func:`~qad_assets.science.model.calibration.fit_snr_calibration`, fitted on the same TARGETID-hash split: an
uncalibrated baseline would mostly rank by S/N, a strawman.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import IsolationForest

from qad_assets.errors import TooFewSpectraError
from qad_assets.science.model.calibration import MIN_CALIBRATION_ROWS, SnrCalibration, fit_snr_calibration
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.vae import VaeConfig
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import RestFrameGrid, lya_forest_mask

#: Relative ridge on the per-pixel component solve: pixels few spectra cover stay well determined.
_RIDGE = 1e-6
#: Pixels per chunk of the per-pixel solve (bounds the (N, chunk, K) work array).
_PIXEL_CHUNK = 256
#: Training spectra the components are fitted on, at most: 10 components are well determined by a few
#: thousand spectra, and EM-PCA costs O(spectra × pixels × components²) per pass.
MAX_FIT_ROWS = 3000


def pixel_weights(ivar: np.ndarray, grid: RestFrameGrid, config: VaeConfig | None = None) -> np.ndarray:
    """The VAE's χ² weights in numpy: ``ivar/(1 + ivar·ε²)``, and ``f·ivar/(1 + ivar·σ²)`` in the Lyα forest."""
    config = config or VaeConfig()
    ivar = np.clip(np.asarray(ivar, np.float64), 0.0, None)
    forest = config.forest_weight * ivar / (1.0 + ivar * config.forest_sigma**2)
    return np.where(lya_forest_mask(grid), forest, ivar / (1.0 + ivar * config.model_error**2))


def _split(targetid: np.ndarray, val_fraction: float) -> np.ndarray:
    is_val = select_rows(np.asarray(targetid, np.int64), "val", val_fraction)
    if is_val.sum() < MIN_CALIBRATION_ROWS or (~is_val).sum() < MIN_CALIBRATION_ROWS:
        raise TooFewSpectraError(f"too few training or held-out rows at val_fraction={val_fraction}")
    return is_val


@dataclass
class PcaBaseline:
    """Weighted EM-PCA of rest-frame spectra; score = S/N-standardised log reduced χ² of the projection."""

    grid: RestFrameGrid
    n_components: int = 10
    n_iter: int = 15
    seed: int = 0
    mean: np.ndarray = field(init=False, repr=False)
    components: np.ndarray = field(init=False, repr=False)  # (K, P), orthonormal, by decreasing variance
    calibration: SnrCalibration = field(init=False, repr=False)

    def fit(self, spectra: Spectra, *, val_fraction: float) -> PcaBaseline:
        """Components from the training rows, the S/N calibration from the held-out rows."""
        is_val = _split(spectra.targetid, val_fraction)
        train = spectra[np.flatnonzero(~is_val)[:MAX_FIT_ROWS]]
        train_flux, train_w = np.asarray(train.flux, np.float64), pixel_weights(train.ivar, self.grid)
        self.mean = _weighted_mean(train_flux, train_w)
        self.components = _em_pca(train_flux - self.mean, train_w, self.n_components, self.n_iter, self.seed)
        held_out = spectra[is_val]
        self.calibration = fit_snr_calibration(self.raw_score(held_out), held_out.snr)
        return self

    def project(self, spectra: Spectra) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted least-squares fit on [mean, components]: (coefficients (N, K+1), χ², n_eff).

        Coefficient 0 is the amplitude of the mean spectrum. n_eff counts forest pixels at the
        forest weight, as the VAE does.
        """
        flux, ivar = np.asarray(spectra.flux, np.float64), spectra.ivar
        weights = pixel_weights(ivar, self.grid)
        basis = np.vstack([self.mean, self.components])  # (K+1, P)
        coef = _solve_coefficients(flux, weights, basis)
        chi2 = (weights * (flux - coef @ basis) ** 2).sum(axis=1)
        forest_weight = np.where(lya_forest_mask(self.grid), VaeConfig().forest_weight, 1.0)
        n_eff = ((np.asarray(ivar) > 0) * forest_weight).sum(axis=1)
        return coef, chi2, n_eff

    def raw_score(self, spectra: Spectra) -> np.ndarray:
        """log of χ²/(n_eff − 1 − K) of the projection (NaN without data)."""
        _, chi2, n_eff = self.project(spectra)
        dof = np.maximum(n_eff - 1.0 - self.components.shape[0], 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n_eff > 0, np.log(chi2 / dof), np.nan)

    def score(self, spectra: Spectra) -> np.ndarray:
        """S/N-standardised score, float64 (N,), higher = more anomalous."""
        return self.calibration.standardise(self.raw_score(spectra), spectra.snr)

    def shape_coefficients(self, spectra: Spectra) -> np.ndarray:
        """Component coefficients over the amplitude (N, K): the spectrum's shape in PCA space."""
        coef, _, _ = self.project(spectra)
        amplitude = np.where(np.abs(coef[:, 0]) > 1e-6, coef[:, 0], 1e-6)
        return coef[:, 1:] / amplitude[:, None]


def _weighted_mean(flux: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=0)
    return np.where(total > 0, (weights * flux).sum(axis=0) / np.where(total > 0, total, 1.0), 0.0)


def _solve_coefficients(data: np.ndarray, weights: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Per spectrum, ``argmin_c Σ w (x − c·basis)²``: batched normal equations (N, K, K), lightly ridged.

    Every Gram matrix at once is one matrix product of the weights with the basis' outer products.
    """
    k = basis.shape[0]
    outer = (basis[:, None, :] * basis[None, :, :]).reshape(k * k, -1)
    gram = (weights @ outer.T).reshape(-1, k, k)
    rhs = (weights * data) @ basis.T
    ridge = _RIDGE * np.trace(gram, axis1=1, axis2=2)[:, None, None] / basis.shape[0] + 1e-12
    return np.linalg.solve(gram + ridge * np.eye(basis.shape[0]), rhs[..., None])[..., 0]


def _em_pca(data: np.ndarray, weights: np.ndarray, k: int, n_iter: int, seed: int) -> np.ndarray:
    """Rank-``k`` weighted low-rank fit ``data ≈ C·Φ`` by alternating least squares; returns Φ (k, P).

    Each pass solves every spectrum's coefficients given Φ, then every pixel's loadings given the
    coefficients. Finally Φ is orthonormalised and rotated to the principal axes of the coefficients,
    so component 1 carries the most variance.
    """
    rng = np.random.default_rng(seed)
    phi = np.linalg.qr(rng.standard_normal((data.shape[1], k)))[0].T
    for _ in range(n_iter):
        coef = _solve_coefficients(data, weights, phi)
        phi = _solve_loadings(data, weights, coef)
    q, r = np.linalg.qr(phi.T)  # Φᵀ = Q R: data ≈ (C Rᵀ) Qᵀ
    _, _, vt = np.linalg.svd(coef @ r.T, full_matrices=False)
    return vt @ q.T


def _solve_loadings(data: np.ndarray, weights: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Per pixel, ``argmin_φ Σ_n w (x − c_n·φ)²`` (P, K) → (K, P), in chunks of pixels."""
    k = coef.shape[1]
    phi = np.empty((k, data.shape[1]))
    outer = (coef[:, :, None] * coef[:, None, :]).reshape(len(coef), k * k)
    for start in range(0, data.shape[1], _PIXEL_CHUNK):
        cols = slice(start, start + _PIXEL_CHUNK)
        w = weights[:, cols]
        gram = (w.T @ outer).reshape(-1, k, k)
        rhs = (w * data[:, cols]).T @ coef  # (chunk, K)
        ridge = _RIDGE * np.trace(gram, axis1=1, axis2=2)[:, None, None] / k + 1e-12
        phi[:, cols] = np.linalg.solve(gram + ridge * np.eye(k), rhs[..., None])[..., 0].T
    return phi


@dataclass
class IsolationForestBaseline:
    """Isolation forest on a fitted :class:`PcaBaseline`'s shape coefficients; score = −score_samples,
    S/N-standardised on the held-out rows.
    """

    pca: PcaBaseline
    n_estimators: int = 300
    seed: int = 0
    forest: IsolationForest = field(init=False, repr=False)
    calibration: SnrCalibration = field(init=False, repr=False)

    def fit(self, spectra: Spectra, *, val_fraction: float) -> IsolationForestBaseline:
        is_val = _split(spectra.targetid, val_fraction)
        self.forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)
        self.forest.fit(self.pca.shape_coefficients(spectra[~is_val]))
        held_out = spectra[is_val]
        self.calibration = fit_snr_calibration(self.raw_score(held_out), held_out.snr)
        return self

    def raw_score(self, spectra: Spectra) -> np.ndarray:
        return -self.forest.score_samples(self.pca.shape_coefficients(spectra)).astype(np.float64)

    def score(self, spectra: Spectra) -> np.ndarray:
        """S/N-standardised isolation score, float64 (N,), higher = more anomalous."""
        return self.calibration.standardise(self.raw_score(spectra), spectra.snr)
