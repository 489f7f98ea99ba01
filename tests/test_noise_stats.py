"""The noise measurement (qad_assets.science.spectra.noise) on constructed spectra and on the real DESI test coadds."""

from __future__ import annotations

import numpy as np
import pytest

from qad_assets.science.io.coadd import CoaddArms, read_coadd
from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE
from qad_assets.science.spectra.noise import (
    PIXEL_CLASSES,
    classify_pixels,
    fill_bad,
    measure_noise,
    pull_stats,
    pulls,
    sky_excess,
)
from tests.conftest import DATA

REAL_COADDS = sorted((DATA / "desi").glob("*/coadd-*.fits"))


def test_fill_bad_bridges_linearly() -> None:
    values = np.array([[1.0, 9.0, 9.0, 4.0, 9.0], [9.0, 2.0, 9.0, 9.0, 9.0]])
    good = np.array([[True, False, False, True, False], [False, True, False, False, False]])
    np.testing.assert_allclose(fill_bad(values, good), [[1.0, 2.0, 3.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0, 2.0]])


def test_white_noise_pulls() -> None:
    """Gaussian noise of the stated ivar: robust σ 0.973 (the module's reference), no 5σ tail; an ivar
    5 % optimistic scales it by 1.05."""
    rng = np.random.default_rng(0)
    flux = rng.normal(size=(100, 4000)) + np.linspace(0, 3, 4000)  # a slope the running median follows
    ivar, good = np.ones_like(flux), rng.random(flux.shape) > 0.01
    exact = pull_stats(pulls(flux, ivar, good))
    assert exact.robust_sigma == pytest.approx(0.973, abs=0.005)
    assert exact.p3 == pytest.approx(0.003, abs=0.0004) and exact.p5 < 1e-5
    assert exact.n == good.sum()
    optimistic = pull_stats(pulls(flux, ivar * 1.05**2, good))
    assert optimistic.robust_sigma / exact.robust_sigma == pytest.approx(1.05, abs=1e-3)


def test_sky_lines_found_from_ivar_dips() -> None:
    """Two lines that add 50 % and 300 % to the variance of every spectrum: near / strong sky line."""
    rng = np.random.default_rng(1)
    ivar = np.ones((40, 2000)) * rng.uniform(0.5, 2.0, (40, 1)) * np.linspace(0.5, 1.5, 2000)
    ivar[:, 500] /= 1.5
    ivar[:, 1500] /= 4.0
    excess = sky_excess(ivar, np.ones(ivar.shape, bool))
    assert excess[500] == pytest.approx(0.5, rel=0.01) and excess[1500] == pytest.approx(3.0, rel=0.01)
    assert np.abs(np.delete(excess, [500, 1500])).max() < 1e-3
    classes = classify_pixels(excess)
    assert classes[499:502].tolist() == [1, 1, 1] and classes[1499:1502].tolist() == [2, 2, 2]
    assert (np.delete(classes, [499, 500, 501, 1499, 1500, 1501]) == 0).all()


def _constant_coadd(n: int, rng: np.random.Generator) -> CoaddArms:
    """White noise of unit ivar on every arm, a dead pixel in row 0 and an empty row 1."""
    flux = {arm: rng.normal(size=(n, ARM_WAVE[arm].size)).astype(np.float32) for arm in ARMS}
    ivar = {arm: np.ones((n, ARM_WAVE[arm].size), np.float32) for arm in ARMS}
    mask = {arm: np.zeros((n, ARM_WAVE[arm].size), np.uint32) for arm in ARMS}
    for arm in ARMS:
        ivar[arm][1] = 0.0
    mask["R"][0, 300] = 1  # outside the arm overlaps
    return CoaddArms("constant", {}, {"TARGETID": np.arange(n)}, dict(ARM_WAVE), flux, ivar, mask)


def test_measure_noise_on_white_noise() -> None:
    stats = measure_noise([_constant_coadd(30, np.random.default_rng(2))])
    assert stats.n_spectra == 29 and stats.snr.size == 29
    assert stats.n_pixels == 29 * BRZ_WAVE.size - 1
    assert stats.sky_fraction == {"sky": 0.0, "strong_sky": 0.0}
    assert stats.pulls["continuum"].robust_sigma == pytest.approx(0.973, abs=0.01)
    assert stats.pull_hist["continuum"].sum() == stats.pulls["continuum"].n == stats.n_pixels
    for arm in ARMS:
        assert np.nanmax(np.abs(stats.arm_shape[arm] - 1.0)) < 0.01
    assert np.abs(stats.snr).max() < 0.1


def test_spectra_limits() -> None:
    coadd = _constant_coadd(30, np.random.default_rng(3))
    for arm in ARMS:
        coadd.flux[arm][:5] += 50.0  # S/N ≫ 3 in rows 0, 2, 3, 4 (row 1 is empty)
    assert measure_noise([coadd], max_snr=3.0).n_spectra == 25
    assert measure_noise([coadd, coadd], max_spectra=10).n_spectra == 10
    assert measure_noise([coadd, coadd], max_spectra=10).snr.size == 58


def test_real_desi_coadds() -> None:
    """The real test coadds: 12 spectra with data; DESI's sky lines and throughput show up."""
    stats = measure_noise([read_coadd(p) for p in REAL_COADDS])
    assert stats.n_spectra == 12
    wave = BRZ_WAVE
    for line in (5578.9, 6302.0, 8401.0, 8829.0):  # [OI] 5577, [OI] 6300, OH 8399, OH 8827 (vacuum Å)
        assert stats.pixel_class[np.abs(wave - line) < 1.0].max() == 2, line
    assert 0.15 < stats.sky_fraction["sky"] < 0.45 and 0.05 < stats.sky_fraction["strong_sky"] < 0.2
    assert set(stats.pulls) == set(PIXEL_CLASSES)
    assert 0.95 < stats.pulls["continuum"].robust_sigma < 1.15
    assert stats.pulls["strong_sky"].robust_sigma > stats.pulls["continuum"].robust_sigma
    blue = stats.arm_shape["B"][ARM_WAVE["B"] < 3700]
    assert np.nanmedian(blue) > 3.0  # the blue roll-off: noise per flux several times the arm's median
