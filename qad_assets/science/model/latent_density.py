"""The density of normal quasars in the VAE's latent space: a Gaussian mixture, as plain arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.mixture import GaussianMixture


@dataclass(frozen=True)
class LatentDensity:
    """A Gaussian mixture over latent means, as plain arrays: (K,) weights, (K, L) means, (K, L, L) covariances."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def nll(self, latent: np.ndarray) -> np.ndarray:
        """−log p(latent) under the mixture, float64 (N,)."""
        latent = np.asarray(latent, np.float64)
        chol = np.linalg.cholesky(self.covariances)
        log_det = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        diff = latent[None, :, :] - self.means[:, None, :]  # (K, N, L)
        whitened = np.linalg.solve(chol[:, None], diff[..., None])[..., 0]
        log_comp = -0.5 * (np.square(whitened).sum(-1) + log_det[:, None] + latent.shape[1] * math.log(2 * math.pi))
        return -_logsumexp(log_comp + np.log(self.weights)[:, None], axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentDensity:
        return cls(*(np.asarray(d[k], np.float64) for k in ("weights", "means", "covariances")))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def fit_latent_density(latent: np.ndarray, n_components: int = 4, seed: int = 0) -> LatentDensity:
    """Full-covariance mixture on training latent means; fewer components when there are few spectra
    (at least 50 per component), so each covariance is well determined.
    """
    k = max(1, min(n_components, latent.shape[0] // 50))
    gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed)
    gmm.fit(np.asarray(latent, np.float64))
    return LatentDensity(*(np.asarray(a, np.float64) for a in (gmm.weights_, gmm.means_, gmm.covariances_)))
