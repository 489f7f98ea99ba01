"""The validation report: self-contained, faithful to the metrics, deterministic, optional parts optional."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from qad_assets.science.spectra.rest_frame import EMISSION_LINES, REST_GRID
from qad_assets.science.validation.evaluation import METHODS
from qad_assets.science.validation.report import Gallery, ReportFiles, write_report
from qad_assets.science.validation.report.figures import GALLERY_MAX, region_window

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["bal_trough", "line_boost", "continuum_tilt"]


def _block(rng: np.random.Generator) -> dict:
    """A metrics block of the injection shape with distinct, 3-decimal numbers."""

    def by_method() -> dict:
        return {
            m: {
                k: round(float(v), 3)
                for k, v in zip(["auroc", "auprc", "recall_top1pct"], rng.uniform(0.1, 0.99, 3), strict=True)
            }
            for m in METHODS
        }

    return {
        "overall": by_method(),
        "per_class": {c: by_method() for c in CLASSES},
        "per_snr_bin": {label: by_method() for label in ["<2", "2–5", "≥5"]},
        "per_z_bin": {label: by_method() for label in ["0.5–1.5", "1.5–2.5", "2.5–4"]},
    }


def make_metrics(full: bool = True) -> dict:
    rng = np.random.default_rng(1)
    metrics = {
        "release": "demo",
        "model_version": "vae-3",
        "n_scored": 400,
        "n_heldout_normal": 120,
        "injection": _block(rng),
        "snr_spearman_normals": {"vae": -0.041, "pca_chi2": 0.52, "isolation_forest": 0.17},
    }
    if full:
        metrics["injection"]["per_component"] = {c: {"fit": 0.61, "trough": 0.93, "latent": 0.5} for c in CLASSES}
        metrics["real_injection"] = _real_block(rng)
        metrics["truth"] = _block(rng)
        metrics["seed_stability"] = {"top_fraction": 0.01, "jaccard": 0.812, "n_top": 4}
        metrics["crossmatch"] = {"catalog": "DR16Q BAL", "n_top": 12, "n_known": 5, "n_new": 7}
        metrics["checks"] = {
            "vae_beats_chance": {"passed": True, "detail": "AUROC 0.91 > 0.6"},
            "snr_independence": {"passed": False, "detail": "|ρ| 0.41 > 0.3"},
        }
    return metrics


def _real_block(rng: np.random.Generator) -> dict:
    """A real-spectra injection block: per class and strength, every method with its uncertainty."""

    def by_method(n: int) -> dict:
        return {
            m: {
                "auroc": round(float(rng.uniform(0.5, 1.0)), 3),
                "auroc_se": 0.08,
                "paired": round(float(rng.uniform(0.5, 1.0)), 3),
                "paired_se": 0.05,
                "n": n,
            }
            for m in METHODS
        }

    return {
        "n_hosts": 7,
        "n_injected": 63 * len(CLASSES),
        "draws": 3,
        "overall": by_method(63 * len(CLASSES)),
        "per_class": {c: by_method(63) for c in CLASSES},
        "per_strength": {f"s={s:g}": by_method(21 * len(CLASSES)) for s in (0.25, 0.5, 1.0)},
        "per_component": {c: {"fit": 0.7, "trough": 0.9} for c in CLASSES},
        "hosts": [
            {
                "TARGETID": 39633559467591522 + i,
                "z": 2.2,
                "snr": 3.5,
                "anomaly_score": 0.4,
                "p_value": 0.31,
                "top_component": "latent",
            }
            for i in range(7)
        ],
    }


def make_inputs(n: int = 400, k: int = GALLERY_MAX) -> dict:
    rng = np.random.default_rng(0)
    score = rng.lognormal(0.0, 1.0, n)
    rank = np.empty(n, np.int64)
    rank[np.argsort(-score)] = np.arange(1, n + 1)
    targetid = np.arange(39627000000000, 39627000000000 + n, dtype=np.int64)
    scores = pa.table(
        {
            "TARGETID": targetid,
            "Z": rng.uniform(0.5, 4.0, n),
            "snr": rng.lognormal(1.0, 0.6, n),
            "anomaly_score": score,
            "p_value": np.exp(-score),
            "rank": rank,
            "reduced_chi2": rng.uniform(0.8, 3, n),
            "kl": rng.uniform(0, 5, n),
            "latent_nll": rng.uniform(0, 5, n),
            "top_region": rng.choice(["CIV", "MgII", "lya_forest", "continuum", "CIII]"], n),
            "worst_arm": rng.choice(["b", "r", "z"], n),
            "model_version": ["vae-3"] * n,
        }
    )
    m = 600
    label = np.r_[np.zeros(200, np.int64), np.ones(m - 200, np.int64)]
    classes = np.r_[["normal"] * 200, rng.choice(CLASSES, m - 200)]
    injections = pa.table(
        {
            "TARGETID": np.arange(m, dtype=np.int64),
            "class": classes,
            "strength": np.where(label == 1, rng.uniform(0.2, 1.0, m), 0.0),
            "snr": rng.lognormal(1.0, 0.6, m),
            "z": rng.uniform(0.5, 4.0, m),
            "label": label,
            **{f"score_{meth}": rng.lognormal(label * (1.0 + i * 0.3), 1.0) for i, meth in enumerate(METHODS)},
        }
    )
    top = np.argsort(rank)[:k]
    wave = np.asarray(REST_GRID.wave)
    model = np.stack([_quasar(wave) for _ in range(k)])
    flux = model + rng.normal(0, 0.1, model.shape)
    ivar = np.full(model.shape, 100.0)
    for i, z in enumerate(scores["Z"].to_numpy()[top]):  # the observed window 3600–9824 Å, in the rest frame
        ivar[i, (wave < 3600 / (1 + z)) | (wave > 9824 / (1 + z))] = 0.0
    gallery = Gallery(
        wave=wave,
        flux=flux,
        ivar=ivar,
        model=model,
        targetid=targetid[top],
        z=scores["Z"].to_numpy()[top],
        anomaly_score=score[top],
        top_region=scores["top_region"].to_numpy(zero_copy_only=False)[top],
    )
    return {
        "release": "demo",
        "model_version": "vae-3",
        "scores": scores,
        "injections": injections,
        "gallery": gallery,
        "latent_2d": rng.normal(size=(n, 2)),
    }


def _quasar(wave: np.ndarray) -> np.ndarray:
    """A power law with Gaussian broad lines: enough structure to check the gallery by eye."""
    flux = (wave / 2000.0) ** -0.5
    for rest in EMISSION_LINES.values():
        flux += 0.8 * np.exp(-0.5 * ((wave - rest) / (0.01 * rest)) ** 2)
    return flux


def make_crossmatch(inputs: dict) -> pa.Table:
    targetid = inputs["gallery"].targetid
    return pa.table(
        {
            "TARGETID": targetid,
            "known": [i % 2 == 0 for i in range(len(targetid))],
            "catalog_name": ["J1234+5678" if i % 2 == 0 else None for i in range(len(targetid))],
            "BAL_PROB": [0.9 if i % 2 == 0 else None for i in range(len(targetid))],
        }
    )


class _Page(HTMLParser):
    """Tables (by id: rows of cell texts), <img> src, every src/href, and element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportFiles, dict, dict]:
    inputs, metrics = make_inputs(), make_metrics()
    given = copy.deepcopy(metrics)
    files = write_report(
        tmp_path_factory.mktemp("report"), metrics=metrics, crossmatch=make_crossmatch(inputs), **inputs
    )
    return files, given, inputs


def test_html_is_self_contained(full_report) -> None:
    files, _, _ = full_report
    page = _parse(files.html)
    assert not [link for link in page.links if not link.startswith("data:")]
    assert len(page.imgs) == len(files.figures) == 5
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert files.html.stat().st_size < 5e6


def test_tables_show_the_metrics(full_report) -> None:
    files, metrics, _ = full_report
    tables = _parse(files.html).tables
    overall = {row[0]: row[1:] for row in tables["injection-overall"][1:]}
    vae = metrics["injection"]["overall"]["vae"]
    assert overall["VAE"] == [f"{vae['auroc']:.3f}", f"{vae['auprc']:.3f}", f"{vae['recall_top1pct']:.3f}"]
    assert set(overall) == {"VAE", "PCA χ²", "Isolation forest"}
    for key in ("per-class", "per-snr-bin", "per-z-bin"):
        block = metrics["injection"][key.replace("-", "_")]
        rows = {row[0]: row[1:] for row in tables[f"injection-{key}"][2:]}
        assert list(rows) == list(block)
        name, by_method = next(iter(block.items()))
        # AUROC of the three methods first, side by side, then AUPRC, then recall@1%
        assert rows[name][:3] == [f"{by_method[m]['auroc']:.3f}" for m in METHODS]
        assert rows[name][5] == f"{by_method['isolation_forest']['auprc']:.3f}"
    truth = metrics["truth"]["overall"]["pca_chi2"]["auprc"]
    assert {row[0]: row[1:] for row in tables["truth-overall"][1:]}["PCA χ²"][1] == f"{truth:.3f}"
    assert tables["snr-spearman"][1] == ["VAE", "-0.041"]


def test_real_injection_and_components_are_shown(full_report) -> None:
    files, metrics, _ = full_report
    tables = _parse(files.html).tables
    real = metrics["real_injection"]
    rows = {row[0]: row[1:] for row in tables["real-injection"][1:]}
    assert list(rows) == ["overall", *real["per_class"], *real["per_strength"]]
    vae = real["per_class"][CLASSES[1]]["vae"]
    assert rows[CLASSES[1]][0] == str(vae["n"])
    assert rows[CLASSES[1]][1] == f"{vae['auroc']:.3f} ± {vae['auroc_se']:.2f}"
    assert rows[CLASSES[1]][-1] == f"{vae['paired']:.3f} ± {vae['paired_se']:.2f}"
    assert len(tables["real-hosts"]) == 1 + real["n_hosts"]
    components = tables["injection-components"]
    assert components[0] == ["class", "fit", "trough", "latent"] and components[1][2] == "0.930"
    assert "real-injection-components" in tables
    assert "Real DESI quasars (7 hosts" in files.summary_markdown


def test_best_method_per_row_is_highlighted(full_report) -> None:
    files, metrics, _ = full_report
    text = files.html.read_text(encoding="utf-8")
    by_method = metrics["injection"]["per_class"][CLASSES[0]]
    best = max(by_method[m]["auroc"] for m in METHODS)
    assert f"<td class='best'>{best:.3f}</td>" in text


def test_candidates_gallery_and_optional_sections(full_report) -> None:
    files, _, inputs = full_report
    page = _parse(files.html)
    candidates = page.tables["candidates"]
    assert candidates[0] == ["rank", "TARGETID", "z", "score", "p-value", "top region", "worst arm", "catalogue"]
    assert [row[0] for row in candidates[1:4]] == ["1", "2", "3"]
    shown = {int(row[1]) for row in candidates[1:]}
    assert {int(t) for t in inputs["gallery"].targetid} <= shown
    assert {row[-1] for row in candidates[1 : GALLERY_MAX + 1]} == {"known", "new"}
    assert {"fig-gallery", "fig-latent_map", "verdict", "seed-stability", "crossmatch-summary"} <= page.ids
    assert len(page.tables["crossmatch"]) == 1 + GALLERY_MAX // 2  # header + the known ones
    assert "1 of 2 checks failed" in files.html.read_text(encoding="utf-8")


def test_metrics_json_round_trips(full_report) -> None:
    files, metrics, _ = full_report
    written = json.loads(files.metrics_json.read_text())
    assert written.pop("figures") == [f"figures/{name}.png" for name in files.figures]
    assert written == metrics
    for path in files.figures.values():
        assert path.read_bytes().startswith(PNG_MAGIC)
        assert path.parent == files.html.parent / "figures"


def test_summary_markdown(full_report) -> None:
    files, metrics, inputs = full_report
    summary = files.summary_markdown
    assert f"{metrics['injection']['overall']['vae']['auroc']:.3f}" in summary
    assert "| VAE |" in summary and "0.520" in summary and "Jaccard 0.812" in summary
    assert str(inputs["gallery"].targetid[0]) in summary


def test_output_is_deterministic_and_optional_parts_absent(tmp_path: Path) -> None:
    inputs, metrics = make_inputs(k=3), make_metrics(full=False)
    first = write_report(tmp_path / "a", metrics=metrics, **inputs)
    second = write_report(tmp_path / "b", metrics=metrics, **inputs)
    assert first.html.read_bytes() == second.html.read_bytes()
    assert first.metrics_json.read_bytes() == second.metrics_json.read_bytes()
    for name, path in first.figures.items():
        assert path.read_bytes() == second.figures[name].read_bytes()
    page = _parse(first.html)
    assert not {"verdict", "seed-stability", "crossmatch-summary"} & page.ids
    assert not {"crossmatch", "truth-overall", "real-injection", "injection-components"} & set(page.tables)
    assert "catalogue" not in page.tables["candidates"][0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_gallery_shapes_are_checked() -> None:
    g = make_inputs(k=2)["gallery"]
    with pytest.raises(ValueError, match="Gallery.model"):
        Gallery(g.wave, g.flux, g.ivar, g.model[:, :-1], g.targetid, g.z, g.anomaly_score, g.top_region)


@pytest.mark.parametrize(
    ("name", "window"), [("CIV", (1500.0, 1600.0)), ("CIII]", (1850.0, 1970.0)), ("continuum", None)]
)
def test_region_window(name: str, window: tuple[float, float] | None) -> None:
    assert region_window(name) == window
