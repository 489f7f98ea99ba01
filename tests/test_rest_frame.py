"""Rest-frame resampling, normalization, regions and the normalized_spectra table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from desispec.interpolation import resample_flux
from scipy.ndimage import gaussian_filter1d

from qad_assets.science.io.spectra_file import read_spectra_file
from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import Spectra, list_to_numpy
from qad_assets.science.spectra.normalization import (
    GRID_METADATA_KEY,
    NORMALIZED_SCHEMA,
    normalize,
    normalize_batch,
    normalized_table,
)
from qad_assets.science.spectra.resampling import resample_to_rest
from qad_assets.science.spectra.rest_frame import (
    EMISSION_LINES,
    MIN_GOOD_REST_PIXELS,
    REGION_CIII,
    REGION_CIV,
    REGION_CONTINUUM,
    REGION_HALPHA,
    REGION_HBETA,
    REGION_LYA_FOREST,
    REGION_LYA_NV,
    REGION_MGII,
    REGION_SIIV,
    REST_GRID,
    RestFrameGrid,
    lya_forest_mask,
    region_codes,
)

PICCA = Path(__file__).parent / "data" / "desi" / "picca"
BACKENDS = ["numba", "torch"]


def random_spectra(rng: np.random.Generator, n: int, npix: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy flux with structure, random ivar, ~10% zero-ivar pixels and ~5% bad pixels."""
    flux = (rng.normal(1.0, 1.0, (n, npix)) + 5 * np.sin(np.arange(npix) / 37.0)).astype(np.float32)
    ivar = rng.uniform(0.1, 3.0, (n, npix)).astype(np.float32)
    ivar[rng.random((n, npix)) < 0.1] = 0
    good = (ivar > 0) & (rng.random((n, npix)) > 0.05)
    return flux, ivar, good


def desispec_loop(obs_wave, flux, ivar, good, z, grid) -> tuple[np.ndarray, np.ndarray]:
    """The reference: desispec's resample_flux, one spectrum at a time, masked pixels at ivar 0."""
    out = [
        resample_flux(grid.wave * (1 + zi), obs_wave, f.astype(float), np.where(g, iv, 0).astype(float))
        for f, iv, g, zi in zip(flux, ivar, good, z, strict=True)
    ]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


# --------------------------------------------------------------------------------------------------
# The grid


def test_rest_grid_covers_every_quasar_redshift():
    assert REST_GRID.npix == 4096
    assert REST_GRID.wave[0] == pytest.approx(800.0)
    assert REST_GRID.wave[-1] == pytest.approx(8449.7, abs=0.1)
    assert REST_GRID.velocity_step_kms == pytest.approx(172.57, abs=0.01)
    for z in np.linspace(0.1, 5.0, 50):
        lo, hi = BRZ_WAVE[0] / (1 + z), BRZ_WAVE[-1] / (1 + z)
        on_grid = ((REST_GRID.wave >= lo) & (REST_GRID.wave <= hi)).sum()
        assert on_grid >= MIN_GOOD_REST_PIXELS, z


def test_grid_round_trips_and_compares():
    again = RestFrameGrid.from_dict(json.loads(json.dumps(REST_GRID.to_dict())))
    assert again == REST_GRID and hash(again) == hash(REST_GRID)
    assert again != RestFrameGrid(REST_GRID.loglam_start, REST_GRID.loglam_step, 100)
    edges = REST_GRID.edges
    assert edges.size == REST_GRID.npix + 1 and np.all(np.diff(edges) > 0)
    assert np.all((edges[:-1] < REST_GRID.wave) & (REST_GRID.wave < edges[1:]))
    with pytest.raises(ValueError):
        REST_GRID.wave[0] = 1.0


# --------------------------------------------------------------------------------------------------
# Resampling against desispec


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_desispec_on_random_grids(backend):
    rng = np.random.default_rng(7)
    for _ in range(3):
        obs_wave = 3600.0 + np.cumsum(rng.uniform(0.3, 1.5, 900))
        grid = RestFrameGrid(math.log10(rng.uniform(600, 1500)), rng.uniform(1e-4, 6e-4), int(rng.integers(200, 900)))
        flux, ivar, good = random_spectra(rng, 12, obs_wave.size)
        z = np.concatenate([np.zeros(4), rng.uniform(0.05, 4.0, 8)])
        got_flux, got_ivar = resample_to_rest(obs_wave, flux, ivar, good, z, grid, backend=backend)
        ref_flux, ref_ivar = desispec_loop(obs_wave, flux, ivar, good, z, grid)
        assert got_flux.dtype == np.float32 and got_flux.shape == (12, grid.npix)
        np.testing.assert_allclose(got_flux, ref_flux, rtol=1e-5, atol=1e-5 * np.abs(ref_flux).max())
        np.testing.assert_allclose(got_ivar, ref_ivar, rtol=1e-5, atol=1e-6 * ref_ivar.max())
        assert np.array_equal(got_ivar > 0, ref_ivar > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_desispec_on_the_brz_grid(backend):
    rng = np.random.default_rng(3)
    flux, ivar, good = random_spectra(rng, 8, BRZ_WAVE.size)
    z = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0])
    got_flux, got_ivar = resample_to_rest(BRZ_WAVE, flux, ivar, good, z, backend=backend)
    ref_flux, ref_ivar = desispec_loop(BRZ_WAVE, flux, ivar, good, z, REST_GRID)
    np.testing.assert_allclose(got_flux, ref_flux, rtol=1e-5, atol=1e-5 * np.abs(ref_flux).max())
    np.testing.assert_allclose(got_ivar, ref_ivar, rtol=1e-5, atol=1e-6 * ref_ivar.max())


def test_conserves_the_flux_integral():
    """Inside the observed range, Σ out·Δλ_obs equals ∫ of the piecewise-linear input (dense trapezoid)."""
    rng = np.random.default_rng(11)
    flux = rng.normal(3.0, 1.0, (1, BRZ_WAVE.size)).astype(np.float32)
    ivar = np.ones_like(flux)
    z = 1.7
    out, _ = resample_to_rest(BRZ_WAVE, flux, ivar, ivar > 0, [z])
    inside = (REST_GRID.edges[:-1] * (1 + z) > BRZ_WAVE[0] + 1) & (REST_GRID.edges[1:] * (1 + z) < BRZ_WAVE[-1] - 1)
    lo, hi = REST_GRID.edges[:-1][inside][0] * (1 + z), REST_GRID.edges[1:][inside][-1] * (1 + z)
    widths = np.diff(REST_GRID.edges)[inside] * (1 + z)
    dense = np.linspace(lo, hi, 2_000_001)
    expected = np.trapezoid(np.interp(dense, BRZ_WAVE, flux[0].astype(float)), dense)
    assert (out[0, inside] * widths).sum() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_spectrum_stays_constant_and_nothing_outside(backend):
    flux = np.full((3, BRZ_WAVE.size), 2.5, np.float32)
    ivar = np.full_like(flux, 4.0)
    z = np.array([0.2, 2.0, 4.5])
    out_flux, out_ivar = resample_to_rest(BRZ_WAVE, flux, ivar, ivar > 0, z, backend=backend)
    for row, zi in enumerate(z):
        lo, hi = REST_GRID.edges[:-1] * (1 + zi), REST_GRID.edges[1:] * (1 + zi)
        covered = out_ivar[row] > 0
        np.testing.assert_allclose(out_flux[row, covered], 2.5, rtol=1e-6)
        outside = (hi < BRZ_WAVE[0] - 0.8) | (lo > BRZ_WAVE[-1] + 0.8)
        assert outside.any() and not (out_flux[row, outside].any() or out_ivar[row, outside].any())
        interior = (lo > BRZ_WAVE[0]) & (hi < BRZ_WAVE[-1])
        # inverse variance adds like counts: (bin width / 0.8 Å) pixels of ivar 4
        np.testing.assert_allclose(out_ivar[row, interior], 4.0 * (hi - lo)[interior] / 0.8, rtol=1e-5)


def smooth_rest_spectrum(wave: np.ndarray) -> np.ndarray:
    """A power law with a broad Gaussian line at CIV: smooth on the scale of both grids."""
    return (wave / 1500.0) ** -1.5 + 2.0 * np.exp(-0.5 * ((wave - 1549.06) / 12.0) ** 2)


@pytest.mark.parametrize("z", [1.6, 2.4, 3.3])
def test_shift_by_one_plus_z_and_back_returns_the_spectrum(z):
    flux = smooth_rest_spectrum(BRZ_WAVE / (1 + z))[None, :].astype(np.float32)
    ivar = np.ones_like(flux)
    out_flux, out_ivar = resample_to_rest(BRZ_WAVE, flux, ivar, ivar > 0, [z])
    interior = (REST_GRID.edges[:-1] * (1 + z) > BRZ_WAVE[0]) & (REST_GRID.edges[1:] * (1 + z) < BRZ_WAVE[-1])
    assert interior.sum() > 1500
    np.testing.assert_allclose(out_flux[0, interior], smooth_rest_spectrum(REST_GRID.wave[interior]), rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_pixels_carry_no_weight(backend):
    rng = np.random.default_rng(5)
    flux, ivar, good = random_spectra(rng, 4, BRZ_WAVE.size)
    z = np.array([0.5, 1.5, 2.5, 3.5])
    ref = resample_to_rest(BRZ_WAVE, flux, ivar, good, z, backend=backend)
    changed = flux.copy()
    changed[~good] = rng.normal(0, 1e6, (~good).sum())
    changed[~good & (rng.random(good.shape) < 0.3)] = np.nan
    bad_ivar = ivar.copy()
    bad_ivar[~good & (ivar > 0)] *= 1e3
    got = resample_to_rest(BRZ_WAVE, changed, bad_ivar, good, z, backend=backend)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    not_finite = flux.copy()
    not_finite[~good] = np.nan  # a non-finite value removes a pixel even where good is True
    got = resample_to_rest(BRZ_WAVE, not_finite, ivar, np.ones_like(good), z, backend=backend)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_rejects_mismatched_shapes():
    flux = np.ones((2, BRZ_WAVE.size), np.float32)
    with pytest.raises(ValueError):
        resample_to_rest(BRZ_WAVE, flux, flux[:, :-1], flux > 0, [1.0, 2.0])
    with pytest.raises(ValueError):
        resample_to_rest(BRZ_WAVE, flux, flux, flux > 0, [1.0])


# --------------------------------------------------------------------------------------------------
# Real DESI quasars


def real_quasars() -> pa.Table:
    """The 7 EDR quasars of the picca test files, redshifts from the QSO catalogue."""
    tables = [
        read_spectra_file(PICCA / coadd, None, release="fuji", qso_catalog=PICCA / catalog).spectra
        for coadd, catalog in [
            ("coadd-sv3-dark-9144.fits", "QSO_cat_fuji_dark_healpix.fits.gz"),
            ("coadd-1-80693-thru20210204.fits", "QSO_cat_fuji_dark_tile.fits.gz"),
        ]
    ]
    return pa.concat_tables(tables)


def test_real_quasar_lines_land_at_their_rest_wavelengths():
    """CIV, CIII] and MgII peaks of a lightly smoothed rest-frame spectrum within ±15 Å of the lab values.

    Smoothing: ivar-weighted Gaussian, σ = 3 pixels (≈ 520 km/s, well under a broad line's width).
    Checked where the line window (±50 Å) is covered and its median S/N per rest pixel is ≥ 5: in
    noisier data a broad line's peak wanders by more than 15 Å (here z=1.937 MgII, S/N 4.4, whose
    profile a dip at 2785 Å splits in two).
    """
    raw = real_quasars()
    assert raw.num_rows == 7
    table = normalized_table(raw)
    flux, ivar = list_to_numpy(table["flux"]), list_to_numpy(table["ivar"]).astype(np.float64)
    weight = gaussian_filter1d(ivar, 3.0, axis=1)
    smooth = np.where(
        weight > 0, gaussian_filter1d(flux * ivar, 3.0, axis=1) / np.where(weight > 0, weight, 1), -np.inf
    )
    checked = 0
    for row in range(table.num_rows):
        for line in ("CIV", "CIII]", "MgII"):
            lam = EMISSION_LINES[line]
            window = np.abs(REST_GRID.wave - lam) < 50
            good = ivar[row, window] > 0
            snr = np.median(flux[row, window][good] * np.sqrt(ivar[row, window][good])) if good.any() else 0
            if good.mean() < 0.9 or snr < 5:
                continue
            peak = REST_GRID.wave[window][np.argmax(smooth[row, window])]
            assert abs(peak - lam) <= 15, (table["Z"][row], line, peak)
            checked += 1
    assert checked >= 10


# --------------------------------------------------------------------------------------------------
# Normalization and regions


def test_scale_recovers_a_multiplicative_factor():
    rng = np.random.default_rng(2)
    flux, ivar, good = random_spectra(rng, 3, BRZ_WAVE.size)
    z = np.array([0.3, 2.0, 4.9])
    rest_flux, rest_ivar = resample_to_rest(BRZ_WAVE, flux, ivar, good, z)
    n1, i1, s1 = normalize(rest_flux, rest_ivar)
    n2, i2, s2 = normalize(rest_flux * 7.5, rest_ivar / 7.5**2)
    np.testing.assert_allclose(s2 / s1, 7.5, rtol=1e-6)
    np.testing.assert_allclose(n2, n1, rtol=1e-5)
    np.testing.assert_allclose(i2, i1, rtol=1e-5)
    np.testing.assert_allclose(n1 * s1[:, None], rest_flux, rtol=1e-6)


def test_scale_ignores_the_forest_and_falls_back():
    npix = REST_GRID.npix
    forest = REST_GRID.wave < 1250
    flux = np.where(forest, 100.0, 2.0)[None, :].repeat(4, axis=0).astype(np.float32)
    ivar = np.ones_like(flux)
    flux[1] = -1.0  # noise-dominated: median ≤ 0 → median |flux|
    ivar[2, ~forest] = 0  # only forest covered → all good pixels
    ivar[3] = 0  # nothing → 1
    _, norm_ivar, scale = normalize(flux, ivar)
    np.testing.assert_allclose(scale, [2.0, 1.0, 100.0, 1.0])
    assert norm_ivar.shape == (4, npix) and not norm_ivar[3].any()


def test_region_codes_at_line_centres():
    codes = region_codes(REST_GRID)
    assert codes.dtype == np.int8 and codes.shape == (REST_GRID.npix,)
    expected = {
        "NV": REGION_LYA_NV,
        "SiIV": REGION_SIIV,
        "CIV": REGION_CIV,
        "CIII]": REGION_CIII,
        "MgII": REGION_MGII,
        "Hbeta": REGION_HBETA,
        "Halpha": REGION_HALPHA,
    }
    for line, code in expected.items():
        assert codes[np.argmin(np.abs(REST_GRID.wave - EMISSION_LINES[line]))] == code, line
    at = lambda lam: codes[np.argmin(np.abs(REST_GRID.wave - lam))]  # noqa: E731
    assert at(1100.0) == REGION_LYA_FOREST and at(1460.0) == REGION_CONTINUUM and at(4200.0) == REGION_CONTINUUM
    forest = lya_forest_mask(REST_GRID)
    assert np.array_equal(forest, REST_GRID.wave < EMISSION_LINES["LyA"])
    assert np.all(codes[forest] == REGION_LYA_FOREST)


# --------------------------------------------------------------------------------------------------
# The batch and the table


def observed(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, z: np.ndarray) -> Spectra:
    """Spectra on the brz grid as ingestion stores them: ivar 0 where a pixel is not good."""
    return Spectra(BRZ_WAVE, flux, np.where(good, ivar, 0).astype(np.float32), np.arange(1, len(z) + 1), z)


def raw_table(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, z: np.ndarray) -> pa.Table:
    def lists(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), values.shape[1])

    n = flux.shape[0]
    snr = pa.array(np.full(n, 3.0, np.float32))
    return pa.table(
        {
            "TARGETID": pa.array(np.arange(1, n + 1), pa.int64()),
            "Z": pa.array(z, pa.float64()),
            "flux": lists(flux, pa.float32()),
            "ivar": lists(np.where(good, ivar, 0).astype(np.float32), pa.float32()),
            "good": lists(good, pa.bool_()),
            "snr_b": snr,
            "snr_r": snr,
            "snr_z": snr,
        }
    )


def test_normalize_batch_reports_coverage():
    rng = np.random.default_rng(4)
    flux, ivar, good = random_spectra(rng, 3, BRZ_WAVE.size)
    flux += 10
    good[2, 1000:] = False  # most of the spectrum masked
    batch = normalize_batch(observed(flux, ivar, good, np.array([2.0, 2.0, 2.0]))).columns
    assert batch["coverage_min"][0] == pytest.approx(BRZ_WAVE[0] / 3.0, abs=1.0)
    assert batch["coverage_max"][0] == pytest.approx(BRZ_WAVE[-1] / 3.0, abs=1.0)
    np.testing.assert_allclose(batch["good_fraction"], good.mean(axis=1), rtol=1e-6)
    assert batch["low_coverage"].tolist() == [False, False, True]
    assert batch["scale"].dtype == np.float64 and np.all(batch["scale"] > 0)


def test_normalized_table_schema_and_rows():
    rng = np.random.default_rng(8)
    flux, ivar, good = random_spectra(rng, 5, BRZ_WAVE.size)
    z = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    table = normalized_table(raw_table(flux + 10, ivar, good, z))
    assert table.schema == NORMALIZED_SCHEMA
    assert json.loads(table.schema.metadata[GRID_METADATA_KEY]) == REST_GRID.to_dict()
    assert table["TARGETID"].to_pylist() == [1, 2, 3, 4, 5]
    batch = normalize_batch(observed(flux + 10, ivar, good, z))
    np.testing.assert_array_equal(list_to_numpy(table["flux"]), batch.flux)
    np.testing.assert_array_equal(table["scale"].to_numpy(), batch.columns["scale"])
    sliced = normalized_table(raw_table(flux + 10, ivar, good, z).slice(2, 2))
    np.testing.assert_array_equal(list_to_numpy(sliced["ivar"]), batch.ivar[2:4])
    empty = normalized_table(raw_table(flux[:0], ivar[:0], good[:0], z[:0]))
    assert empty.num_rows == 0 and empty.schema == NORMALIZED_SCHEMA
