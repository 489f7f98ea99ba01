"""Spectra that arrive one by one (observed frame, on any wavelength grid), checked as ingestion checks
DESI rows and moved to the rest frame by the batch's own resampling and normalization.

A spectrum on DESI's merged ``brz`` grid, with the flux, ivar and mask ``raw_spectra`` holds for it, comes
out bit for bit as ``normalized_spectra`` has it. Problems are reported with the ingestion ledger's reason
codes where ingestion has one (``shape_mismatch``, ``bad_wavelength``, ``nonfinite``, ``negative_ivar``,
``no_good_pixels``, ``bad_redshift``: z outside :data:`~qad_assets.science.spectra.selection.Z_RANGE`),
so a rejected request and a quarantined row read the same; ``bad_mask`` exists only here (ingestion takes
masks from the file). Plain numpy, no Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qad_assets.errors import SpectrumError
from qad_assets.science.spectra import ledger
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.normalization import normalize_batch
from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid
from qad_assets.science.spectra.selection import Z_RANGE, bad_pixels

#: Most pixels one spectrum may have (DESI's merged grid has 7781).
MAX_PIXELS = 20_000


@dataclass(frozen=True)
class ObservedSpectrum:
    """One checked spectrum: flux and ivar are 0 where a pixel is not good, as ``raw_spectra`` stores them."""

    wavelength: np.ndarray  # (n,) float64, vacuum Å, strictly increasing
    flux: np.ndarray  # (n,) float32
    ivar: np.ndarray  # (n,) float32
    z: float


def observed_spectrum(
    index: int,
    wavelength: Sequence[float] | np.ndarray,
    flux: Sequence[float] | np.ndarray,
    ivar: Sequence[float] | np.ndarray,
    z: float,
    mask: Sequence[int] | np.ndarray | None = None,
) -> ObservedSpectrum:
    """Check one spectrum and return it in the form the resampling takes; raise :class:`SpectrumError`.

    ``mask`` is a DESI mask (0 = good, any bit set = bad). The pixel rules are ingestion's: ivar may
    never be negative; flux and ivar must be finite wherever the mask says good (flux only where ivar > 0).
    """
    wave = np.asarray(wavelength, np.float64)
    values = {"flux": np.asarray(flux, np.float32), "ivar": np.asarray(ivar, np.float32)}
    if mask is not None:
        values["mask"] = np.asarray(mask)
    for name, array in values.items():
        if array.shape != wave.shape:
            raise SpectrumError(
                index, ledger.reason("shape_mismatch", f"{name} has {array.size} values, wavelength {wave.size}")
            )
    _check_wavelength(index, wave)
    if not (np.isfinite(z) and Z_RANGE[0] <= z <= Z_RANGE[1]):
        raise SpectrumError(
            index, ledger.reason("bad_redshift", f"z = {z} is outside [{Z_RANGE[0]:g}, {Z_RANGE[1]:g}]")
        )
    flux_, ivar_ = values["flux"], values["ivar"]
    unmasked = np.ones(wave.shape, bool) if mask is None else _mask_is_zero(index, values["mask"])
    _check_pixels(index, flux_, ivar_, unmasked)
    good = unmasked & (ivar_ > 0)
    if not good.any():
        raise SpectrumError(index, ledger.reason("no_good_pixels", "ivar = 0 or mask != 0 everywhere"))
    return ObservedSpectrum(
        wave,
        np.where(good, flux_, 0.0).astype(np.float32),
        np.where(good, ivar_, 0.0).astype(np.float32),
        float(z),
    )


def _check_wavelength(index: int, wave: np.ndarray) -> None:
    detail = ""
    if wave.ndim != 1 or not 2 <= wave.size <= MAX_PIXELS:
        detail = f"{wave.size} pixels; a spectrum has 2 to {MAX_PIXELS}"
    elif not np.isfinite(wave).all() or wave[0] <= 0:
        detail = "wavelengths must be finite and positive"
    elif not (np.diff(wave) > 0).all():
        first = int(np.argmax(np.diff(wave) <= 0))
        detail = f"not strictly increasing at pixel {first + 1} ({wave[first]} then {wave[first + 1]} Å)"
    if detail:
        raise SpectrumError(index, ledger.reason("bad_wavelength", detail))


def _mask_is_zero(index: int, mask: np.ndarray) -> np.ndarray:
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise SpectrumError(index, ledger.reason("bad_mask", f"mask must hold integers, not {mask.dtype}"))
    if (mask < 0).any():
        raise SpectrumError(index, ledger.reason("bad_mask", f"mask[{int(np.argmax(mask < 0))}] is negative"))
    return mask == 0


def _check_pixels(index: int, flux: np.ndarray, ivar: np.ndarray, unmasked: np.ndarray) -> None:
    """Ingestion's pixel rules (:func:`~qad_assets.science.spectra.selection.bad_pixels`), in its order."""
    nonfinite, negative = bad_pixels(flux, ivar, unmasked)
    if nonfinite.any():
        pixel = int(np.argmax(nonfinite))
        name, value = ("flux", flux[pixel]) if np.isfinite(ivar[pixel]) else ("ivar", ivar[pixel])
        raise SpectrumError(index, ledger.reason("nonfinite", f"{name}[{pixel}] = {value} at a good pixel"))
    if negative.any():
        pixel = int(np.argmax(negative))
        raise SpectrumError(index, ledger.reason("negative_ivar", f"ivar[{pixel}] = {ivar[pixel]}"))


def normalize_observed(
    spectra: Sequence[ObservedSpectrum],
    targetid: Sequence[int] | np.ndarray | None = None,
    grid: RestFrameGrid = REST_GRID,
    *,
    device: str | torch.device | None = None,
) -> Spectra:
    """Rest frame, normalized, in request order: one vectorised :func:`normalize_batch` per distinct
    wavelength grid (a request of DESI spectra is one call). ``targetid`` defaults to 0 for each.
    """
    ids = np.zeros(len(spectra), np.int64) if targetid is None else np.asarray(targetid, np.int64)
    groups: dict[bytes, list[int]] = {}
    for row, spectrum in enumerate(spectra):
        groups.setdefault(spectrum.wavelength.tobytes(), []).append(row)
    parts, order = [], []
    for rows in groups.values():
        members = [spectra[r] for r in rows]
        observed = Spectra(
            wave=members[0].wavelength,
            flux=np.stack([s.flux for s in members]),
            ivar=np.stack([s.ivar for s in members]),
            targetid=ids[rows],
            z=np.asarray([s.z for s in members]),
        )
        parts.append(normalize_batch(observed, grid, device=device))
        order += rows
    return Spectra.concat(parts)[np.argsort(order)]
