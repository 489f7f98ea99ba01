"""A plain ``pip install .`` (docker/Dockerfile) works: the wheel carries the Dagster instance template and
the installed ``qad`` finds it, with no source tree around.

Offline: the wheel is built with this venv's setuptools (``--no-build-isolation``) from a copy of the
sources, installed without dependencies into a fresh venv that borrows this one's site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "qad_assets/cli/dagster.yaml"
#: What a wheel is built from; nothing else of the repository may be needed at run time.
SOURCES = ("pyproject.toml", "README.md", "qad_assets", "resources", "jobs")

#: Run in the installed package: where it is, and the instance home its template gives a storage root.
PROBE = """
import sys
from pathlib import Path
import qad_assets
from qad_assets.cli import prepare_instance_home
print(qad_assets.__file__)
print(prepare_instance_home(Path(sys.argv[1])) / "dagster.yaml")
"""


def run(*command: str | Path, cwd: Path) -> str:
    """``command``'s output; without PYTHONPATH, which could put a source tree before the installed package."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_installed_wheel_ships_the_instance_template(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source, cwd=tmp_path)
    (wheel,) = wheels.glob("desi_qad-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(TEMPLATE) == (ROOT / TEMPLATE).read_bytes()

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(*pip, "--python", python, "install", "--no-deps", "-q", wheel, cwd=tmp_path)
    # Dependencies from this venv, after the new venv's own site-packages. (``--system-site-packages`` would
    # give the base interpreter's; a path in a .pth file does not run this venv's editable-install hook, so
    # the repository's qad_assets stays out of reach.)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).strip())
    (site / "parent-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    package, written = run(python, "-c", PROBE, tmp_path / "storage", cwd=elsewhere).split()
    assert Path(package).is_relative_to(venv), f"imported {package}, not the installed package"
    assert Path(written).read_bytes() == (ROOT / TEMPLATE).read_bytes()
    assert "{demo,run,ui,serve,explore}" in run(venv / "bin" / "qad", "--help", cwd=elsewhere)  # the console script
