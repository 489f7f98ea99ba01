"""The ``qad`` parser refuses a port no server could announce truthfully, before anything starts."""

from __future__ import annotations

import pytest

from qad_assets.cli import build_parser


@pytest.mark.parametrize("command", ["explore", "serve", "ui"])
@pytest.mark.parametrize(
    ("port", "message"),
    [("0", "port must be 1 to 65535, got 0"), ("99999", "port must be 1 to 65535, got 99999"), ("x", "not a port")],
)
def test_a_port_outside_1_to_65535_is_refused(
    command: str, port: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--port", port])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("port", ["1", "8050", "65535"])
def test_a_port_in_range_is_taken(port: str) -> None:
    assert build_parser().parse_args(["explore", "--port", port]).port == int(port)
