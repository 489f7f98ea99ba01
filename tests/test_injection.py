"""Injected anomalies do what they say, in the observed frame, with the host's noise kept honest.

Hosts are synthetic observed spectra on DESI's brz grid with a known signal (a power-law continuum and
Gaussian broad lines) and Gaussian noise at their ivar, so every recipe can be checked against the
truth; the last test runs on the real DESI quasars packaged with the harness.
"""

from __future__ import annotations

import numpy as np
import pytest

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.normalization import normalize_batch
from qad_assets.science.spectra.rest_frame import C_KMS
from qad_assets.science.validation import injection
from qad_assets.science.validation.foregrounds import NEBULAR_LINES, r_band_mean
from qad_assets.science.validation.host_model import continuum_and_lines
from qad_assets.science.validation.injection import (
    INJECTION_CLASSES,
    Hosts,
    apply,
    arm_of,
    effect_of,
    inject,
    injection_set,
    outflow_velocity,
)
from qad_assets.science.validation.real_quasars import real_quasars

CIV, MGII = 1549.06, 2798.75
CA_K, CA_H = 3934.78, 3969.59  # vacuum Å


def true_signal(n: int, z: float, line_ew: float = 40.0) -> np.ndarray:
    """Power law f_λ ∝ λ^−1.5 (2 at 5000 Å observed) with C IV and Mg II Gaussian lines of rest EW ``line_ew``."""
    rest = BRZ_WAVE / (1 + z)
    cont = 2.0 * (BRZ_WAVE / 5000.0) ** -1.5
    lines = np.zeros_like(rest)
    for centre in (CIV, MGII):
        sigma = centre * 2500.0 / C_KMS
        lines += line_ew / (np.sqrt(2 * np.pi) * sigma) * np.exp(-0.5 * ((rest - centre) / sigma) ** 2)
    return np.tile(cont * (1.0 + lines), (n, 1))


def synthetic_hosts(n: int = 60, z: float = 1.8, snr: float = 8.0, seed: int = 0) -> tuple[Spectra, np.ndarray]:
    """Observed hosts with a known signal, noise at ivar (σ = continuum/snr, higher in the blue), a gap."""
    rng = np.random.default_rng(seed)
    signal = true_signal(n, z)
    sigma = 2.0 / snr * (1.0 + 0.5 * (BRZ_WAVE < 4500))[None, :] * np.ones((n, 1))
    ivar = 1.0 / sigma**2
    ivar[:, 3000:3010] = 0.0  # a masked stretch: it must stay without data
    flux = np.where(ivar > 0, signal + sigma * rng.standard_normal(signal.shape), 0.0)
    spectra = Spectra(
        BRZ_WAVE,
        flux.astype(np.float32),
        ivar.astype(np.float32),
        np.arange(n, dtype=np.int64) + 1000,
        np.full(n, z),
    )
    return spectra, signal


def expected(hosts: Hosts, effect: injection.Effect, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The noiseless injected signal and its variance, from the recipe's effect and the host's truth."""
    base = signal if effect.replacement is None else effect.replacement
    t = effect.transmission
    variance = np.where(hosts.ivar > 0, 1.0 / np.where(hosts.ivar > 0, hosts.ivar, 1.0), 0.0)
    variance = np.where(t <= 1, variance, variance * t**2)
    noise_v, level = hosts.noise
    variance = variance + injection.OBJECT_NOISE_SHARE * noise_v * np.clip(effect.added, 0, None) / level
    mean = (base * t + effect.added) * effect.calibration + effect.spikes
    return mean, variance * effect.calibration**2


@pytest.mark.parametrize("kind", INJECTION_CLASSES)
def test_injected_noise_matches_the_new_ivar(kind: str) -> None:
    """Pulls of the injected spectrum about its noiseless truth are N(0, 1) under the ivar it carries:
    the host's noise neither lost (a smoothed copy subtracted) nor invented."""
    spectra, signal = synthetic_hosts()
    hosts = Hosts(spectra)
    rng = np.random.default_rng(1)
    effect = effect_of(kind, hosts, 1.0, rng)
    out = apply(hosts, effect, rng)
    mean, variance = expected(hosts, effect, signal)
    use = (out.ivar > 0) & (effect.spikes == 0)
    pull = (out.flux - mean)[use] * np.sqrt(out.ivar[use])
    np.testing.assert_allclose(1.0 / out.ivar[use], variance[use], rtol=1e-4)
    assert abs(pull.mean()) < 0.02 and abs(pull.std() - 1.0) < 0.02, (kind, pull.mean(), pull.std())
    assert (out.ivar[spectra.ivar == 0] == 0).all() and (out.flux[spectra.ivar == 0] == 0).all()


def test_arm_step_scales_exactly_one_arm() -> None:
    spectra, _ = synthetic_hosts(n=10)
    out, effect = inject("artifact", spectra, 0.5, np.random.default_rng(2))
    arms = arm_of(BRZ_WAVE)
    for row in range(0, 10, 2):  # even rows: an arm's calibration; odd rows: spikes
        assert effect.subclass[row] == "arm_step"
        arm = list("brz").index(effect.detail[row].split("arm=")[1][0])
        factor = effect.calibration[row, np.argmax(arms == arm)]
        assert float(effect.detail[row].split("factor=")[1]) == pytest.approx(factor, abs=1e-3)
        assert abs(np.log(factor)) == pytest.approx(injection.ARM_STEP_MIN + injection.ARM_STEP_SLOPE * 0.5)
        seen = spectra.ivar[row] > 0
        inside = (arms == arm) & seen
        np.testing.assert_allclose(out.flux[row, inside], spectra.flux[row, inside] * factor, rtol=1e-5)
        np.testing.assert_allclose(out.ivar[row, inside], spectra.ivar[row, inside] / factor**2, rtol=1e-5)
        np.testing.assert_array_equal(out.flux[row, ~inside & seen], spectra.flux[row, ~inside & seen])


def test_spikes_are_one_or_two_unmasked_pixels_the_pipeline_sees() -> None:
    spectra, _ = synthetic_hosts(n=10)
    out, effect = inject("artifact", spectra, 1.0, np.random.default_rng(3))
    rest_in, rest_out = normalize_batch(spectra), normalize_batch(out)
    for row in range(1, 10, 2):
        assert effect.subclass[row] == "spikes"
        changed = np.flatnonzero(out.flux[row] != spectra.flux[row])
        runs = np.split(changed, np.flatnonzero(np.diff(changed) > 1) + 1)
        assert len(runs) == 1 + round(2 * 1.0) and all(1 <= len(r) <= 2 for r in runs)
        assert (out.ivar[row, changed] == spectra.ivar[row, changed]).all() and (out.ivar[row, changed] > 0).all()
        pull = (out.flux[row, changed] - spectra.flux[row, changed]) * np.sqrt(spectra.ivar[row, changed])
        assert pull.max() == pytest.approx(injection.SPIKE_SIGMA_MIN * injection.SPIKE_SIGMA_BASE, rel=1e-4)
        assert rest_out.columns["spike_pull"][row] > 30 > rest_in.columns["spike_pull"][row]


def test_foregrounds_put_their_features_at_their_observed_wavelengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A star's Ca H&K at z ≈ 0 (its radial velocity), a passive galaxy's at (1 + z_gal), an emission-line
    galaxy's [O III] 5008 at (1 + z_gal); the flux ratio in the r band as stated."""
    spectra, _ = synthetic_hosts(n=40, z=2.5)
    hosts = Hosts(spectra)
    for kind in ("star", "passive", "elg"):
        monkeypatch.setattr(injection, "FOREGROUND_KINDS", ((kind, 1.0),))
        effect = effect_of("superposition", hosts, 1.0, np.random.default_rng(4))
        assert set(effect.subclass) == {kind}
        ratio = r_band_mean(effect.added, BRZ_WAVE) / hosts.r_level
        np.testing.assert_allclose(ratio, injection.FOREGROUND_RATIO_MIN * injection.FOREGROUND_RATIO_BASE, rtol=1e-6)
        for row, detail in enumerate(effect.detail):
            if kind == "star":
                if detail.split("star=")[1][0] not in "GK":  # hot stars barely show Ca H&K, M stars bury them
                    continue
                shift = 1.0 + float(detail.split("rv_kms=")[1].split()[0]) / C_KMS
                features, sign = (CA_K * shift, CA_H * shift), -1
            else:
                z_gal = float(detail.split("z_gal=")[1].split()[0])
                if kind == "passive":  # Ca H blends with Hε (3971 Å) at a galaxy's velocity dispersion
                    features, sign = (CA_K * (1 + z_gal),), -1
                else:
                    features, sign = (NEBULAR_LINES["OIII_5008"] * (1 + z_gal),), 1
            for centre in features:
                if not BRZ_WAVE[0] + 10 < centre < BRZ_WAVE[-1] - 10:
                    continue
                near = np.abs(BRZ_WAVE - centre) < 8.0
                extreme = BRZ_WAVE[near][np.argmax(sign * effect.added[row, near])]
                assert abs(extreme - centre) < 1.7, (kind, detail, centre, extreme)


def test_troughs_dust_and_redshift_land_in_the_rest_frame() -> None:
    z = 2.0
    spectra, _ = synthetic_hosts(n=20, z=z)
    hosts = Hosts(spectra)
    for kind in ("hibal", "lobal"):
        effect = effect_of(kind, hosts, 1.0, np.random.default_rng(5))
        for row, detail in enumerate(effect.detail):
            v = float(detail.split("v_kms=")[1].split()[0])
            depth = float(detail.split("depth=")[1].split()[0])
            deepest_civ = np.argmin(np.abs(outflow_velocity(BRZ_WAVE / (1 + z), CIV) - v))
            assert effect.transmission[row, deepest_civ] <= 1.0 - depth + 0.02
        mgii = np.abs(outflow_velocity(BRZ_WAVE / (1 + z), MGII) - 10_000.0) < 15_000.0
        assert (effect.transmission[:, mgii].min(axis=1) < 0.9).all() == (kind == "lobal")
    dust = effect_of("reddened", hosts, 1.0, np.random.default_rng(6)).transmission
    assert (np.diff(dust, axis=1) >= 0).all() and (dust[:, 0] / dust[:, -1] < 0.3).all()  # E(B−V) 0.3
    r_band = (BRZ_WAVE >= 5600) & (BRZ_WAVE <= 7500)
    np.testing.assert_allclose(dust[:, r_band].mean(axis=1), 1.0, rtol=0.05)  # the quasar keeps its magnitude
    wrong, effect = inject("wrong_z", spectra, 1.0, np.random.default_rng(7))
    np.testing.assert_array_equal(wrong.flux, spectra.flux)
    factor = np.abs((1 + wrong.z) / (1 + z) - 1)
    np.testing.assert_allclose(factor, 0.3)


def test_weak_and_extreme_lines_scale_the_line_flux() -> None:
    """The lines' flux above the true continuum falls to 10^−s and grows to 4^s of the host's, at s = 1."""
    z = 1.8
    spectra, signal = synthetic_hosts(n=12, z=z, snr=30.0)
    cont = 2.0 * (BRZ_WAVE / 5000.0) ** -1.5
    window = np.abs(outflow_velocity(BRZ_WAVE / (1 + z), CIV)) < 6000.0
    before = (signal[:, window] - cont[window]).sum(axis=1)
    for kind, factor in (("weak_line", 0.1), ("extreme_lines", 4.0)):
        out, _ = inject(kind, spectra, 1.0, np.random.default_rng(8))
        after = (out.flux[:, window] - cont[window]).sum(axis=1)
        np.testing.assert_allclose(np.median(after / before), factor, rtol=0.12, err_msg=kind)


def test_line_model_follows_a_real_quasar() -> None:
    """On the brightest real test quasar the continuum + broad-line model leaves residuals at the noise."""
    real = real_quasars()
    row = int(np.argmax(np.median(real.flux * np.sqrt(real.ivar), axis=1)))
    flux, ivar = real.flux[row : row + 1].astype(float), real.ivar[row : row + 1].astype(float)
    cont, lines, names = continuum_and_lines(flux, ivar, BRZ_WAVE, real.z[row : row + 1])
    assert {"civ", "ciii", "siiv"} <= set(names[0])
    civ = np.abs(outflow_velocity(BRZ_WAVE / (1 + real.z[row]), CIV)) < 5000.0
    civ &= ivar[0] > 0
    reduced = np.mean((flux[0, civ] - cont[0, civ] - lines[0, civ]) ** 2 * ivar[0, civ])
    line_only = np.mean((flux[0, civ] - cont[0, civ]) ** 2 * ivar[0, civ])
    assert reduced < 3.0 < line_only


def test_injection_set_labels_and_real_host_draws() -> None:
    real = real_quasars()
    made = injection_set(real, draws=2, strengths=(0.5, 1.0), rng=np.random.default_rng(9))
    labels = made.labels
    assert labels.num_rows == len(made.spectra) == 7 * 2 * 2 * len(INJECTION_CLASSES)
    for cls in INJECTION_CLASSES:
        rows = np.asarray(labels["class"].to_pylist()) == cls
        assert sorted(set(labels["TARGETID"].to_numpy()[rows].tolist())) == sorted(real.targetid.tolist())
    z_host = labels["z_host"].to_numpy()
    changed = np.asarray(labels["class"].to_pylist()) == "wrong_z"
    assert (labels["z"].to_numpy()[~changed] == z_host[~changed]).all()
    assert (labels["z"].to_numpy()[changed] != z_host[changed]).all()
    sample = injection_set(real, per_class=5, rng=np.random.default_rng(10))
    assert sample.labels.num_rows == 5 * len(INJECTION_CLASSES)
