"""The demo's quasar physics and anomalies, function by function: absorber profiles and incidences, the
luminosity dependence of the emission lines, and what each anomaly class does."""

from __future__ import annotations

import numpy as np
import pytest

from qad_assets.demo import absorbers, anomalies, sources
from qad_assets.demo.settings import DemoSettings
from qad_assets.errors import UserError
from qad_assets.science.spectra.arms import ARM_WAVE, BRZ_WAVE, WAVE_STEP


def _rest_ew(wave: np.ndarray, transmission: np.ndarray, z: float, lo: float, hi: float) -> float:
    band = (wave > lo * (1 + z)) & (wave < hi * (1 + z))
    return float((1 - transmission[band]).sum() * (wave[1] - wave[0]) / (1 + z))


@pytest.mark.parametrize("log_n", [19.0, 20.3, 21.0, 21.5])
def test_damped_lya_equivalent_width(log_n: float) -> None:
    """On the damped (square-root) part of the curve of growth, W_r(Lyα) ≈ 7.3·(N_HI/10^20)^0.5 Å."""
    wave = np.arange(3000.0, 6000.0, 0.05)
    transmission = np.exp(-absorbers.hi_optical_depth(wave, np.array([2.5]), np.array([log_n])))[0]
    assert _rest_ew(wave, transmission, 2.5, 1100.0, 1350.0) == pytest.approx(7.3 * 10 ** ((log_n - 20) / 2), rel=0.05)
    core = np.abs(wave / 3.5 - 1215.67) < 0.2
    assert transmission[core].max() < 1e-6  # black core


def test_lyman_limit_continuum() -> None:
    """Below the system's 912 Å the continuum optical depth is N_HI·6.3e-18 cm² × (λ/912)³."""
    wave = np.array([911.0, 850.0, 700.0]) * 3.0
    tau = absorbers.hi_optical_depth(wave, np.array([2.0]), np.array([17.5]))[0]
    np.testing.assert_allclose(tau, 10**17.5 * 6.304e-18 * (wave / 3.0 / 911.753) ** 3, rtol=0.01)


def test_narrow_lines_keep_their_equivalent_width() -> None:
    centre = np.array([5000.0, 5000.0, 7000.0])
    ew = np.array([0.3, 4.0, 1.0])  # observed Å; the 4 Å line saturates and widens instead of going black
    log_t = absorbers.narrow_log_transmission(3, np.arange(3), centre, ew, np.array([30.0, 30.0, 100.0]))
    measured = (1 - np.exp(log_t)).sum(axis=1) * WAVE_STEP
    np.testing.assert_allclose(measured, ew, rtol=0.02)
    assert np.exp(log_t).min() >= 1 - absorbers.MAX_DEPTH - 1e-9


def test_doublets_from_thin_to_saturated() -> None:
    centre, width = absorbers._line_list(absorbers.CIV_SYSTEM[0], np.array([2.0, 2.0]), np.array([0.05, 3.0]))
    np.testing.assert_allclose(centre[0, :2], np.array([1548.204, 1550.781]) * 3)
    thin, saturated = width[0, 0] / width[0, 1], width[1, 0] / width[1, 1]
    assert thin == pytest.approx(1.9, abs=0.05) and saturated == pytest.approx(1.0, abs=0.01)


def test_incidence_of_absorbers() -> None:
    """Per unit redshift and per quasar, as the literature numbers in the module say."""
    rng = np.random.default_rng(0)
    z_qso = np.full(20000, 3.0)
    rows, z_abs, log_n = absorbers.hi_systems(rng, z_qso, 1.0)
    z_hi = 4.0 * np.exp(-absorbers.PROXIMITY_KMS / 299792.458) - 1
    assert z_abs.min() >= absorbers.MIN_HI_Z and z_abs.max() <= z_hi
    per_dz = len(rows) / z_qso.size / (z_hi - absorbers.MIN_HI_Z)
    assert per_dz == pytest.approx(1.0 * (3.45 / 3.5) ** 1.8, rel=0.1)  # ℓ_LLS at the middle of the range
    dla = log_n >= 20.3
    assert dla.sum() / z_qso.size / (z_hi - absorbers.MIN_HI_Z) == pytest.approx(
        0.183 * 1.0 * (3.45 / 3.5) ** 1.8, rel=0.15
    )
    transmission, notes = absorbers.line_of_sight(rng, np.full(4000, 2.5), DemoSettings(absorber_rate=1.0))
    assert np.mean(["assoc" in n for n in notes]) == pytest.approx(0.25, abs=0.03)
    mgii_dz = 3.5 * np.exp(-absorbers.PROXIMITY_KMS / 299792.458) - 1 - (3600 / 2796.354 - 1)
    assert np.mean([n.count("MgII") for n in notes]) == pytest.approx(0.7 * mgii_dz, rel=0.1)
    assert ((transmission >= 0) & (transmission <= 1)).all()
    none, notes = absorbers.line_of_sight(
        rng, np.full(50, 2.5), DemoSettings(absorber_rate=0.0, associated_fraction=0.0)
    )
    assert (none == 1.0).all() and set(notes) == {""}


def test_baldwin_effect_and_blueshift_grow_with_luminosity() -> None:
    """Brighter quasars: lower C IV equivalent width and the blueshifted, asymmetric line family (qsogen)."""
    rng = np.random.default_rng(1)
    z = np.full(400, 2.0)
    bright, faint = sources.quasar_params(rng, z, np.full(400, 17.5)), sources.quasar_params(rng, z, np.full(400, 22.5))
    assert sources.absolute_mag(np.array([17.5]), np.array([2.0]))[0] == pytest.approx(-28.4, abs=0.3)
    assert bright["line_type"].mean() < -0.3 < 0.3 < faint["line_type"].mean()
    rest = np.linspace(1450.0, 1700.0, 1000)[None, :]
    ew = {}
    for name, p in (("bright", bright), ("faint", faint)):
        ratio = sources._qso_line_ratio(np.repeat(rest, 400, axis=0), p)
        ew[name] = ratio.sum(axis=1) * (rest[0, 1] - rest[0, 0])
        peak = rest[0, np.argmax(ratio.mean(axis=0))]
        ew[name + "_peak"] = peak
    assert np.median(ew["bright"]) < 0.7 * np.median(ew["faint"])
    assert ew["bright_peak"] < ew["faint_peak"]  # C IV peak blueshifted in luminous quasars


def test_host_galaxy_only_below_z1_and_fainter_for_luminous_quasars() -> None:
    rng = np.random.default_rng(2)
    p = sources.quasar_params(rng, np.array([0.3, 0.3, 0.8, 1.5]), np.array([17.0, 21.0, 21.0, 21.0]))
    assert p["host_frac"][1] > p["host_frac"][0] > 0 and p["host_frac"][2] > 0 and p["host_frac"][3] == 0


def test_bal_troughs() -> None:
    rest = np.linspace(1000.0, 3000.0, 4000)[None, :].repeat(2, axis=0)
    p = sources.quasar_params(np.random.default_rng(3), np.full(2, 2.0), np.full(2, 21.0))
    hibal = np.array([True, False])
    anomalies._hibal(p, hibal, np.array([1.0]), np.random.default_rng(0))
    anomalies._lobal(p, ~hibal, np.array([1.0]), np.random.default_rng(0))
    trans = sources._bal_transmission(rest, p)
    civ = (rest[0] > 1549.06 * (1 - 15000 / 299792.458)) & (rest[0] < 1549.06 * (1 - 8000 / 299792.458))
    mgii = (rest[0] > 2798.75 * (1 - 15000 / 299792.458)) & (rest[0] < 2798.75 * (1 - 8000 / 299792.458))
    assert trans[0, civ].max() < 0.2 and trans[1, civ].max() < 0.2
    assert trans[0, mgii].min() == 1.0 and trans[1, mgii].max() < 0.4


def test_star_as_qso_types_run_from_quasar_like_to_obvious() -> None:
    which, notes = anomalies.star_as_qso_types(np.random.default_rng(0), np.array([0.1, 0.3, 0.5, 0.7, 0.99]))
    types = sources.templates()["star_type"][which]
    assert types.tolist() == ["WD", "A", "G", "K", "M"] and notes[0] == "star=WD"


def test_superposition_keeps_the_quasar_brightness() -> None:
    rng = np.random.default_rng(4)
    z = np.full(6, 2.2)
    quasar = sources.quasar_spectra(rng, z, sources.quasar_params(rng, z, np.full(6, 21.0)))
    quasar = sources.scale_to_rmag(quasar, np.full(6, 21.0))
    total, notes = anomalies.superposition(rng, quasar, z, np.array([0.1, 0.4, 0.7, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose(sources.band_nmgy(total, "r"), sources.band_nmgy(quasar, "r"), rtol=1e-6)
    assert all(n.startswith("foreground ") for n in notes)
    ratio = np.array([float(n.split("flux_ratio=")[1]) for n in notes])
    np.testing.assert_allclose(ratio, 0.15 + 0.85 * np.array([0.1, 0.4, 0.7, 1.0, 1.0, 1.0]), atol=0.005)
    galaxies = [float(n.split("z=")[1].split()[0]) for n in notes if "galaxy" in n]
    assert all(zg < 2.2 for zg in galaxies)


def _arms(n: int) -> dict:
    return {
        arm: {
            "wave": ARM_WAVE[arm],
            "flux": np.ones((n, ARM_WAVE[arm].size)),
            "ivar": np.full((n, ARM_WAVE[arm].size), 100.0),
            "mask": np.zeros((n, ARM_WAVE[arm].size), np.uint32),
        }
        for arm in "BRZ"
    }


def test_artifacts_jump_or_spike_without_a_mask() -> None:
    arms = _arms(2)
    notes = anomalies.artifact(arms, np.array([0, 1]), np.array([1.0, 1.0]), np.random.default_rng(5))
    assert notes[0].startswith("arm_jump") and notes[1].startswith("spikes n=5")
    jumped = [arm for arm in "BRZ" if not np.allclose(arms[arm]["flux"][0], 1.0)]
    assert len(jumped) == 1 and abs(arms[jumped[0]]["flux"][0, 0] - 1) == pytest.approx(0.5)
    spiked = np.concatenate([arms[arm]["flux"][1] - 1 for arm in "BRZ"])
    assert 5 <= (spiked > 0).sum() <= 10 and spiked.max() == pytest.approx(50 * 0.1)
    assert all((arms[arm]["mask"] == 0).all() for arm in "BRZ")


def test_settings_are_checked_and_round_trip() -> None:
    settings = DemoSettings(exposure_scale=2.0, sky_residual=0.5)
    assert DemoSettings.from_json(settings.to_json()) == settings
    with pytest.raises(UserError, match="anomaly_fraction"):
        DemoSettings(anomaly_fraction=0.9)
    with pytest.raises(UserError, match="keys"):
        DemoSettings.from_json('{"exposure": 2}')
    assert BRZ_WAVE.size == 7781
