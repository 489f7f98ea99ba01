"""Spectral features: recovery of known lines and BAL troughs, coverage nulls, and agreement with a
straightforward per-spectrum pandas reference implementation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.features import (
    AI_MIN_WIDTH,
    BAL_LINES,
    BI_MIN_WIDTH,
    LINES,
    spectral_features,
)
from qad_assets.science.spectra.features_reference import reference_features
from qad_assets.science.spectra.normalization import normalized_table
from qad_assets.science.spectra.rest_frame import C_KMS

COMPOSITE = Path(__file__).parent / "data" / "composites" / "VandenBerk2001.dat"


def composite() -> tuple[np.ndarray, np.ndarray]:
    """Vanden Berk et al. (2001) SDSS median quasar composite: rest Å, relative f_λ."""
    table = np.loadtxt(COMPOSITE, comments="#")
    return table[:, 0], table[:, 1]


def observe(
    rest_model, z: float, *, snr: float = 30.0, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A model rest-frame f_λ(λ) seen at redshift z on the brz grid, with Gaussian noise of S/N ``snr``."""
    flux = rest_model(BRZ_WAVE / (1 + z))
    sigma = np.full_like(flux, np.median(flux) / snr)
    if rng is not None:
        flux = flux + rng.normal(0.0, sigma)
    return flux.astype(np.float32), (1 / sigma**2).astype(np.float32)


def composite_model(trough: tuple[float, float, float, float] | None = None):
    """The composite, optionally with a flat BAL trough (line Å, v_lo, v_hi km/s, depth) cut into it."""
    wave, flux = composite()

    def model(rest: np.ndarray) -> np.ndarray:
        f = np.interp(rest, wave, flux)
        if trough is not None:
            line, v_lo, v_hi, depth = trough
            v = C_KMS * (rest - line) / line
            f = np.where((v > v_lo) & (v < v_hi), f * (1 - depth), f)
        return f

    return model


def gaussian_line_model(fwhm_kms: float, ew: float, voff_kms: float = 0.0, alpha: float = -1.5):
    """A power law f_λ ∝ λ^α plus one Gaussian emission line at CIV of given FWHM, EW and offset."""
    centre = LINES["civ"].ref * math.exp(voff_kms / C_KMS)
    sigma = centre * fwhm_kms / C_KMS / (2 * math.sqrt(2 * math.log(2)))

    def model(rest: np.ndarray) -> np.ndarray:
        continuum = (rest / 1500.0) ** alpha
        line = ew / (sigma * math.sqrt(2 * math.pi)) * np.exp(-0.5 * ((rest - centre) / sigma) ** 2)
        return continuum * (1 + line)

    return model


def raw_table(spectra: list[tuple[np.ndarray, np.ndarray]], z: list[float]) -> pa.Table:
    flux = np.stack([s[0] for s in spectra])
    ivar = np.stack([s[1] for s in spectra])

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), values.shape[1])

    snr = pa.array(np.linspace(1, 2, len(z)), pa.float32())
    return pa.table(
        {
            "TARGETID": pa.array(np.arange(len(z)) + 100, pa.int64()),
            "Z": pa.array(z, pa.float64()),
            "flux": lists(flux, pa.float32()),
            "ivar": lists(ivar, pa.float32()),
            "good": lists(ivar > 0, pa.bool_()),
            "snr_b": snr,
            "snr_r": snr,
            "snr_z": snr,
        }
    )


def features_of(spectra: list[tuple[np.ndarray, np.ndarray]], z: list[float]) -> pl.DataFrame:
    return spectral_features(normalized_table(raw_table(spectra, z)))


# --------------------------------------------------------------------------------------------------
# Recovery of known inputs


@pytest.mark.parametrize("voff", [0.0, 1500.0])
def test_injected_gaussian_line_is_recovered(voff):
    """On a flat continuum the side-band line is exact, so EW, FWHM and offset must come back."""
    model = gaussian_line_model(fwhm_kms=4000.0, ew=40.0, voff_kms=voff, alpha=0.0)
    row = features_of([observe(model, 2.2)], [2.2]).row(0, named=True)
    assert row["civ_ew"] == pytest.approx(40.0, rel=0.01)
    assert row["civ_fwhm"] == pytest.approx(4000.0, rel=0.03)
    assert row["civ_voff"] == pytest.approx(voff, abs=40.0)
    assert row["ciii_ew"] == pytest.approx(0.0, abs=0.1)  # no line there
    assert row["ciii_fwhm"] is None  # and so no peak


@pytest.mark.parametrize(("alpha", "z"), [(-1.5, 0.5), (-1.5, 2.2), (-0.5, 3.5)])
def test_power_law_slope_is_recovered(alpha, z):
    row = features_of([observe(gaussian_line_model(4000.0, 0.0, alpha=alpha), z)], [z]).row(0, named=True)
    assert row["alpha_lambda"] == pytest.approx(alpha, abs=0.01)


def test_bal_trough_gives_the_analytic_balnicity():
    """A flat trough at 50% of the continuum from −20000 to −10000 km/s: BI = (1 − 0.5/0.9)(10000 − 2000)."""
    rng = np.random.default_rng(1)
    model = composite_model(trough=(BAL_LINES["civ"], -20000.0, -10000.0, 0.5))
    z = [2.5, 2.5, 3.0]
    frame = features_of([observe(model, zi, snr=40, rng=rng) for zi in z], z)
    depth = 1 - 0.5 / 0.9
    np.testing.assert_allclose(frame["civ_bi"], depth * (10000 - BI_MIN_WIDTH), rtol=0.05)
    np.testing.assert_allclose(frame["civ_ai"], depth * (10000 - AI_MIN_WIDTH), rtol=0.05)
    assert (frame["siiv_bi"] == 0).all()


def test_normal_quasar_has_no_bal():
    rng = np.random.default_rng(2)
    z = [1.9, 2.3, 2.8, 3.4, 4.0]
    frame = features_of([observe(composite_model(), zi, snr=20, rng=rng) for zi in z], z)
    for column in ("civ_bi", "civ_ai", "siiv_bi", "siiv_ai"):
        assert (frame[column] == 0).all(), column


def test_composite_lines_are_measured_where_covered_and_null_elsewhere():
    rng = np.random.default_rng(3)
    z = [0.2, 1.2, 2.1, 4.0]  # MgII needs z < 2.3 (red band to 2945 Å), CIV z > 1.5, Lyα+N V z > 2.1
    frame = features_of([observe(composite_model(), zi, snr=50, rng=rng) for zi in z], z)
    covered = {name: frame[f"{name}_ew"].is_not_null().to_list() for name in LINES}
    assert covered["halpha"] == [True, False, False, False]
    assert covered["hbeta"] == [True, False, False, False]
    assert covered["mgii"] == [False, True, True, False]
    assert covered["civ"] == [False, False, True, True]
    assert covered["lya"] == [False, False, True, True]
    assert frame["civ_bi"].is_null().to_list() == [True, True, False, False]
    for name in LINES:  # EW, FWHM and offset are null together, never NaN
        for suffix in ("fwhm", "voff"):
            column = frame[f"{name}_{suffix}"]
            assert column.is_nan().sum() == 0 and column.is_null().to_list() == frame[f"{name}_ew"].is_null().to_list()
    # Vanden Berk et al. 2001 Table 2: EW(MgII) 32.3 Å, EW(CIII]) 21.2 Å, broad lines a few 1000 km/s wide
    mgii = frame.filter(pl.col("mgii_ew").is_not_null())
    assert mgii["mgii_ew"].to_numpy() == pytest.approx(32.0, abs=3.0)
    assert ((mgii["mgii_fwhm"] > 2000) & (mgii["mgii_fwhm"] < 6000)).all()
    assert (frame["ciii_ew"].drop_nulls() - 21.2).abs().max() < 3.0


def test_polars_input_and_passthrough_columns():
    rng = np.random.default_rng(4)
    z = [1.0, 2.5]
    table = normalized_table(raw_table([observe(composite_model(), zi, rng=rng) for zi in z], z))
    from_table = spectral_features(table)
    from_polars = spectral_features(pl.from_arrow(table))
    assert from_table.equals(from_polars)
    assert from_table["TARGETID"].to_list() == [100, 101]
    assert from_table["snr_b"].to_list() == pytest.approx([1.0, 2.0])
    assert (from_table["snr_rest"] > 10).all()


def test_polars_equals_the_pandas_reference():
    rng = np.random.default_rng(9)
    cases = [
        (0.25, composite_model(), 25),
        (0.6, composite_model(), 8),
        (1.1, composite_model(), 15),
        (1.7, composite_model(), 30),
        (2.1, composite_model(trough=(BAL_LINES["civ"], -15000, -6000, 0.6)), 20),
        (2.4, composite_model(trough=(BAL_LINES["siiv"], -12000, -2000, 0.4)), 12),
        (2.6, composite_model(trough=(BAL_LINES["civ"], -24000, -22500, 0.7)), 25),
        (3.1, composite_model(), 6),
        (3.6, gaussian_line_model(5000.0, 30.0, 700.0), 10),
        (4.4, composite_model(), 15),
    ]
    spectra = [observe(model, z, snr=snr, rng=rng) for z, model, snr in cases]
    spectra[3][1][2000:2600] = 0  # a masked stretch
    spectra[6][1][rng.random(BRZ_WAVE.size) < 0.05] = 0  # scattered bad pixels
    table = normalized_table(raw_table(spectra, [c[0] for c in cases]))
    got = spectral_features(table).to_pandas()
    want = reference_features(table)
    for column in want.columns:
        np.testing.assert_allclose(
            got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-6, atol=1e-6, err_msg=column
        )
    assert np.nansum(want["civ_bi"]) > 0 and np.nansum(want["siiv_ai"]) > 0  # the BAL paths were exercised
