"""Anomaly scores, their calibration and explanations, the baselines, injections and metrics.

End to end on a small demo release (3 pixels × 300 rows, ~600 kept quasars): ``write_demo_release`` →
``read_spectra_file`` → ``normalized_table`` → a small VAE trained for a few epochs → scorer and
baselines. Rows split three ways by TARGETID hash: the model trains on hash ≥ 0.3; the scorer
calibrates on hash < 0.15 (and on the training rows, for those); hash 0.15–0.3 is a *test band* that
neither saw, on which p-values must be uniform. Injections go into the held-out normals' observed
spectra (their ``raw_spectra`` rows) and into the real DESI quasars of ``tests/data``, and are normalized
as the pipeline does. Measured figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import kstest

from qad_assets.demo import read_demo_spectra
from qad_assets.demo.absorbers import hi_optical_depth
from qad_assets.demo.release import DemoRelease
from qad_assets.science.io.spectra_file import read_spectra_file
from qad_assets.science.model.scoring import Scorer, fit_scorer, score_spectra
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.training import TrainOptions, train_vae
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig
from qad_assets.science.spectra.arms import BRZ_WAVE, arm_index
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.features import pixels
from qad_assets.science.spectra.rest_frame import REGION_NAMES, REST_GRID
from qad_assets.science.validation.baselines import IsolationForestBaseline, PcaBaseline
from qad_assets.science.validation.evaluation import (
    detection_metrics,
    metrics_by,
    metrics_report,
    spearman,
    top_jaccard,
)
from qad_assets.science.validation.harness import real_injection_recovery, rest_frame
from qad_assets.science.validation.injection import (
    INJECTION_CLASSES,
    Effect,
    Hosts,
    apply,
    arm_of,
    effect_of,
    eligible_hosts,
    injection_set,
)
from qad_assets.science.validation.real_quasars import real_quasars
from tests.conftest import DATA

MODEL_VAL_FRACTION = 0.3  # the model never sees hash < 0.3
SCORER_VAL_FRACTION = 0.15  # the scorer calibrates on hash < 0.15; 0.15–0.3 is the test band
OPTIONS = TrainOptions(
    seed=0, max_epochs=10, patience=4, batch_size=64, learning_rate=2e-3, val_fraction=MODEL_VAL_FRACTION
)
CONFIG = VaeConfig(latent_dim=8, hidden=(128, 64))
MAX_SNR_RHO = 0.2
OBVIOUS_AUROC = 0.75  # per injected class at strength 1, VAE
BASELINE_AUROC = 0.75  # all injected classes at strength 1 together, each baseline


@dataclass(frozen=True)
class Fitted:
    model: SpectrumVAE
    scorer: Scorer
    scores: dict[str, np.ndarray]  # of every row; the test band scored as unseen, the rest as the pipeline does
    test_band: np.ndarray  # rows neither the model nor the scorer saw


@pytest.fixture(scope="module")
def release(medium_demo: DemoRelease) -> Spectra:
    """The demo's kept quasars; column ``normal``: no anomaly injected by the demo generator."""
    spectra, classes = read_demo_spectra(medium_demo)
    return spectra.with_columns(normal=classes == "")


def normal(spectra: Spectra) -> np.ndarray:
    return spectra.columns["normal"]


@pytest.fixture(scope="module")
def fitted(release: Spectra) -> Fitted:
    model = train_vae(release, REST_GRID, CONFIG, OPTIONS).model
    in_model_val = select_rows(release.targetid, "val", MODEL_VAL_FRACTION)
    test_band = in_model_val & ~select_rows(release.targetid, "val", SCORER_VAL_FRACTION)
    scorer = fit_scorer(model, release[~test_band], val_fraction=SCORER_VAL_FRACTION, grid=REST_GRID)
    in_training = scorer.training_rows(release.targetid) & ~test_band
    scores = score_spectra(model, scorer, release, in_training=in_training)
    unseen = score_spectra(model, scorer, release)
    for key, value in scores.items():
        value[test_band] = unseen[key][test_band]
    return Fitted(model, scorer, scores, test_band)


@pytest.fixture(scope="module")
def observed_hosts(medium_demo: DemoRelease, release: Spectra) -> Spectra:
    """The held-out normal quasars' observed spectra (their ``raw_spectra`` rows)."""
    raw = pa.concat_tables(
        read_spectra_file(c, r, release=medium_demo.release).spectra
        for c, r in zip(medium_demo.coadd_paths, medium_demo.redrock_paths, strict=True)
    )
    observed = Spectra.from_table(raw, BRZ_WAVE)
    normals = release.targetid[normal(release)]
    return observed[select_rows(observed.targetid, "val", MODEL_VAL_FRACTION) & np.isin(observed.targetid, normals)]


@pytest.fixture(scope="module")
def injected(observed_hosts: Spectra) -> tuple[Spectra, pa.Table, Spectra]:
    """Every class at strengths 0.25, 0.5, 1 in held-out normal hosts' observed spectra, normalized as the
    pipeline does, and those hosts (normalized from the same observed rows)."""
    made = injection_set(observed_hosts, per_class=45, rng=np.random.default_rng(0))
    return rest_frame(made.spectra), made.labels, rest_frame(observed_hosts)


def test_scores_are_finite_and_p_values_in_range(release: Spectra, fitted: Fitted) -> None:
    scores = fitted.scores
    assert np.isfinite(scores["anomaly_score"]).all()
    assert scores["anomaly_score"].dtype == np.float64
    assert ((scores["p_value"] > 0) & (scores["p_value"] <= 1)).all()
    assert scores["latent_mean"].shape == (len(release.z), CONFIG.latent_dim)
    for key in ("reduced_chi2", "chi2", "kl", "latent_nll", "neg_elbo"):
        assert np.isfinite(scores[key]).all(), key
    assert set(scores["top_region"]) <= set(REGION_NAMES.values())
    assert set(scores["worst_arm"]) <= {"b", "r", "z"}
    assert ((scores["top_region_share"] >= 0) & (scores["top_region_share"] <= 1)).all()


def test_a_spectrum_without_observed_pixels_gets_no_score(release: Spectra, fitted: Fitted) -> None:
    """ivar = 0 everywhere (what a bad redshift once made): NaN score and p-value, no top component, however
    large its observed-frame spike pull; the others score as before."""
    few = release[np.arange(4)]
    ivar = few.ivar.copy()
    ivar[1] = 0.0
    spikes = np.array([0.0, 50.0, 0.0, 0.0])
    blind = replace(few, ivar=ivar, columns={**few.columns, "spike_pull": spikes})
    scores = score_spectra(fitted.model, fitted.scorer, blind)
    assert scores["n_obs"][1] == 0 and scores["top_component"][1] == ""
    assert np.isnan(scores["anomaly_score"][1]) and np.isnan(scores["p_value"][1])
    assert np.isfinite(np.delete(scores["anomaly_score"], 1)).all()


def test_p_values_uniform_on_unseen_normals(release: Spectra, fitted: Fitted) -> None:
    rows = fitted.test_band & normal(release)
    p = fitted.scores["p_value"][rows]
    ks = kstest(p, "uniform")
    print(
        f"\ntest-band normals: {rows.sum()}, KS D = {ks.statistic:.3f} (p = {ks.pvalue:.3f}), "
        f"median p {np.median(p):.2f}"
    )
    assert rows.sum() >= 40
    assert ks.pvalue > 0.01


def test_score_does_not_track_snr(release: Spectra, fitted: Fitted) -> None:
    normals = normal(release)
    rho = spearman(fitted.scores["anomaly_score"][normals], release.snr[normals])
    naive = spearman(fitted.scores["reduced_chi2"][normals], release.snr[normals])
    unseen = fitted.test_band & normals
    rho_unseen = spearman(fitted.scores["anomaly_score"][unseen], release.snr[unseen])
    print(
        f"\nSpearman ρ with S/N on {normals.sum()} normals: anomaly_score {rho:+.3f}, reduced χ² {naive:+.3f}; "
        f"on the {unseen.sum()} unseen ones {rho_unseen:+.3f}"
    )
    assert abs(rho) <= MAX_SNR_RHO


def test_injected_anomalies_score_higher(fitted: Fitted, injected: tuple[Spectra, pa.Table, Spectra]) -> None:
    spectra, labels, hosts = injected
    score = score_spectra(fitted.model, fitted.scorer, spectra)
    host_score = score_spectra(fitted.model, fitted.scorer, hosts)
    classes, strengths = np.asarray(labels["class"].to_pylist()), labels["strength"].to_numpy()
    auroc = {}
    for cls in INJECTION_CLASSES:
        row = {}
        for s in (0.25, 0.5, 1.0):
            mine = score["anomaly_score"][(classes == cls) & (strengths == s)]
            labels_ = np.r_[np.ones(mine.size, bool), np.zeros(len(hosts.z), bool)]
            row[s] = detection_metrics(labels_, np.r_[mine, host_score["anomaly_score"]])["auroc"]
        auroc[cls] = row
        print(f"\n{cls:22s} AUROC " + " ".join(f"s={s:g}: {a:.3f}" for s, a in row.items()), end="")
    print()
    assert all(row[1.0] >= OBVIOUS_AUROC for row in auroc.values()), auroc


def _civ_trough(flux: np.ndarray, ivar: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 90 % deep trough over 1505–1540 Å (≈ 2000–8500 km/s outflow of C IV), noise kept at the host's."""
    hosts = Hosts(Spectra(REST_GRID.wave, flux, ivar, np.zeros(len(flux), np.int64), np.zeros(len(flux))))
    transmission = np.ones(flux.shape)
    transmission[:, pixels(REST_GRID, 1505.0, 1540.0)] = 0.1
    out = apply(hosts, replace(hosts.none(), transmission=transmission), rng)
    return out.flux, out.ivar


def test_explanations_on_constructed_cases(release: Spectra, fitted: Fitted) -> None:
    civ = pixels(REST_GRID, 1450.0, 1700.0)
    covered = (release.ivar[:, civ] > 0).all(axis=1) & normal(release)
    hosts = release[np.flatnonzero(covered)[np.argsort(-release.snr[covered])[:5]]]
    rng = np.random.default_rng(1)
    flux, ivar = _civ_trough(hosts.flux, hosts.ivar, rng)
    out = score_spectra(
        fitted.model, fitted.scorer, replace(hosts, flux=flux.astype(np.float32), ivar=ivar.astype(np.float32))
    )
    print(f"\nC IV trough: top_region {out['top_region'].tolist()}, share {np.round(out['top_region_share'], 2)}")
    assert (out["top_region"] == "civ").all()

    arms = arm_index(REST_GRID, release.z)
    all_arms = np.stack([((arms == k) & (release.ivar > 0)).sum(axis=1) > 200 for k in range(3)]).all(axis=0)
    hosts = release[np.flatnonzero(all_arms & normal(release))[:5]]
    jump = np.where(arm_index(REST_GRID, hosts.z) == 1, 1.5, 1.0).astype(np.float32)
    out = score_spectra(fitted.model, fitted.scorer, replace(hosts, flux=hosts.flux * jump, ivar=hosts.ivar / jump**2))
    print(f"R-arm ×1.5: worst_arm {out['worst_arm'].tolist()}")
    assert (out["worst_arm"] == "r").all()


def test_scorer_round_trips(release: Spectra, fitted: Fitted, tmp_path: Path) -> None:
    first = release[:200]
    in_training = fitted.scorer.training_rows(first.targetid)
    expected = score_spectra(fitted.model, fitted.scorer, first, in_training=in_training, batch_size=64)
    from_json = Scorer.from_dict(json.loads(json.dumps(fitted.scorer.to_dict())))
    from_file = Scorer.load(fitted.scorer.save(tmp_path / "scorer.json"))
    for scorer in (from_json, from_file):
        again = score_spectra(fitted.model, scorer, first, in_training=in_training, batch_size=64)
        for key in ("anomaly_score", "p_value", "latent_nll", "top_region", "worst_arm"):
            np.testing.assert_array_equal(again[key], expected[key], err_msg=key)


def test_baselines_are_finite_and_find_obvious_injections(
    release: Spectra, injected: tuple[Spectra, pa.Table, Spectra]
) -> None:
    pca = PcaBaseline(REST_GRID, n_components=6, n_iter=8).fit(release, val_fraction=MODEL_VAL_FRACTION)
    forest = IsolationForestBaseline(pca, n_estimators=100).fit(release, val_fraction=MODEL_VAL_FRACTION)
    spectra, labels, hosts = injected
    obvious = labels["strength"].to_numpy() == 1.0
    both = Spectra.concat([spectra[obvious], hosts])
    is_injected = np.arange(len(both)) < obvious.sum()
    for baseline in (pca, forest):
        on_release = baseline.score(release)
        assert on_release.dtype == np.float64 and np.isfinite(on_release).all()
        auroc = detection_metrics(is_injected, baseline.score(both))["auroc"]
        print(f"\n{type(baseline).__name__}: AUROC of strength-1 injections {auroc:.3f}", end="")
        assert auroc >= BASELINE_AUROC


def test_real_spectra_harness_end_to_end(release: Spectra, fitted: Fitted) -> None:
    """The real DESI quasars of tests/data are the packaged hosts; every class goes into each and is scored."""
    picca = DATA / "desi" / "picca"
    tables = [
        read_spectra_file(picca / coadd, None, release="fuji", qso_catalog=picca / catalogue).spectra
        for coadd, catalogue in (
            ("coadd-sv3-dark-9144.fits", "QSO_cat_fuji_dark_healpix.fits.gz"),
            ("coadd-1-80693-thru20210204.fits", "QSO_cat_fuji_dark_tile.fits.gz"),
        )
    ]
    from_tests = Spectra.from_table(pa.concat_tables(tables), BRZ_WAVE)
    packaged = real_quasars()
    np.testing.assert_array_equal(packaged.targetid, from_tests.targetid)
    np.testing.assert_array_equal(packaged.flux, from_tests.flux)
    np.testing.assert_array_equal(packaged.ivar, from_tests.ivar)
    np.testing.assert_array_equal(packaged.z, from_tests.z)
    pca = PcaBaseline(REST_GRID, n_components=4, n_iter=4).fit(release, val_fraction=MODEL_VAL_FRACTION)
    forest = IsolationForestBaseline(pca, n_estimators=50).fit(release, val_fraction=MODEL_VAL_FRACTION)
    out = real_injection_recovery(fitted.model, fitted.scorer, (pca, forest), draws=1, seed=0)
    metrics = out.metrics
    assert metrics["n_hosts"] == 7 and metrics["n_injected"] == 7 * 3 * len(INJECTION_CLASSES)
    assert set(metrics["per_class"]) == set(INJECTION_CLASSES)
    assert [h["TARGETID"] for h in metrics["hosts"]] == packaged.targetid.tolist()
    for cls, block in metrics["per_class"].items():
        vae = block["vae"]
        assert vae["n"] == 21 and 0 <= vae["auroc"] <= 1 and vae["auroc_se"] >= 0 and 0 <= vae["paired"] <= 1, cls
        print(f"\nreal hosts, {cls:14s} VAE AUROC {vae['auroc']:.2f} ± {vae['auroc_se']:.2f}", end="")
    assert out.table.num_rows == 7 * 3 * len(INJECTION_CLASSES) + 7
    assert np.isfinite(out.table["score_vae"].to_numpy()).all()


def test_metrics() -> None:
    labels = np.array([True, True, False, False, False, False])
    perfect = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.0])
    assert detection_metrics(labels, perfect) == {"auroc": 1.0, "auprc": 1.0, "recall_top1pct": 0.5}
    assert np.isnan(detection_metrics(np.zeros(4, bool), np.arange(4.0))["auroc"])
    groups = np.array(["bal", "wrong_redshift", "", "", "", ""])
    by = metrics_by(groups, labels, {"vae": perfect, "pca_chi2": -perfect})
    assert set(by) == {"bal", "wrong_redshift"} and by["bal"]["vae"]["auroc"] == 1.0
    assert by["bal"]["pca_chi2"]["auroc"] == 0.0
    report = metrics_report(labels, groups, np.arange(6.0), np.full(6, 2.5), {"vae": perfect})
    assert set(report) == {"overall", "per_class", "per_snr_bin", "per_z_bin"}
    assert top_jaccard(perfect, perfect, 0.34) == 1.0 and top_jaccard(perfect, -perfect, 0.34) == 0.0
    assert spearman(perfect, perfect) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# Each component on spectra where the answer is known
# --------------------------------------------------------------------------------------------------

KNOWN_ROWS = 24


def _changed(hosts: Spectra, change: Callable[[Hosts], Effect], seed: int = 0) -> Spectra:
    """The hosts with ``change`` applied (and its noise), normalized as the pipeline does."""
    h = Hosts(hosts)
    return rest_frame(apply(h, change(h), np.random.default_rng(seed)))


def _recipe(kind: str) -> Callable[[Hosts], Effect]:
    return lambda h: effect_of(kind, h, 1.0, np.random.default_rng(1))


def _arm_step(h: Hosts) -> Effect:
    """The r arm's flux calibration 25 % high."""
    effect = h.none()
    return replace(effect, calibration=np.where(arm_of(h.spectra.wave) == 1, 1.25, 1.0)[None, :] * effect.calibration)


def _spikes(h: Hosts) -> Effect:
    """Three one-pixel 25σ spikes per spectrum, none where a pixel lacks data."""
    effect = h.none()
    spikes = np.zeros_like(effect.spikes)
    rng = np.random.default_rng(2)
    for row in range(len(spikes)):
        good = np.flatnonzero(h.ivar[row] > 0)
        cols = rng.choice(good[20:-20], 3, replace=False)
        spikes[row, cols] = 25.0 / np.sqrt(h.ivar[row, cols])
    return replace(effect, spikes=spikes)


@pytest.mark.parametrize(
    ("name", "change", "component", "named_as", "quiet"),
    [
        ("weak lines (EW ÷ 10)", _recipe("weak_line"), "weak_lines", ("weak_lines",), "spikes"),
        ("extreme lines (EW × 4)", _recipe("extreme_lines"), "strong_lines", ("strong_lines",), "spikes"),
        ("HiBAL troughs", _recipe("hibal"), "trough", ("trough",), "spikes"),
        # dust bends the whole continuum: the broad-mismatch components see it as well as `colour`
        ("dust at the quasar", _recipe("reddened"), "colour", ("colour", "coherent", "fit"), "spikes"),
        ("r arm × 1.25", _arm_step, "arm_step", ("arm_step",), "weak_lines"),
        ("three 25σ spikes", _spikes, "spikes", ("spikes",), "trough"),
    ],
)
def test_component_sees_its_anomaly(
    observed_hosts: Spectra,
    fitted: Fitted,
    name: str,
    change: Callable[[Hosts], Effect],
    component: str,
    named_as: tuple[str, ...],
    quiet: str,
) -> None:
    """The component made for an anomaly scores it high (median z ≥ 3, ≥ 3σ above its hosts), the
    explanation names it (or, for dust, a broad-mismatch component) for most spectra, and an unrelated
    component does not rise."""
    kind = "hibal" if component == "trough" else "weak_line"
    hosts = observed_hosts[np.flatnonzero(eligible_hosts(kind, observed_hosts))[:KNOWN_ROWS]]
    before = score_spectra(fitted.model, fitted.scorer, rest_frame(hosts))
    after = score_spectra(fitted.model, fitted.scorer, _changed(hosts, change))
    z, z_host = after[f"z_{component}"], before[f"z_{component}"]
    named = np.mean(np.isin(after["top_component"], named_as))
    shift = np.nanmedian(after[f"z_{quiet}"] - before[f"z_{quiet}"])
    print(
        f"\n{name}: median z_{component} {np.nanmedian(z):.1f} (hosts {np.nanmedian(z_host):.1f}), "
        f"named in {named:.0%}, z_{quiet} moved {shift:+.2f}; score {np.median(after['anomaly_score']):.1f} "
        f"(hosts {np.median(before['anomaly_score']):.1f})"
    )
    assert np.nanmedian(z) >= 3.0 and np.nanmedian(z - z_host) >= 3.0
    assert named >= 0.5
    assert shift <= 1.0


def test_normal_quasar_behind_a_dla_is_not_anomalous(observed_hosts: Spectra, fitted: Fitted) -> None:
    """A damped Lyα system (log N_HI = 20.8) in the forest of a normal quasar is normal sight-line
    absorption: its score moves by well under 1σ and it is rarely in the top 1 %."""
    hosts = observed_hosts[np.flatnonzero(observed_hosts.z > 2.3)[:KNOWN_ROWS]]
    assert len(hosts) >= 10
    z_abs = (1.0 + hosts.z) * 1150.0 / 1215.67 - 1.0  # Lyα at 1150 Å in the quasar's frame

    def dla(h: Hosts) -> Effect:
        tau = hi_optical_depth(h.spectra.wave, z_abs, np.full(len(z_abs), 20.8))
        return replace(h.none(), transmission=np.exp(-tau))

    before = score_spectra(fitted.model, fitted.scorer, rest_frame(hosts))
    after = score_spectra(fitted.model, fitted.scorer, _changed(hosts, dla))
    moved = np.median(after["anomaly_score"] - before["anomaly_score"])
    flagged = np.mean(after["p_value"] < 0.01)
    print(f"\nDLA: median score change {moved:+.2f}, {flagged:.0%} at p < 0.01")
    assert moved < 0.5
    assert flagged <= 0.1
