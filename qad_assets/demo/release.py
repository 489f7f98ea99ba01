"""The public entry point: write a whole demo release (coadd + redrock files per pixel, truth table)."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from qad_assets.demo.fits_writer import SURVEY, coadd_hdus, redrock_hdus, truth_table, write_fits
from qad_assets.demo.geometry import FIRST_PIXEL, NSIDE
from qad_assets.demo.pixel import simulate_pixel
from qad_assets.demo.plan import PixelPlan, plan_release
from qad_assets.demo.settings import DemoSettings
from qad_assets.errors import UserError
from qad_assets.science.io.parquet_store import write_table_atomic

#: nested nside-64 pixels from FIRST_PIXEL to the last one of the sphere
MAX_PIXELS = 12 * NSIDE * NSIDE - FIRST_PIXEL


@dataclass(frozen=True)
class DemoRelease:
    """What :func:`write_demo_release` wrote: paths are absolute, in pixel order."""

    release: str
    root: Path
    coadd_paths: list[Path]
    redrock_paths: list[Path]
    truth_path: Path


def write_demo_release(
    root: Path,
    *,
    release: str = "demo",
    n_pixels: int = 8,
    targets_per_pixel: int = 400,
    seed: int = 0,
    settings: DemoSettings | None = None,
    resolution: bool = True,
) -> DemoRelease:
    """Write a demo release under ``root`` in the DESI DR1 healpix layout, plus its truth table.

    ``root/spectro/redux/<release>/healpix/main/<program>/<hpix//100>/<hpix>/{coadd,redrock}-...fits``
    and ``root/truth-<release>.parquet`` (its schema metadata ``demo_settings`` holds the settings as
    JSON). The last pixel is in ``main/bright`` when there are two or more. ``settings`` defaults to
    :class:`DemoSettings` (the realistic one); ``resolution=False`` leaves the RESOLUTION HDUs out of the
    coadds (the pipeline never reads them; a tenth of DR1 then fits on a small disk). The output depends
    only on the arguments: the same arguments give the same bytes.
    """
    settings = settings or DemoSettings()
    if not re.fullmatch(r"[a-z0-9]+", release):
        raise UserError(f"release must match [a-z0-9]+, got {release!r}")
    if not 1 <= n_pixels <= MAX_PIXELS:
        raise UserError(f"n_pixels must be in 1..{MAX_PIXELS}")
    if targets_per_pixel > 5000:
        raise UserError("targets_per_pixel must be at most 5000 (BRICK_OBJID and fibre ranges)")
    root = Path(root).resolve()
    plans = plan_release(n_pixels, targets_per_pixel, settings.anomaly_fraction, seed)
    written = [write_pixel(root, release, plan, seed, settings, resolution=resolution) for plan in plans]
    return write_truth(root, release, [w[2] for w in written], settings, coadds=[w[0] for w in written])


def write_pixel(
    root: Path, release: str, plan: PixelPlan, seed: int, settings: DemoSettings, *, resolution: bool = True
) -> tuple[Path, Path, pa.Table]:
    """Simulate and write one pixel's coadd and redrock files; return their paths and its truth rows.

    Pixels are independent (each has its own random stream), so a caller may write them in parallel
    processes and hand the truth rows to :func:`write_truth` (``benchmarks/bench_scale.py`` does).
    """
    rng = np.random.default_rng([seed, plan.healpix])
    pixel = simulate_pixel(plan, rng, settings)
    folder = _pixel_dir(root, release, plan.program, plan.healpix)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{SURVEY}-{plan.program}-{plan.healpix}.fits"
    coadd, redrock = folder / f"coadd-{stem}", folder / f"redrock-{stem}"
    write_fits(coadd_hdus(pixel, plan, release, seed, resolution=resolution), coadd)
    write_fits(redrock_hdus(pixel, plan, release, seed), redrock)
    return coadd, redrock, truth_table(pixel, plan, coadd.relative_to(root).as_posix())


def write_truth(
    root: Path, release: str, truth: list[pa.Table], settings: DemoSettings, *, coadds: list[Path]
) -> DemoRelease:
    """The release's truth table (the settings in its schema metadata) from the pixels' truth rows."""
    table = pa.concat_tables(truth).replace_schema_metadata({"demo_settings": settings.to_json()})
    truth_path = write_table_atomic(table, root / f"truth-{release}.parquet")
    redrocks = [c.with_name(c.name.replace("coadd-", "redrock-", 1)) for c in coadds]
    return DemoRelease(release, root, coadds, redrocks, truth_path)


def _pixel_dir(root: Path, release: str, program: str, healpix: int) -> Path:
    return root.joinpath("spectro", "redux", release, "healpix", SURVEY, program, str(healpix // 100), str(healpix))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded DESI-format demo release.")
    parser.add_argument("root", type=Path, help="archive root (gets spectro/redux/<release>/...)")
    parser.add_argument("--release", default="demo")
    parser.add_argument("--n-pixels", type=int, default=8)
    parser.add_argument("--targets-per-pixel", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resolution", action="store_true", help="leave the RESOLUTION HDUs out of the coadds")
    parser.add_argument("--settings", default="{}", help="DemoSettings as JSON, e.g. '{\"exposure_scale\": 2}'")
    args = parser.parse_args(argv)
    demo = write_demo_release(
        args.root,
        release=args.release,
        n_pixels=args.n_pixels,
        targets_per_pixel=args.targets_per_pixel,
        seed=args.seed,
        settings=DemoSettings.from_json(args.settings),
        resolution=not args.no_resolution,
    )
    print(f"wrote {len(demo.coadd_paths)} pixels of release {demo.release!r} under {demo.root}")
    print(f"truth: {demo.truth_path}")
