"""The Dagster-free layers stay Dagster-free: the science library, the scoring service (a Ray Serve replica
must not need Dagster installed), the demo simulator, the candidate explorer and its label database, the
exceptions and the configuration.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qad_assets.science", "qad_assets.service", "qad_assets.demo", "qad_assets.explorer", "qad_assets.labels")
MODULES = ("qad_assets.errors", "qad_assets.config")


def source_files() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py"))]
    return files + [ROOT / f"{module.replace('.', '/')}.py" for module in MODULES]


def is_dagster(module: str) -> bool:
    top = module.split(".")[0]
    return top == "dagster" or top.startswith("dagster_")


def test_no_module_imports_dagster_directly() -> None:
    found = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}" for name in names if is_dagster(name)]
    assert not found, "Dagster imported where it must not be:\n" + "\n".join(found)


#: Imports every module of PACKAGES, then MODULES, one at a time; prints the first that brought Dagster in.
PROBE = """
import importlib, json, pkgutil, sys

def dagster_loaded():
    return sorted(m for m in sys.modules if m == "dagster" or m.startswith(("dagster.", "dagster_")))

names = []
for package in {packages}:
    names.append(package)
    found = pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")
    names += [info.name for info in found if not info.name.endswith(".__main__")]
for name in [*names, *{modules}]:
    importlib.import_module(name)
    if dagster_loaded():
        print(json.dumps({{"culprit": name, "dagster": dagster_loaded()[:5], "imported": len(names)}}))
        break
else:
    print(json.dumps({{"culprit": None, "imported": len(names)}}))
"""


def test_importing_every_module_does_not_load_dagster() -> None:
    """Catches what the source check cannot: Dagster reached through another module."""
    probe = PROBE.format(packages=list(PACKAGES), modules=list(MODULES))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["culprit"] is None, f"importing {report['culprit']} loaded {report['dagster']}"
    assert report["imported"] > 40  # the walk found the packages' modules
