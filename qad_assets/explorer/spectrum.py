"""One candidate's spectrum as the explorer shows it: data, noise, the model's reconstruction, residuals.

The spectrum is read from its ``normalized_spectra`` partition file (one row of a few hundred; Parquet
reads that file's row group, never the release), and reconstructed by the release's current model
package (loaded once, weights and config only: the scorer is not needed to draw; every file is checked
against its registration first, as for scoring). A package that cannot be loaded (none published, a file
changed since it was registered) leaves the view without a reconstruction, saying why; the verdict is kept
until the release is rescored, not retried per request. Fluxes are put back in observed units
(``flux · scale``, 1e-17 erg/s/cm²/Å) on the rest-frame grid. No Dagster import.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from qad_assets.errors import GridMismatchError, ModelPackageError
from qad_assets.science.model.package import PackageChangedError, current_package, load_verified_model
from qad_assets.science.model.vae import SpectrumVAE, reconstruct
from qad_assets.science.spectra.rest_frame import REST_GRID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpectrumView:
    """Rest-frame wavelength (Å), flux and inverse variance in observed units (ivar 0 = no data), the
    reconstruction on the same grid (None without a model), the version of the model that made it and,
    without one, why (``no_model``).
    """

    targetid: int
    z: float
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    model: np.ndarray | None
    model_version: str
    no_model: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """The release's VAE and its registered version, or None and the reason shown instead of a fit."""

    vae: SpectrumVAE | None
    version: str = ""
    reason: str = ""


class SpectrumSource:
    """Reads spectra of one release and reconstructs them with its current model."""

    def __init__(self, storage: Path, release: str) -> None:
        self.storage = Path(storage)
        self.release = release
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None

    def read(self, partition: str, row: int, targetid: int) -> SpectrumView:
        """The spectrum at ``row`` of ``partition``; ``targetid`` checks that the index still matches."""
        path = self.storage / "normalized_spectra" / self.release / f"{partition}.parquet"
        frame = pl.scan_parquet(path).slice(row, 1).select("TARGETID", "Z", "scale", "flux", "ivar").collect()
        if len(frame) != 1 or int(frame["TARGETID"][0]) != targetid:
            raise LookupError(f"{path.name} row {row} is not TARGETID {targetid}: the release changed, reload")
        scale = float(frame["scale"][0])
        flux = frame["flux"].to_numpy().astype(np.float32).reshape(1, -1)
        ivar = frame["ivar"].to_numpy().astype(np.float32).reshape(1, -1)
        loaded = self.model()
        fit = reconstruct(loaded.vae, flux, ivar).spectrum[0] * scale if loaded.vae is not None else None
        return SpectrumView(
            targetid=targetid,
            z=float(frame["Z"][0]),
            wave=np.asarray(REST_GRID.wave),
            flux=flux[0] * scale,
            ivar=ivar[0] / scale**2,
            model=fit,
            model_version=loaded.version,
            no_model=loaded.reason,
        )

    def model(self) -> LoadedModel:
        """The release's current VAE, loaded on first use; a package that cannot be loaded is remembered
        with the reason, so that a broken package costs one hash check, not one per spectrum drawn.
        """
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> LoadedModel:
        """The verified package's VAE, or why there is none (short enough for the plot's title; the log
        has the whole message, paths included).
        """
        try:
            package = current_package(self.storage / "vae_model" / self.release)
            vae, _, registration = load_verified_model(package, grid=REST_GRID)
        except PackageChangedError as err:
            log.warning("spectra of %s drawn without a model: %s", self.release, err)
            return LoadedModel(None, reason=f"model package v{err.version} changed since it was registered")
        except (ModelPackageError, GridMismatchError) as err:
            log.warning("spectra of %s drawn without a model: %s", self.release, err)
            return LoadedModel(None, reason=str(err))
        if registration is None:
            return LoadedModel(None, reason=f"{package.name} is not a registered model package")
        return LoadedModel(vae, str(registration.get("version", "")))


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
