"""Shared test fixtures: demo releases written once per session, and how missing services are handled.

Markers (registered in pyproject.toml): ``slow`` (runs the pipeline or trains for minutes), ``postgres``
(needs the PostgreSQL test server), ``browser`` (needs Chromium), ``deployment`` (reads the deployment
files). ``make test`` runs everything; ``make test-fast`` leaves out all four for the inner loop.
Session releases are read-only: a test that damages input writes a release of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qad_assets.demo.release import DemoRelease, write_demo_release

#: Real DESI test files (tests/data/README.md has their provenance).
DATA = Path(__file__).parent / "data"


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; under CI a missing prerequisite is a failure, not a silent skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRelease:
    """One pixel of 60 targets: enough for every reader path and one partition through the pipeline."""
    return write_demo_release(tmp_path_factory.mktemp("small_demo"), n_pixels=1, targets_per_pixel=60, seed=5)


@pytest.fixture(scope="session")
def medium_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRelease:
    """Three pixels of 300 targets (~600 kept quasars, the last pixel in main/bright): enough to train
    a small VAE, calibrate a scorer and judge it.
    """
    return write_demo_release(tmp_path_factory.mktemp("medium_demo"), n_pixels=3, targets_per_pixel=300, seed=3)
