"""The explorer's HTTP API on a synthetic release: paging and filters, spectra, neighbours, labels (two
clients at once, restarts, bad input) and exports read back with astropy. A real uvicorn server on a
free loopback port, driven with ``requests``; seconds, no pipeline.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import requests
import uvicorn
from astropy.table import Table
from explorer_release import SyntheticRelease, write_release

from qad_assets.cli import build_parser
from qad_assets.errors import UserError
from qad_assets.explorer import app as app_module
from qad_assets.explorer import spectrum as spectrum_module
from qad_assets.explorer.app import STATIC, create_app, serve
from qad_assets.explorer.catalog import ReleaseCatalog, index_path
from qad_assets.labels.store import LabelStore
from qad_assets.labels.vocabulary import MAX_NOTE_CHARS
from qad_assets.science.model.package import WEIGHTS_FILE, current_package


@dataclass
class Server:
    url: str
    release: SyntheticRelease
    labels: LabelStore

    def api(self, path: str) -> str:
        return f"{self.url}/api/releases/{self.release.release}{path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRelease:
    return write_release(tmp_path_factory.mktemp("explorer"), partitions=3, rows=40)


def run_server(storage: Path) -> tuple[uvicorn.Server, threading.Thread, str, LabelStore]:
    labels = LabelStore.for_storage(storage)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(storage, labels), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the explorer did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}", labels


def stop_server(server: uvicorn.Server, thread: threading.Thread, labels: LabelStore) -> None:
    server.should_exit = True
    thread.join(timeout=30)
    labels.close()


@pytest.fixture(scope="module")
def explorer(synthetic: SyntheticRelease) -> Iterator[Server]:
    server, thread, url, labels = run_server(synthetic.storage)
    yield Server(url, synthetic, labels)
    stop_server(server, thread, labels)


def get(url: str, **params) -> dict:
    response = requests.get(url, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def post_label(server: Server, session: requests.Session | None = None, **body) -> requests.Response:
    return (session or requests).post(server.api("/labels"), json=body, timeout=30)


def test_the_table_pages_sorts_and_filters_on_the_server(explorer: Server) -> None:
    everything = get(explorer.api("/candidates"), sort="anomaly_score", descending="true", limit=500)
    assert everything["total"] == 120 and len(everything["rows"]) == 120
    scores = [row["anomaly_score"] for row in everything["rows"]]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(row["TARGETID"], str) for row in everything["rows"])  # > 2**53: strings for JS
    first = get(explorer.api("/candidates"), sort="anomaly_score", descending="true", limit=25)
    second = get(explorer.api("/candidates"), sort="anomaly_score", descending="true", limit=25, offset=25)
    assert first["rows"] + second["rows"] == everything["rows"][:50]
    by_rank = get(explorer.api("/candidates"), limit=10)["rows"]
    assert [row["rank"] for row in by_rank] == list(range(1, 11))

    rows = get(explorer.api("/candidates"), score_min=1.0, z_min=1.0, z_max=3.0, limit=500)["rows"]
    assert rows and all(r["anomaly_score"] >= 1.0 and 1.0 <= r["Z"] <= 3.0 for r in rows)
    bal = get(explorer.api("/candidates"), bal="true", limit=500)["rows"]
    assert {r["TARGETID"] for r in bal} <= {str(t) for t in explorer.release.groups["troughs"]}
    assert bal and all(r["civ_bi"] > 0 for r in bal)
    spikes = get(explorer.api("/candidates"), component="spikes", limit=500)["rows"]
    assert spikes and all(r["top_component"] == "spikes" for r in spikes)
    civ = get(explorer.api("/candidates"), region="civ", limit=500)
    assert civ["total"] == len(explorer.release.groups["troughs"])
    assert get(explorer.api(""))["options"]["top_component"] == ["fit", "spikes"]


def test_a_candidate_its_spectrum_and_its_neighbours(explorer: Server) -> None:
    targetid = int(get(explorer.api("/candidates"), bal="true", limit=1)["rows"][0]["TARGETID"])  # C IV observed
    detail = get(explorer.api(f"/candidates/{targetid}"))
    assert detail["candidate"]["TARGETID"] == str(targetid)
    assert detail["legacy_viewer"].startswith("https://www.legacysurvey.org/viewer?ra=")
    assert len(detail["neighbours"]) == 8
    distances = [n["distance"] for n in detail["neighbours"]]
    assert distances == sorted(distances) and str(targetid) not in {n["TARGETID"] for n in detail["neighbours"]}
    troughs = {str(t) for t in explorer.release.groups["troughs"]}
    assert sum(n["TARGETID"] in troughs for n in detail["neighbours"]) >= 6  # more like this: more troughs

    rest = get(explorer.api(f"/candidates/{targetid}/spectrum"), frame="rest")
    observed = get(explorer.api(f"/candidates/{targetid}/spectrum"), frame="observed", smooth=5)
    z = detail["candidate"]["Z"]
    assert np.allclose(np.array(observed["spectrum"]["wave"]), np.array(rest["spectrum"]["wave"]) * (1 + z), rtol=1e-5)
    assert len(rest["spectrum"]["flux"]) == len(rest["spectrum"]["model"]) == len(rest["spectrum"]["residual"])
    assert any(v is not None for v in rest["spectrum"]["model"])  # the release's model reconstructed it
    assert "CIV" in rest["lines"]["name"] and rest["region"]["x0"] == [1500.0]
    assert "model v1" in rest["title"]
    layout = get(f"{explorer.url}/api/plot-layout")
    assert {"spectrum", "lines", "sky", "region", "x_range", "y_range", "title"} <= set(str(layout).split("'"))


def test_the_page_and_bokehjs_are_served_locally(explorer: Server) -> None:
    page = requests.get(explorer.url, timeout=30).text
    assert "/bokeh/static/js/bokeh.min.js" in page and "cdn.bokeh.org" not in page and "https://" not in page
    assert requests.get(f"{explorer.url}/bokeh/static/js/bokeh.min.js", timeout=30).status_code == 200
    assert requests.get(f"{explorer.url}/static/explorer.js", timeout=30).status_code == 200


def test_labels_keep_their_history_and_a_stale_relabel_is_refused(explorer: Server) -> None:
    targetid = str(explorer.release.targetids[3])
    created = post_label(explorer, targetid=targetid, label="bal", note="trough at 1450 Å", author="ann")
    assert created.status_code == 201 and created.json()["revision"] == 1
    stale = post_label(explorer, targetid=targetid, label="star", author="bob")  # bob saw no label
    assert stale.status_code == 409 and stale.json()["current"]["author"] == "ann"
    replaced = post_label(explorer, targetid=targetid, label="star", author="bob", replaces=1)
    assert replaced.status_code == 201
    history = get(explorer.api(f"/labels/{targetid}"))["history"]
    assert [(e["label"], e["author"]) for e in history] == [("bal", "ann"), ("star", "bob")]
    row = get(explorer.api("/candidates"), labelled="true", limit=500)["rows"]
    assert [(r["TARGETID"], r["label"]) for r in row if r["TARGETID"] == targetid] == [(targetid, "star")]
    unlabelled = get(explorer.api("/candidates"), labelled="false", limit=500)["rows"]
    assert targetid not in {r["TARGETID"] for r in unlabelled}


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/labels", {"targetid": "123", "label": "bal", "author": "ann"}, 404, "no scored spectrum with TARGETID 123"),
        ("/labels", {"label": "supernova", "author": "ann"}, 422, "not in the vocabulary"),
        ("/labels", {"label": "bal", "author": "ann", "note": "x" * (MAX_NOTE_CHARS + 1)}, 422, "note"),
        ("/labels", {"label": "bal", "author": ""}, 422, "author"),
        ("/labels", {"label": "bal", "author": "ann", "colour": "red"}, 422, "colour"),
        ("/labels", {"targetid": "-4", "label": "bal", "author": "ann"}, 422, "targetid"),
        ("/labels", {"label": "bal", "author": "x\u0000y"}, 422, "author may not hold a control character"),
        ("/labels", {"label": "bal", "author": "ann", "note": "a\u0000b<script>alert(1)</script>"}, 422, "U+0000"),
        ("/labels", {"label": "bal", "author": "\ud800"}, 422, "not valid Unicode text: it holds a lone surrogate"),
        ("/labels", {"targetid": 39627800000000000.0, "label": "bal", "author": "ann"}, 422, "valid integer"),
    ],
)
def test_bad_labels_get_a_4xx_and_change_nothing(
    explorer: Server, path: str, body: dict, status: int, detail: str
) -> None:
    before = explorer.labels.count_events()
    body = {"targetid": str(explorer.release.targetids[0]), **body}
    response = requests.post(explorer.api(path), json=body, timeout=30)
    assert response.status_code == status, response.text
    assert detail in response.text
    assert explorer.labels.count_events() == before


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"targetid": TID.5, "label": "bal", "author": "ann"}', "valid integer"),  # rounds to a neighbour
        ('{"targetid": TID.0, "label": "bal", "author": "ann"}', "valid integer"),
        ('{"targetid": "TID.0", "label": "bal", "author": "ann"}', "valid integer"),
        ('{"label": "bal", "author": "\\ud800"}', "targetid"),  # the error echoes the body, surrogate and all
    ],
)
def test_float_targetids_and_lone_surrogates_get_a_422_and_change_nothing(
    explorer: Server, body: str, detail: str
) -> None:
    before = explorer.labels.count_events()
    raw = body.replace("TID", str(explorer.release.targetids[1]))
    response = requests.post(
        explorer.api("/labels"), data=raw.encode(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 422, response.text
    assert detail in response.text and isinstance(response.json()["detail"], list)
    assert explorer.labels.count_events() == before


def test_the_page_inserts_no_text_as_html() -> None:
    """Authors and notes are whatever people typed: the page sets text, never markup."""
    script = (STATIC / "explorer.js").read_text()
    assert not [sink for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write") if sink in script]


def test_a_changed_model_package_draws_spectra_without_a_model_and_says_why(
    synthetic: SyntheticRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = tmp_path / "copy"
    shutil.copytree(synthetic.storage, storage, symlinks=True, ignore=shutil.ignore_patterns("labels", "explorer"))
    package = current_package(storage / "vae_model" / synthetic.release)
    (package / WEIGHTS_FILE).write_bytes(b"\x00\x01\x02\x03")
    loads: list[Path] = []  # each attempt to load the release's model starts by finding its package
    real = spectrum_module.current_package
    monkeypatch.setattr(spectrum_module, "current_package", lambda folder: loads.append(folder) or real(folder))
    server, thread, url, labels = run_server(storage)
    targetid = synthetic.targetids[0]
    try:
        for _ in range(2):
            response = requests.get(
                f"{url}/api/releases/{synthetic.release}/candidates/{targetid}/spectrum", timeout=30
            )
            assert response.status_code == 200, response.text
            data = response.json()
            assert "no model: model package v1 changed since it was registered" in data["title"]
            assert data["no_model"] == "model package v1 changed since it was registered"
            assert all(v is None for v in data["spectrum"]["model"]) and any(data["spectrum"]["flux"])
    finally:
        stop_server(server, thread, labels)
    assert len(loads) == 1  # the verdict is kept, not recomputed per spectrum


def test_unknown_releases_targetids_and_columns_get_a_4xx(explorer: Server) -> None:
    before = explorer.labels.count_events()
    missing = requests.get(f"{explorer.url}/api/releases/nosuch/candidates", timeout=30)
    assert missing.status_code == 404 and "no scored release 'nosuch'" in missing.json()["detail"]
    body = {"targetid": str(explorer.release.targetids[0]), "label": "bal", "author": "ann"}
    assert requests.post(f"{explorer.url}/api/releases/nosuch/labels", json=body, timeout=30).status_code == 404
    assert requests.get(f"{explorer.url}/api/releases/../etc/candidates", timeout=30).status_code == 404
    assert requests.get(explorer.api("/candidates/5"), timeout=30).status_code == 404
    assert requests.get(explorer.api("/candidates/5/spectrum"), timeout=30).status_code == 404
    assert requests.get(explorer.api("/candidates"), params={"sort": "flux"}, timeout=30).status_code == 422
    assert requests.get(explorer.api("/candidates"), params={"limit": 100000}, timeout=30).status_code == 422
    assert requests.get(explorer.api("/export"), params={"format": "xls"}, timeout=30).status_code == 422
    assert explorer.labels.count_events() == before


def test_qad_explore_refuses_an_unknown_release_before_opening_the_label_database(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--release nosuch: no scored release of that name"):
        serve(tmp_path, host="127.0.0.1", port=free_port(), release="nosuch", labels_url=None)
    assert not (tmp_path / "labels").exists()


def test_qad_explore_refuses_a_storage_root_without_a_scored_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module.uvicorn, "run", lambda *a, **kw: pytest.fail("the explorer was started"))
    missing = tmp_path / "nonexistent"
    args = build_parser().parse_args(["explore", "--storage", str(missing), "--port", str(free_port())])
    with pytest.raises(UserError, match=r"nonexistent: no scored release there .*run `qad demo` or `qad run`"):
        args.func(args)
    assert not missing.exists()


def test_two_labellers_at_once_lose_nothing_and_a_restart_keeps_every_label(synthetic: SyntheticRelease) -> None:
    storage = synthetic.storage
    server, thread, url, labels = run_server(storage)
    api = f"{url}/api/releases/{synthetic.release}/labels"
    targets = [str(t) for t in synthetic.targetids[60:90]]
    saved: list[tuple[str, str]] = []
    start = threading.Barrier(2)  # both clients begin together and race for the same targets

    def labeller(name: str, code: str) -> None:
        with requests.Session() as session:
            start.wait()
            for targetid in targets:
                current = session.get(f"{api}/{targetid}", timeout=30).json()["history"]
                replaces = current[-1]["revision"] if current else 0
                while True:
                    body = {"targetid": targetid, "label": code, "author": name, "replaces": replaces}
                    response = session.post(api, json=body, timeout=30)
                    if response.status_code == 201:
                        saved.append((name, targetid))
                        break
                    assert response.status_code == 409, response.text
                    replaces = response.json()["current"]["revision"]

    try:
        clients = [threading.Thread(target=labeller, args=a) for a in (("ann", "bal"), ("bob", "normal"))]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        assert len(saved) == 60
    finally:
        stop_server(server, thread, labels)
    server, thread, url, labels = run_server(storage)  # a restart: a new process would see the same
    try:
        for targetid in targets:
            history = requests.get(f"{url}/api/releases/{synthetic.release}/labels/{targetid}", timeout=30).json()
            assert sorted(e["author"] for e in history["history"]) == ["ann", "bob"]
            assert [e["revision"] for e in history["history"]] == [1, 2]
    finally:
        stop_server(server, thread, labels)


@pytest.mark.parametrize(("fmt", "astropy_format"), [("csv", "ascii.csv"), ("fits", "fits"), ("votable", "votable")])
def test_exports_read_back_with_astropy(explorer: Server, fmt: str, astropy_format: str) -> None:
    targetid = str(explorer.release.targetids[5])
    post_label(explorer, targetid=targetid, label="other_interesting", note="double-peaked Hβ", author="ann")
    view = requests.get(explorer.api("/export"), params={"format": fmt, "score_min": 0.5}, timeout=30)
    assert view.status_code == 200
    assert f"qad-{explorer.release.release}-view." in view.headers["content-disposition"]
    table = Table.read(io.BytesIO(view.content), format=astropy_format)
    expected = get(explorer.api("/candidates"), score_min=0.5, limit=1)["total"]
    assert len(table) == expected and min(table["anomaly_score"]) >= 0.5
    assert {"TARGETID", "RA", "DEC", "Z", "anomaly_score", "p_value", "label", "note", "legacy_viewer"} <= set(
        table.colnames
    )
    labelled = requests.get(explorer.api("/export"), params={"format": fmt, "scope": "labelled"}, timeout=30)
    table = Table.read(io.BytesIO(labelled.content), format=astropy_format)
    rows = {
        str(t): (str(lab), str(note))
        for t, lab, note in zip(table["TARGETID"], table["label"], table["note"], strict=True)
    }
    assert rows[targetid][0] == "other_interesting"
    assert rows[targetid][1] == ("double-peaked H?" if fmt == "fits" else "double-peaked Hβ")
    if fmt != "csv":
        assert str(table["RA"].unit) == "deg"
    if fmt == "votable":
        from astropy.io.votable import parse

        fields = {f.name: f.ucd for f in parse(io.BytesIO(labelled.content)).get_first_table().fields}
        assert fields["RA"] == "pos.eq.ra;meta.main" and fields["TARGETID"] == "meta.id;meta.main"


def test_the_index_is_cached_and_rebuilt_when_the_release_is_rescored(tmp_path: Path) -> None:
    synthetic = write_release(tmp_path, partitions=2, rows=20)
    first = ReleaseCatalog.open(tmp_path, synthetic.release)
    assert index_path(tmp_path, synthetic.release).exists()
    again = ReleaseCatalog.open(tmp_path, synthetic.release)
    assert again.fingerprint == first.fingerprint and again.frame.equals(first.frame)
    score_file = sorted((tmp_path / "anomaly_scores" / synthetic.release).glob("*.parquet"))[0]
    rescored = pl.read_parquet(score_file).with_columns(pl.col("anomaly_score") + 100.0)
    rescored.write_parquet(score_file)
    os.utime(score_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = ReleaseCatalog.open(tmp_path, synthetic.release)
    assert after.fingerprint != first.fingerprint
    assert after.frame["anomaly_score"].max() > 100.0


def test_rerank_now_learns_from_the_labels(synthetic: SyntheticRelease, tmp_path: Path) -> None:
    storage = tmp_path / "copy"
    shutil.copytree(synthetic.storage, storage, symlinks=True, ignore=shutil.ignore_patterns("labels", "explorer"))
    server, thread, url, labels = run_server(storage)
    api = f"{url}/api/releases/{synthetic.release}"
    try:
        troughs = [str(t) for t in synthetic.groups["troughs"]]
        for targetid in troughs[:8]:
            assert post_label(Server(url, synthetic, labels), targetid=targetid, label="bal", author="ann").ok
        result = requests.post(f"{api}/rerank", timeout=60).json()
        assert result == {"labels": 8, "candidates": 120, "seconds": result["seconds"]}
        queue = get(f"{api}/candidates", sort="priority_rank", limit=500)["rows"]
        assert [r["priority_rank"] for r in queue[: len(queue) - 8]] == list(range(1, len(queue) - 7))
        assert all(r["priority_rank"] is None for r in queue[-8:]) and {r["label"] for r in queue[-8:]} == {"bal"}
        head = {r["TARGETID"] for r in queue[:12]}
        assert len(head & set(troughs[8:])) >= 8  # the other troughs come first
    finally:
        stop_server(server, thread, labels)
