"""One candidate's spectrum as the explorer shows it: data, noise, the model's reconstruction, residuals.

The spectrum is read from its ``normalized_spectra`` partition file (one row of a few hundred; Parquet
reads that file's row group, never the release), and reconstructed by the release's current model
package (loaded once, weights and config only: the scorer is not needed to draw). Fluxes are put back in
observed units (``flux · scale``, 1e-17 erg/s/cm²/Å) on the rest-frame grid. No Dagster import.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from qad_assets.errors import ModelPackageError
from qad_assets.science.model.package import current_package, load_model, read_registration
from qad_assets.science.model.vae import SpectrumVAE, reconstruct
from qad_assets.science.spectra.rest_frame import REST_GRID


@dataclass(frozen=True)
class SpectrumView:
    """Rest-frame wavelength (Å), flux and inverse variance in observed units (ivar 0 = no data), the
    reconstruction on the same grid (None without a model) and the version of the model that made it.
    """

    targetid: int
    z: float
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    model: np.ndarray | None
    model_version: str


class SpectrumSource:
    """Reads spectra of one release and reconstructs them with its current model."""

    def __init__(self, storage: Path, release: str) -> None:
        self.storage = Path(storage)
        self.release = release
        self._lock = threading.Lock()
        self._model: tuple[SpectrumVAE, str] | None = None
        self._model_error: str | None = None

    def read(self, partition: str, row: int, targetid: int) -> SpectrumView:
        """The spectrum at ``row`` of ``partition``; ``targetid`` checks that the index still matches."""
        path = self.storage / "normalized_spectra" / self.release / f"{partition}.parquet"
        frame = pl.scan_parquet(path).slice(row, 1).select("TARGETID", "Z", "scale", "flux", "ivar").collect()
        if len(frame) != 1 or int(frame["TARGETID"][0]) != targetid:
            raise LookupError(f"{path.name} row {row} is not TARGETID {targetid}: the release changed, reload")
        scale = float(frame["scale"][0])
        flux = frame["flux"].to_numpy().astype(np.float32).reshape(1, -1)
        ivar = frame["ivar"].to_numpy().astype(np.float32).reshape(1, -1)
        model, version = self.model()
        fit = reconstruct(model, flux, ivar).spectrum[0] * scale if model is not None else None
        return SpectrumView(
            targetid=targetid,
            z=float(frame["Z"][0]),
            wave=np.asarray(REST_GRID.wave),
            flux=flux[0] * scale,
            ivar=ivar[0] / scale**2,
            model=fit,
            model_version=version,
        )

    def model(self) -> tuple[SpectrumVAE | None, str]:
        """The release's current VAE and its registered version (loaded on first use; None if none yet)."""
        with self._lock:
            if self._model is None and self._model_error is None:
                try:
                    package = current_package(self.storage / "vae_model" / self.release)
                    model, _, _ = load_model(package, grid=REST_GRID)
                    self._model = (model, read_registration(package).get("version", ""))
                except ModelPackageError as err:
                    self._model_error = str(err)
            return self._model if self._model is not None else (None, "")


def smooth(flux: np.ndarray, ivar: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted boxcar of ``width`` pixels: the smoothed flux and its inverse variance
    (the sum of the window's ivar). Pixels without data stay without data.
    """
    if width <= 1:
        return flux, ivar
    kernel = np.ones(width)
    weight = np.convolve(ivar, kernel, mode="same")
    flux_smooth = np.divide(
        np.convolve(flux * ivar, kernel, mode="same"), weight, out=np.zeros_like(flux), where=weight > 0
    )
    weight = np.where(ivar > 0, weight, 0.0)
    return flux_smooth.astype(np.float64), weight
