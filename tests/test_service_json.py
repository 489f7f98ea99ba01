"""JSON requests to the scoring service are parsed one spectrum at a time: the same spectra and the same
messages as the schema parsing the whole body, in a fraction of its memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fastapi import HTTPException

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.service import inputs


def body_of(n: int, seed: int = 0, **top) -> dict:
    rng = np.random.default_rng(seed)
    spectra = [
        {
            "flux": (1 + 0.1 * rng.normal(size=BRZ_WAVE.size)).tolist(),
            "ivar": np.full(BRZ_WAVE.size, 4.0).tolist(),
            "mask": (rng.random(BRZ_WAVE.size) < 0.01).astype(int).tolist(),
            "redshift": float(rng.uniform(0.5, 3.5)),
            "targetid": 39627800000000000 + i,
        }
        for i in range(n)
    ]
    return {"release": "demo", "wavelength": BRZ_WAVE.tolist(), "spectra": spectra, **top}


def parse(payload: dict | bytes, max_spectra: int = 100):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return inputs.spectra_from_json(data, max_spectra=max_spectra)


def test_streamed_and_whole_body_parsing_give_the_same_spectra(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = body_of(5)
    payload["spectra"][1]["wavelength"] = (BRZ_WAVE[::2]).tolist()  # its own grid
    for key in ("flux", "ivar", "mask"):
        payload["spectra"][1][key] = payload["spectra"][1][key][::2]
    del payload["spectra"][3]["targetid"]
    streamed = parse(payload)
    monkeypatch.setattr(inputs, "_split_spectra", lambda body: None)  # the schema on the whole body
    whole = parse(payload)
    for name in ("flux", "ivar", "z", "targetid"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name), err_msg=name)
    assert streamed.columns.keys() == whole.columns.keys()
    for name in streamed.columns:
        np.testing.assert_array_equal(streamed.columns[name], whole.columns[name], err_msg=name)
    assert streamed.meta == whole.meta == {"release": "demo"}
    assert streamed.columns["has_targetid"].tolist() == [True, True, True, False, True]


def cases() -> dict[str, tuple[dict | bytes, int, str]]:
    good = body_of(1)
    spectrum = good["spectra"][0]
    no_flux = {k: v for k, v in spectrum.items() if k != "flux"}
    tiny = {"wavelength": [4000.0, 4001.0, 4002.0], "flux": [1.0] * 3, "ivar": [1.0] * 3, "redshift": 2.0}
    extra = "Extra inputs are not permitted"
    return {
        "not JSON": (b'{"spectra": [', 400, "not valid JSON"),
        "truncated spectrum": (json.dumps(good).encode()[:-500], 400, "not valid JSON"),
        "no flux": ({**good, "spectra": [no_flux]}, 422, "spectra[0].flux: Field required"),
        "a string in flux": (
            {**good, "spectra": [spectrum, {**spectrum, "flux": ["x"] * 3}]},
            422,
            "spectra[1].flux[0]: Input should be a valid number",
        ),
        "unknown field": ({**good, "model": "2"}, 422, f"model: {extra}"),
        "unknown spectrum field": (
            {**good, "spectra": [{**spectrum, "colour": 1}]},
            422,
            f"spectra[0].colour: {extra}",
        ),
        "TARGETID beyond int64": (
            {**good, "spectra": [{**spectrum, "targetid": 2**64}]},
            422,
            "spectra[0].targetid: Input should be",
        ),
        "no spectra": ({"spectra": []}, 422, "spectra: List should have at least 1 item"),
        "spectra not objects": ({"spectra": [1, 2]}, 422, "spectra[0]: Input should be an object"),
        "spectra null": ({"spectra": None}, 422, "spectra: Input should be a valid array"),
        "too many spectra": ({"spectra": [tiny] * 101}, 413, "101 spectra in one request; at most 100"),
        "no wavelength": ({**good, "wavelength": None}, 422, "bad_wavelength: no wavelength"),
        "too long wavelength": (
            {**good, "wavelength": [1.0] * 20_001},
            422,
            "wavelength: List should have at most 20000 items",
        ),
    }


@pytest.mark.parametrize("case", list(cases()))
def test_bad_requests_get_the_schemas_message(case: str) -> None:
    payload, status, message = cases()[case]
    with pytest.raises(HTTPException) as refused:
        parse(payload)
    assert refused.value.status_code == status and message in refused.value.detail, refused.value.detail


#: Peak memory of parsing a ~20 MiB request in a fresh process, in units of the body's size.
MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from qad_assets.science.spectra.arms import BRZ_WAVE
    from qad_assets.service import inputs

    rng = np.random.default_rng(0)
    spectra = [{"flux": (1 + 0.1 * rng.normal(size=BRZ_WAVE.size)).tolist(), "ivar": [4.0] * BRZ_WAVE.size,
                "mask": [0] * BRZ_WAVE.size, "redshift": 2.0, "targetid": i} for i in range(100)]
    body = json.dumps({"wavelength": BRZ_WAVE.tolist(), "spectra": spectra}).encode()
    del spectra
    inputs.spectra_from_json(body[: body.index(b"}") + 1] + b"]}", max_spectra=10)  # warm up: one spectrum
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(inputs.spectra_from_json(body, max_spectra=1000)) == 100
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024 / len(body))
    """
)


def test_a_large_request_costs_about_twice_its_size_not_six_times() -> None:
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ratio = float(done.stdout.strip().splitlines()[-1])
    assert ratio < 3.0, f"parsing took {ratio:.1f}x the body's size"
