"""Which model scores a release, and why: a release is always scored, whatever its own model's gate said.

In order: a model the user asked for; the release's own model when it passed its quality gate
(``challenger``, on its way to ``champion``); else the registry's ``champion``; else the release's own
model anyway (``unpromoted``). Only a release with no model of its own and no champion cannot be
scored, and that is said in so many words. Plain library code, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qad_assets.errors import ModelPackageError
from qad_assets.science.model.package import current_package, read_registration
from qad_assets.science.model.registry import CHAMPION, ModelRegistry


@dataclass(frozen=True)
class ModelChoice:
    """The package that scores a release, its registered version, the status every score row carries
    (``requested``, ``challenger``, ``champion`` or ``unpromoted``), whether it was trained on this
    release, and the reason in words.
    """

    package: Path
    version: str
    status: str
    trained_on_release: bool
    reason: str


def choose_model(release_dir: Path, registry: ModelRegistry, downloads: Path, requested: str = "") -> ModelChoice:
    """The model for the release whose ``vae_model`` folder is ``release_dir``; registry models are
    downloaded under ``downloads``."""
    own, own_gate = own_model(release_dir)
    own_version = read_registration(own)["version"] if own else None
    if requested:
        version = registry.version_for(requested)
        package, trained_here = package_for(release_dir, registry, version, downloads)
        return ModelChoice(package, version, "requested", trained_here, f"asked for {requested!r}")
    if own and own_gate["passed"]:
        return ModelChoice(own, own_version, "challenger", True, "the release's own model passed its gate")
    why = (
        f"the release's model v{own_version} failed its gate: {'; '.join(own_gate['reasons'])}"
        if own
        else "no model was trained on this release (too few spectra)"
    )
    champion = registry.alias_version(CHAMPION)
    if champion is not None and champion != own_version:
        package, _ = package_for(release_dir, registry, champion, downloads)
        return ModelChoice(package, champion, "champion", False, f"{why}; scored with champion v{champion}")
    if own:
        return ModelChoice(own, own_version, "unpromoted", True, f"{why}; no champion to fall back on")
    raise ModelPackageError(f"{release_dir.name}: {why}, and the registry has no champion to score it with")


def package_for(release_dir: Path, registry: ModelRegistry, version: str, downloads: Path) -> tuple[Path, bool]:
    """The package of registered ``version``: the release's own when it is that version (True), else
    downloaded from the registry (False)."""
    own, _ = own_model(release_dir)
    if own and read_registration(own)["version"] == version:
        return own, True
    return registry.download_model_dir(version, downloads / f"v{version}"), False


def own_model(release_dir: Path) -> tuple[Path | None, dict]:
    """The release's current package and its gate (a package from before the gate counts as passed)."""
    try:
        package = current_package(release_dir)
    except ModelPackageError:
        return None, {}
    gate = read_registration(package).get("gate") or {"passed": True, "reasons": []}
    return package, gate
