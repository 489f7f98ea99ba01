"""The Dagster UI tested as a person uses it: ``qad ui``'s server, driven by headless Chromium.

A small demo release is written to a temp storage root and its partitions added to the instance; then
``dagster dev`` (webserver + daemon) starts over that storage root exactly as ``qad ui`` starts it, and
Playwright opens the asset lineage, checks that every asset and every asset check of the code location
is shown, and launches one partition of ``raw_spectra`` from the asset page's Materialize dialog. The
run goes through the daemon's queue and a run worker like any run a user launches; the test waits for
it to succeed. Screenshots land in ``tests/artifacts/``.

Needs Chromium at /usr/bin/chromium (never downloaded) and the ``playwright`` package; without them the
test skips, except under ``CI=true`` where it fails. ``.ci/run`` installs both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from conftest import skip_or_fail

from qad_assets.cli import RunSettings, prepare_instance_home
from qad_assets.definitions import defs
from qad_assets.demo.release import write_demo_release
from qad_assets.partitions import archive_partition_keys, spectra_partitions

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
UI_TIMEOUT_MS = 60_000
#: Marks every process the server starts (run workers too), to find any that outlive its process group.
MARKER = "QAD_UI_TEST_SERVER"
RUN_URL = re.compile(r"/runs/([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def playwright_api():
    """``playwright.sync_api``, or a skip (a failure under CI) naming what is missing."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail("the playwright package is not installed (it is in the dev extras: pip install -e '.[dev]')")
    return sync_api


# --------------------------------------------------------------------------------------------------
# The server: `qad ui`'s command over a fresh storage root.


@dataclass(frozen=True)
class UiServer:
    url: str
    home: Path
    partitions: list[str]
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def write_storage(storage: Path) -> tuple[dict[str, str], list[str]]:
    """A 2-pixel demo release, the instance home as ``qad ui`` prepares it, and its partitions added.

    Returns the server's environment (``qad ui``'s) and the partition keys.
    """
    archive = storage / "demo_archive"
    write_demo_release(archive, release="demo", n_pixels=2, targets_per_pixel=60, seed=2)
    prepare_instance_home(storage)
    env = {**os.environ, **RunSettings(storage, str(archive)).environment()}
    env.update({"QAD_RAY_NUM_CPUS": "1", MARKER: str(uuid.uuid4())})
    keys = archive_partition_keys(str(archive), "demo")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.add_dynamic_partitions(spectra_partitions.name, keys)
    mark_welcome_dialog_seen(Path(env["DAGSTER_HOME"]))
    return env, keys


def mark_welcome_dialog_seen(home: Path) -> None:
    """Record in the instance that the 'Join the Dagster community' dialog was dismissed, as after a
    user's first visit: it otherwise opens a few seconds after the first page load, over whatever the test
    is clicking, and dismissing it closes open menus too.
    """
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def location_ready(url: str) -> bool:
    """True once the webserver answers and has loaded the code location; a load error fails the test."""
    try:
        entries = graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError):
        return False
    for entry in entries:
        loaded = entry["locationOrLoadError"]
        if loaded and loaded["__typename"] == "PythonError":
            pytest.fail(f"code location {entry['name']} failed to load: {loaded['message']}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries)


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited with {process.returncode}:\n{tail(log)}")
        if location_ready(url):
            return
        time.sleep(2)
    pytest.fail(f"dagster dev did not load the code location in {SERVER_START_TIMEOUT_S} s:\n{tail(log)}")


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def stop_server(process: subprocess.Popen, marker: str) -> None:
    """TERM the server's process group, KILL it if it lingers, then any process carrying our marker."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in marked_processes(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER=marker``: started by this test's server only."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def ui_server(playwright_api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    """``dagster dev -m qad_assets.definitions`` on a free 127.0.0.1 port, stopped (the whole group) after."""
    storage = tmp_path_factory.mktemp("ui_storage")
    env, keys = write_storage(storage)
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = storage / "dagster-dev.log"
    command = [sys.executable, "-m", "dagster", "dev", "-m", "qad_assets.definitions", "-h", HOST, "-p", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_server(url, process, log)
        yield UiServer(url=url, home=Path(env["DAGSTER_HOME"]), partitions=keys, log=log)
    finally:
        stop_server(process, env[MARKER])


# --------------------------------------------------------------------------------------------------
# The browser.


@pytest.fixture(scope="module")
def page(playwright_api, ui_server: UiServer):
    """A Chromium page on the UI; the 'Join the Dagster community' dialog is dismissed if it shows anyway."""
    playwright_api.expect.set_options(timeout=UI_TIMEOUT_MS)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=UI_TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
            )
            page.goto(ui_server.url)
            yield page
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, page, capsys: pytest.CaptureFixture) -> Iterator[None]:
    """What the browser showed when a test failed, for CI where nobody can look at the live page."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        screenshot(page, f"ui-failure-{request.node.name}.png", capsys)


def screenshot(page, name: str, capsys: pytest.CaptureFixture) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    with capsys.disabled():
        print(f"\nscreenshot: {path}")
    return path


def assets_and_checks() -> dict[str, list[str]]:
    """Every asset of the code location and the names of its checks: what the UI must show."""
    graph = defs.resolve_asset_graph()
    shown: dict[str, list[str]] = {key.to_user_string(): [] for key in graph.get_all_asset_keys()}
    for check in graph.asset_check_keys:
        shown[check.asset_key.to_user_string()].append(check.name)
    return shown


def expand_all_groups(page) -> None:
    """The lineage starts with each group folded into one node; the canvas settings menu unfolds them."""
    settings = page.get_by_role("button").filter(has=page.get_by_role("img", name="settings", exact=True))
    settings.last.click()  # the first is the navigation's Settings
    expand = page.get_by_role("menuitem", name="Expand all groups")
    if expand.count():
        expand.click()
    page.keyboard.press("Escape")  # the menu stays open over the graph otherwise
    page.get_by_role("menu").wait_for(state="hidden")


def test_lineage_shows_every_asset(playwright_api, page, ui_server: UiServer, capsys: pytest.CaptureFixture) -> None:
    expect = playwright_api.expect
    page.goto(ui_server.url)
    page.get_by_role("link", name="Lineage").click()
    expect(page.get_by_text("Global asset lineage").first).to_be_visible()
    expand_all_groups(page)
    for asset in assets_and_checks():
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    expect(page.get_by_text("spectra", exact=True).first).to_be_visible()
    screenshot(page, "ui-asset-graph.png", capsys)


def test_asset_pages_list_every_check(playwright_api, page, ui_server: UiServer, capsys: pytest.CaptureFixture) -> None:
    expect = playwright_api.expect
    checked = {asset: checks for asset, checks in assets_and_checks().items() if checks}
    assert checked, "the code location defines no asset checks"
    for asset, checks in checked.items():
        page.goto(f"{ui_server.url}/assets/{asset}")
        page.get_by_role("tab", name="Checks").click()
        expect(page.get_by_text(f"Checks ({len(checks)})", exact=True)).to_be_visible()
        for check in checks:
            expect(page.get_by_text(check, exact=True).first).to_be_visible()
        if asset == "raw_spectra":
            screenshot(page, "ui-raw_spectra-checks.png", capsys)


def launch_partition(page, asset: str, partition: str) -> str:
    """Asset page → Materialize… → pick one partition → Launch 1 run; returns the run's id from its page."""
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem", name=partition).click()  # its name repeats the key (truncation measure)
    dialog.get_by_text(f"Launch runs to materialize {asset}").click()  # closes the partition menu
    dialog.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}")).wait_for()
    page.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url(RUN_URL)
    return RUN_URL.search(page.url)[1]


def wait_for_run(home: Path, run_id: str) -> dg.DagsterRun:
    """Poll the instance until the run ends (success, failure or canceled), at most RUN_TIMEOUT_S."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while True:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"run {run_id} still {run and run.status.value} after {RUN_TIMEOUT_S} s")
            time.sleep(3)


def test_materialize_one_partition_from_the_asset_page(
    playwright_api, page, ui_server: UiServer, capsys: pytest.CaptureFixture
) -> None:
    expect = playwright_api.expect
    partition = ui_server.partitions[-1]
    page.goto(f"{ui_server.url}/assets/raw_spectra")
    run_id = launch_partition(page, "raw_spectra", partition)
    run = wait_for_run(ui_server.home, run_id)
    if run.status != dg.DagsterRunStatus.SUCCESS:
        pytest.fail(f"run {run_id} ended {run.status.value}; server log:\n{tail(ui_server.log)}")
    assert run.tags.get("dagster/partition") == partition
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page.get_by_text("RUN_SUCCESS", exact=True).first).to_be_visible()
    screenshot(page, "ui-run-success.png", capsys)
    with dg.DagsterInstance.from_config(str(ui_server.home)) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("raw_spectra")) == {partition}
