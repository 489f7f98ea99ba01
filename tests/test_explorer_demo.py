"""The explorer and the re-ranking on a demo release scored by the pipeline, used as a person uses them.

A demo release rich in anomalies (8 pixels × 500 targets, 20 % of the quasar targets anomalous: ~60 per
class) goes through ``qad_spectra``, ``qad_train`` (20 epochs) and ``qad_score``, once for the module.
Then:

* a simulated inspection: 30 HiBALs labelled ``bal`` raise the recall of the other HiBALs in the top 100
  of the re-ranked queue over the plain score; 30 instrumental artefacts labelled ``artifact`` sink theirs
  (the figures are printed); the ``qad_rank`` job writes the ranking from the label database;
* headless Chromium (as tests/test_ui_browser.py drives it) opens the explorer, filters, opens a
  candidate and sees its spectrum drawn, labels it with a key, reloads and finds the label, opens a
  neighbour, and exports the labelled set as VOTable, read back with astropy. Screenshots land in
  ``tests/artifacts/``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import requests
import uvicorn
from astropy.table import Table
from conftest import skip_or_fail
from in_process_pipeline import in_process_pipeline, local_ray

from qad_assets.definitions import defs
from qad_assets.demo.release import write_demo_release
from qad_assets.demo.settings import DemoSettings
from qad_assets.explorer.app import create_app
from qad_assets.labels.store import LabelEvent, LabelStore
from qad_assets.labels.vocabulary import default_interest
from qad_assets.science.ranking.candidates import read_candidates
from qad_assets.science.ranking.inspection import simulate_inspection

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
UI_TIMEOUT_MS = 60_000
#: Half the default epochs: training is most of this module's time, and the validation loss has made most of
#: its descent by then (a small release may miss training's quality gate either way; the test needs a latent
#: space, not a champion).
TRAINING = {"ops": {"vae_model": {"config": {"max_epochs": 20}}}}


@dataclass(frozen=True)
class ScoredDemo:
    storage: Path
    truth: dict[int, str]  # TARGETID → injected anomaly class
    instance_home: Path


@pytest.fixture(scope="module")
def scored_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoredDemo]:
    root = tmp_path_factory.mktemp("explorer_demo")
    archive, storage = root / "archive", root / "storage"
    demo = write_demo_release(
        archive, n_pixels=8, targets_per_pixel=500, seed=3, settings=DemoSettings(anomaly_fraction=0.2)
    )
    with local_ray(), in_process_pipeline(demo.root, storage) as steps:
        steps.run("qad_spectra", tags=steps.all_spectra)
        steps.run("qad_train", partition_key="demo", run_config=TRAINING)
        steps.run("qad_score", tags=steps.all_spectra)
        truth = pl.read_parquet(demo.truth_path, columns=["TARGETID", "anomaly_class"])
        yield ScoredDemo(
            storage,
            {int(t): c for t, c in zip(truth["TARGETID"], truth["anomaly_class"], strict=True) if c},
            Path(steps.instance.root_directory),
        )


def test_labels_lift_their_kind_and_sink_artefacts(scored_demo: ScoredDemo, capsys: pytest.CaptureFixture) -> None:
    """30 HiBALs labelled bal: the other HiBALs' recall in the top 100 of the queue rises. 30 artefacts
    labelled artifact: the others sink (median place, recall in the top 300: other anomalies fill the
    first 100 of this anomaly-rich release, so there the artefacts have little to lose).
    """
    candidates = read_candidates(scored_demo.storage, "demo")
    interest = default_interest()
    bal = simulate_inspection(candidates, scored_demo.truth, "hibal", "bal", interest_of=interest)
    artefact = simulate_inspection(candidates, scored_demo.truth, "artifact", "artifact", interest_of=interest)
    with capsys.disabled():
        for result in (bal, artefact):
            recalls = ", ".join(
                f"top {k} {result.recall_plain[k]:.2f} → {result.recall_reranked[k]:.2f}" for k in result.recall_plain
            )
            print(
                f"\n{result.true_class} ×{result.labelled} labelled {result.label}: recall of the other "
                f"{result.remaining}: {recalls}; median place "
                f"{result.median_position_plain:.0f} → {result.median_position_reranked:.0f}"
            )
    assert bal.labelled == 30 and bal.remaining >= 20
    assert bal.recall_reranked[100] > bal.recall_plain[100]
    assert artefact.recall_reranked[300] < artefact.recall_plain[300]
    assert artefact.median_position_reranked > artefact.median_position_plain


def test_the_rank_job_reads_the_label_database(scored_demo: ScoredDemo) -> None:
    store = LabelStore.for_storage(scored_demo.storage)
    bals = [t for t, c in scored_demo.truth.items() if c in ("hibal", "lobal")][:10]
    scored = set(read_candidates(scored_demo.storage, "demo", latent=False)["TARGETID"].to_list())
    for targetid in (t for t in bals if t in scored):
        store.add("demo", targetid, "bal", author="test")
    store.close()
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        env.setenv("QAD_STORAGE", str(scored_demo.storage))
        env.setenv("QAD_ARCHIVE", str(scored_demo.storage))
        instance.add_dynamic_partitions("releases", ["demo"])
        result = defs.resolve_job_def("qad_rank").execute_in_process(instance=instance, partition_key="demo")
    assert result.success
    ranking = pl.read_parquet(scored_demo.storage / "candidate_ranking" / "demo" / "ranking.parquet")
    assert (ranking["label"] == "bal").sum() == len([t for t in bals if t in scored])


# --------------------------------------------------------------------------------------------------
# In the browser.


@pytest.fixture(scope="module")
def explorer_url(scored_demo: ScoredDemo) -> Iterator[str]:
    """``qad explore``'s app on a free loopback port, labels in the storage root's SQLite."""
    labels = LabelStore.for_storage(scored_demo.storage)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(scored_demo.storage, labels, default_release="demo")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    labels.close()


@pytest.fixture(scope="module")
def page(explorer_url: str):
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail("the playwright package is not installed (it is in the dev extras: pip install -e '.[dev]')")
    sync_api.expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=UI_TIMEOUT_MS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert not errors, f"errors in the page: {errors}"
        finally:
            browser.close()


def screenshot(page, name: str, capsys: pytest.CaptureFixture) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))
    with capsys.disabled():
        print(f"\nscreenshot: {ARTIFACTS / name}")


def latest_label(storage: Path, targetid: int) -> LabelEvent | None:
    """What the server wrote to the label database, read on a connection of the test's own."""
    store = LabelStore.for_storage(storage)
    try:
        return store.latest("demo", targetid)
    finally:
        store.close()


@pytest.mark.browser
def test_inspect_label_reload_neighbour_and_export(
    page, explorer_url: str, scored_demo: ScoredDemo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from playwright.sync_api import expect

    page.goto(explorer_url)
    page.fill("#author", "ann")
    page.locator("#author").dispatch_event("change")
    expect(page.locator("#candidates tbody tr").first).to_be_visible()
    everything = page.locator("#rows").inner_text()

    page.select_option("select[name=bal]", "true")  # filter: BAL quasars, by score
    page.select_option("select[name=sort]", "anomaly_score")
    page.check("input[name=descending]")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#rows")).not_to_have_text(everything)
    bals = requests.get(
        f"{explorer_url}/api/releases/demo/candidates",
        params={"bal": "true", "sort": "anomaly_score", "descending": "true", "limit": 1},
        timeout=30,
    ).json()
    assert 0 < bals["total"] < int(everything.split(" of ")[1])
    expect(page.locator("#rows")).to_have_text(f"rows 1–{min(bals['total'], 50)} of {bals['total']}")
    screenshot(page, "explorer-table.png", capsys)

    first = page.locator("#candidates tbody tr").first
    targetid = first.get_attribute("data-targetid")
    assert targetid == bals["rows"][0]["TARGETID"]  # the highest-scoring BAL heads the filtered table
    first.click()
    expect(page.locator("#plot")).to_have_attribute("data-targetid", targetid)
    expect(page.locator("#plot canvas").first).to_be_visible()
    assert int(page.locator("#plot").get_attribute("data-points")) > 500
    page.keyboard.press("f")  # observed frame
    expect(page.locator("#plot")).to_have_attribute("data-frame", "observed")
    screenshot(page, "explorer-spectrum.png", capsys)

    page.keyboard.press("b")  # label: BAL
    expect(page.locator("#current-label")).to_contain_text("bal by ann")
    saved = latest_label(scored_demo.storage, int(targetid))
    assert saved is not None and (saved.label, saved.author) == ("bal", "ann")
    page.reload()
    expect(page.locator("#candidate-title")).to_have_text(f"TARGETID {targetid}")
    expect(page.locator("#current-label")).to_contain_text("bal by ann")

    neighbour = page.locator("#neighbours a").first
    other = neighbour.get_attribute("data-targetid")
    neighbour.click()
    expect(page.locator("#candidate-title")).to_have_text(f"TARGETID {other}")
    expect(page.locator("#plot")).to_have_attribute("data-targetid", other)
    screenshot(page, "explorer-neighbour.png", capsys)

    with page.expect_download() as download:
        page.locator("#export a[data-format=votable][data-scope=labelled]").click()
    path = tmp_path / "labelled.vot"
    download.value.save_as(path)
    table = Table.read(path, format="votable")
    labels = {str(t): str(label) for t, label in zip(table["TARGETID"], table["label"], strict=True)}
    assert labels[targetid] == "bal"
    assert {"RA", "DEC", "Z", "anomaly_score", "note", "author", "legacy_viewer"} <= set(table.colnames)
