"""``qad serve`` over real HTTP on a loopback port, in this test process's Ray.

A small demo release goes through the batch pipeline first (raw → normalized → VAE version 1 →
anomaly_scores, then a second VAE version), so the service can be held to the batch's numbers.
"""

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests
from in_process_pipeline import in_process_pipeline, local_ray

from qad_assets.demo.release import DemoRelease
from qad_assets.science.io.parquet_store import SPECTRUM_COLUMNS, read_table
from qad_assets.science.model.package import ModelPackage
from qad_assets.science.model.registry import CHALLENGER, CHAMPION, ModelRegistry
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.service.app import ServiceSettings, start, stop
from qad_assets.service.client import score_request

pytestmark = pytest.mark.slow

MAX_SPECTRA = 64
MAX_BODY = 32 * 2**20
POLL_SECONDS = 3.0


@dataclass(frozen=True)
class Pipeline:
    storage: Path
    keys: list[str]
    files: dict[str, tuple[Path, Path]]  # partition key → (coadd, redrock)
    mlflow: ModelRegistry

    def raw(self, i: int = 0) -> pa.Table:
        return read_table(self.storage / "raw_spectra" / "demo" / f"{self.keys[i]}.parquet")

    def scores(self, i: int = 0) -> pa.Table:
        return read_table(self.storage / "anomaly_scores" / "demo" / f"{self.keys[i]}.parquet")

    def ledger(self, i: int = 0) -> pa.Table:
        return read_table(self.storage / "raw_spectra" / "demo" / "ledger" / f"{self.keys[i]}.parquet")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, medium_demo: DemoRelease):
    root = tmp_path_factory.mktemp("service")
    demo = medium_demo
    storage = root / "storage"
    with local_ray():
        with in_process_pipeline(demo.root, storage) as steps:
            # a small release may fail vae_model's quality checks; the version is registered all the same,
            # and the service does not care how good it is
            assert steps.run("qad_spectra", tags=steps.all_spectra).success
            steps.run("qad_train", partition_key="demo")
            assert steps.run("qad_score", tags=steps.all_spectra).success
            steps.run("qad_train", partition_key="demo", run_config={"ops": {"vae_model": {"config": {"seed": 1}}}})
            keys = steps.keys
        mlflow = ModelRegistry(str(storage))
        mlflow.set_alias(CHAMPION, "1")
        mlflow.set_alias(CHALLENGER, "2")
        files = {
            f"demo_main_{c.parent.parent.parent.name}_{c.parent.name}": (c, r)
            for c, r in zip(demo.coadd_paths, demo.redrock_paths, strict=True)
        }
        yield Pipeline(storage, keys, files, mlflow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(pipeline: Pipeline):
    settings = ServiceSettings(
        storage_root=str(pipeline.storage),
        device="cpu",
        shadow_fraction=1.0,
        poll_seconds=POLL_SECONDS,
        max_json_bytes=MAX_BODY,
        max_upload_bytes=256 * 2**20,
        max_spectra=MAX_SPECTRA,
    )
    url = start(settings, host="127.0.0.1", port=free_port())
    yield url
    stop()


def post(url: str, body: dict) -> dict:
    response = requests.post(f"{url}/score", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


COMPARED = ("anomaly_score", "p_value", "reduced_chi2", "chi2", "kl", "latent_nll", "top_region_share", "snr")


def assert_matches_batch(scores: list[dict], batch: pa.Table) -> None:
    """Every compared column equal to float32 precision, explanations and version identical, by TARGETID.

    The network and the χ² sums run in float32, and a forward pass of another batch size rounds
    differently (≈ 1e-6 on the N(0, 1) score for a batch of one), hence 1e-5, relative or absolute.
    """
    row_of = {t: i for i, t in enumerate(batch["TARGETID"].to_pylist())}
    rows = [row_of[s["targetid"]] for s in scores]
    for column in COMPARED:
        expected = batch[column].to_numpy()[rows]
        np.testing.assert_allclose([s[column] for s in scores], expected, rtol=1e-5, atol=1e-5, err_msg=column)
    for column in ("top_region", "worst_arm", "model_version", "n_obs"):
        assert [s[column] for s in scores] == [batch[column].to_pylist()[r] for r in rows], column


def test_health_model_and_openapi(service: str) -> None:
    assert requests.get(f"{service}/health", timeout=10).json() == {"status": "ok", "champion_version": "1"}
    model = requests.get(f"{service}/model", timeout=10).json()
    assert model["champion"] == {"name": "qad-vae", "version": "1", "alias": "champion", "training_release": "demo"}
    assert model["challenger"]["version"] == "2" and model["device"] == "cpu"
    openapi = requests.get(f"{service}/openapi.json", timeout=10).json()
    body = openapi["paths"]["/score"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "spectra" in openapi["components"]["schemas"]["ScoreRequest"]["properties"]
    assert {"/health", "/model", "/reload", "/score"} <= set(openapi["paths"])


def test_scores_equal_the_batch_anomaly_scores(pipeline: Pipeline, service: str) -> None:
    raw, batch = pipeline.raw(0), pipeline.scores(0)
    many = post(service, score_request(raw, range(MAX_SPECTRA), release="demo"))
    assert many["model"]["version"] == "1" and [s["index"] for s in many["scores"]] == list(range(MAX_SPECTRA))
    assert_matches_batch(many["scores"], batch)
    one = post(service, score_request(raw, [MAX_SPECTRA], release="demo"))  # a batch of one gives the same numbers
    assert_matches_batch(one["scores"], batch)


def test_without_the_release_spectra_are_scored_as_unseen(pipeline: Pipeline, service: str) -> None:
    """Every spectrum gets the held-out calibration (the library's unseen scoring of the same model);
    held-out spectra therefore score as in the batch, training spectra differently.
    """
    raw, batch = pipeline.raw(1), pipeline.scores(1)
    unseen = post(service, score_request(raw, range(40)))["scores"]
    model = ModelPackage.load(pipeline.mlflow.download_model_dir("1", pipeline.storage / "check-v1"), version="1")
    normalized = read_table(pipeline.storage / "normalized_spectra" / "demo" / f"{pipeline.keys[1]}.parquet")
    rows = list(range(40))  # normalized_spectra keeps raw_spectra's row order
    assert normalized["TARGETID"].to_numpy()[rows].tolist() == [s["targetid"] for s in unseen]
    local = model.score(Spectra.from_table(normalized, REST_GRID.wave, columns=SPECTRUM_COLUMNS)[rows])
    np.testing.assert_allclose([s["anomaly_score"] for s in unseen], local["anomaly_score"], rtol=1e-5, atol=1e-5)
    held_out = ~model.scorer.training_rows(np.asarray([s["targetid"] for s in unseen]))
    assert held_out.any() and (~held_out).any()
    assert_matches_batch([s for s, h in zip(unseen, held_out, strict=True) if h], batch)
    row_of = {t: i for i, t in enumerate(batch["TARGETID"].to_pylist())}
    trained = [(s["anomaly_score"], batch["anomaly_score"][row_of[s["targetid"]]].as_py()) for s in unseen]
    assert all(abs(a - b) > 1e-6 for (a, b), h in zip(trained, held_out, strict=True) if not h)


def test_an_uploaded_coadd_is_scored_and_accounted_for(pipeline: Pipeline, service: str) -> None:
    coadd, redrock = pipeline.files[pipeline.keys[0]]
    files = {
        "coadd": (coadd.name, coadd.read_bytes(), "application/fits"),
        "redrock": (redrock.name, redrock.read_bytes(), "application/fits"),
    }
    response = requests.post(f"{service}/score", files=files, data={"release": "demo"}, timeout=120)
    assert response.status_code == 200, response.text
    out = response.json()
    assert_matches_batch(out["scores"], pipeline.scores(0))
    ledger = pipeline.ledger(0).to_pylist()
    assert len(out["scores"]) == sum(r["status"] == "kept" for r in ledger) == pipeline.raw(0).num_rows
    expected = [
        {"index": r["row"], "targetid": r["TARGETID"], "status": r["status"], "reason": r["reason"]}
        for r in ledger
        if r["status"] != "kept"
    ]
    assert out["not_scored"] == expected and len(expected) > 0
    kept_rows = [r["row"] for r in ledger if r["status"] == "kept"]
    assert [s["index"] for s in out["scores"]] == kept_rows


def shadow_lines(storage: Path, targetids: set[int], timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [json.loads(x) for p in (storage / "serving" / "shadow").glob("*.jsonl") for x in p.open()]
        found = [x for x in lines if x["targetid"] in targetids]
        if len(found) >= len(targetids):
            return found
        time.sleep(0.2)
    raise AssertionError(f"no shadow records for {sorted(targetids)} after {timeout} s")


def test_shadow_scoring_logs_both_versions(pipeline: Pipeline, service: str) -> None:
    out = post(service, score_request(pipeline.raw(1), range(100, 105), release="demo"))
    assert {s["model_version"] for s in out["scores"]} == {"1"}  # the caller sees the champion
    by_target = {s["targetid"]: s for s in out["scores"]}
    records = shadow_lines(pipeline.storage, set(by_target))
    for record in records:
        assert record["champion_version"] == "1" and record["challenger_version"] == "2"
        answered = by_target[record["targetid"]]
        assert record["index"] == answered["index"]
        assert record["champion_score"] == pytest.approx(answered["anomaly_score"], abs=1e-12)
        assert record["challenger_score"] is not None and record["challenger_score"] != record["champion_score"]
    summary = requests.get(f"{service}/model", timeout=10).json()["shadow"]
    assert summary["spectra"] >= len(records) and summary["mean_abs_score_difference"] > 0


@pytest.fixture(scope="module")
def small_body(pipeline: Pipeline) -> dict:
    return score_request(pipeline.raw(0), [0], release="demo")


def with_spectrum(body: dict, **changes) -> dict:
    spectrum = {k: v for k, v in body["spectra"][0].items() if changes.get(k, 0) is not None}
    spectrum.update({k: v for k, v in changes.items() if v is not None})
    return {**body, "spectra": [spectrum]}


def bad_json_cases(body: dict) -> dict[str, tuple[dict | bytes, int, str]]:
    flux = body["spectra"][0]["flux"]
    ivar = body["spectra"][0]["ivar"]
    good = int(np.flatnonzero(np.asarray(ivar) > 0)[0])
    nan_flux = flux[:good] + [float("nan")] + flux[good + 1 :]
    tiny = {"wavelength": [4000.0, 4001.0, 4002.0], "flux": [1.0] * 3, "ivar": [1.0] * 3, "redshift": 2.0}
    return {
        "not JSON": (b'{"spectra": [', 400, "not valid JSON"),
        "no flux": (with_spectrum(body, flux=None), 422, "spectra[0].flux: Field required"),
        "short flux": (with_spectrum(body, flux=flux[:-1]), 422, "shape_mismatch: flux has 7780 values"),
        "NaN flux": (with_spectrum(body, flux=nan_flux), 422, f"nonfinite: flux[{good}] = nan at a good pixel"),
        "negative ivar": (with_spectrum(body, ivar=[-1.0] + ivar[1:]), 422, "negative_ivar: ivar[0] = -1.0"),
        "redshift 9": (with_spectrum(body, redshift=9.0), 422, "bad_redshift: z = 9.0 is outside [0, 6]"),
        "no wavelength": ({**body, "wavelength": None}, 422, "bad_wavelength: no wavelength"),
        "unknown field": ({**body, "model": "2"}, 422, "model: Extra inputs are not permitted"),
        "TARGETID beyond int64": (with_spectrum(body, targetid=2**64), 422, "spectra[0].targetid: Input should be"),
        "no spectra": ({"spectra": []}, 422, "spectra: List should have at least 1 item"),
        "too many spectra": ({"spectra": [tiny] * (MAX_SPECTRA + 1)}, 413, f"at most {MAX_SPECTRA}"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not JSON",
        "no flux",
        "short flux",
        "NaN flux",
        "negative ivar",
        "redshift 9",
        "no wavelength",
        "unknown field",
        "TARGETID beyond int64",
        "no spectra",
        "too many spectra",
    ],
)
def test_a_bad_json_request_gets_a_4xx_and_the_service_stays_up(service: str, small_body: dict, case: str) -> None:
    payload, status, message = bad_json_cases(small_body)[case]
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = requests.post(f"{service}/score", data=data, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert requests.post(f"{service}/score", json=small_body, timeout=60).status_code == 200


def test_oversize_and_unsupported_bodies_get_a_4xx(service: str, small_body: dict) -> None:
    padding = json.dumps({**small_body, "release": "x" * (MAX_BODY + 1)}).encode()
    declared = requests.post(f"{service}/score", data=padding, headers={"content-type": "application/json"}, timeout=60)
    assert declared.status_code == 413 and f"at most {MAX_BODY}" in declared.json()["detail"]
    chunked = requests.post(
        f"{service}/score",
        data=(padding[i : i + 2**20] for i in range(0, len(padding), 2**20)),  # no Content-Length
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert chunked.status_code == 413 and f"larger than {MAX_BODY}" in chunked.json()["detail"]
    text = requests.post(f"{service}/score", data=b"hello", headers={"content-type": "text/plain"}, timeout=60)
    assert text.status_code == 415 and "application/json or multipart/form-data" in text.json()["detail"]
    assert requests.post(f"{service}/score", json=small_body, timeout=60).status_code == 200


def test_a_file_that_is_not_a_desi_coadd_gets_a_422(pipeline: Pipeline, service: str, small_body: dict) -> None:
    coadd_path, redrock_path = pipeline.files[pipeline.keys[0]]
    redrock = (redrock_path.name, redrock_path.read_bytes())
    cases = {
        "not FITS": ({"coadd": ("notes.fits", b"SIMPLE = not really FITS"), "redrock": redrock}, "corrupt_fits"),
        "redrock as coadd": ({"coadd": redrock, "redrock": redrock}, "missing_hdu"),
        "no redrock": ({"coadd": (coadd_path.name, coadd_path.read_bytes())}, "redrock file"),
    }
    for name, (files, message) in cases.items():
        response = requests.post(f"{service}/score", files=files, timeout=60)
        assert response.status_code == 422, (name, response.text)
        assert message in response.json()["detail"], (name, response.json())
        assert requests.post(f"{service}/score", json=small_body, timeout=60).status_code == 200
    garbled = requests.post(
        f"{service}/score",
        data=b"--xyz\r\nnot a part header\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        timeout=60,
    )
    assert garbled.status_code == 400, garbled.text
    assert garbled.json()["detail"].startswith("malformed multipart body: ")
    no_file = requests.post(f"{service}/score", data={"release": "demo"}, files={"redrock": redrock}, timeout=60)
    assert no_file.status_code == 422 and "file field 'coadd'" in no_file.json()["detail"]


def test_the_uploaded_file_name_is_only_a_label(pipeline: Pipeline, service: str) -> None:
    coadd, redrock = pipeline.files[pipeline.keys[0]]
    files = {"coadd": ("..", coadd.read_bytes()), "redrock": ("/", redrock.read_bytes())}
    response = requests.post(f"{service}/score", files=files, data={"release": "demo"}, timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.json()["scores"]) == pipeline.raw(0).num_rows


def wait_for_champion(url: str, version: str | None, timeout: float = 10 * POLL_SECONDS + 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        champion = requests.get(f"{url}/model", timeout=10).json()["champion"]
        if (champion or {}).get("version") == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"champion did not become {version} within {timeout} s")


def test_alias_changes_are_picked_up_without_a_restart(pipeline: Pipeline, service: str, small_body: dict) -> None:
    client = pipeline.mlflow.client()
    try:
        pipeline.mlflow.set_alias(CHAMPION, "2")  # promotion: picked up by the poll
        wait_for_champion(service, "2")
        shadowed = requests.get(f"{service}/model", timeout=10).json()["shadow"]["spectra"]
        assert post(service, small_body)["scores"][0]["model_version"] == "2"
        time.sleep(1.0)  # champion == challenger now: nothing to compare, nothing shadowed
        assert requests.get(f"{service}/model", timeout=10).json()["shadow"]["spectra"] == shadowed

        client.delete_registered_model_alias("qad-vae", CHAMPION)  # no champion: 503, and it says why
        assert requests.post(f"{service}/reload", timeout=30).json()["champion"] is None
        for response in (
            requests.get(f"{service}/health", timeout=10),
            requests.post(f"{service}/score", json=small_body, timeout=10),
        ):
            assert response.status_code == 503 and "alias 'champion'" in response.json()["detail"]
    finally:
        pipeline.mlflow.set_alias(CHAMPION, "1")  # rollback: an explicit reload takes effect at once
    assert requests.post(f"{service}/reload", timeout=30).json()["champion"]["version"] == "1"
    assert post(service, small_body)["scores"][0]["model_version"] == "1"
