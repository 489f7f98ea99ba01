"""Noise realism: real DESI coadds against the demo release, measured the same way.

    python benchmarks/bench_noise_realism.py [--realdata DIR] [--seeds 0 1] [--archives DIR ...] [--figure PATH]
    python benchmarks/bench_noise_realism.py --calibrate   # rewrites qad_assets/demo/data/demo_noise.npz

Measures (``qad_assets.science.spectra.noise``) every real DESI spectrum with data in ``--realdata``
(``coadd-*.fits`` below it, and QuasarNP's ``test_coadd.fits``, a coadd without FIBERMAP and MASK), and
the default demo release at each seed (8 pixels × 400 targets) and any existing release given with
``--archives`` (an earlier generator's, for one), and prints one markdown table: pulls per pixel class for
all spectra and for the noise-dominated ones (S/N per pixel < 3), the fraction of pixels near sky lines,
the per-arm noise shape in a few bands, and the S/N per pixel of every spectrum (for a demo also of its
targets alone, the population of the independent release's 1.9 (0.3–18)). The figure shows the pull
histograms per class and the per-arm noise shapes.

``--calibrate`` derives the demo's noise tables from the real coadds: the sky-line excess variance as
measured, and per-arm throughputs iterated until the demo's per-arm noise shape is the real one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from scipy.special import expit  # noqa: E402

from qad_assets.demo import instrument  # noqa: E402
from qad_assets.demo.release import write_demo_release  # noqa: E402
from qad_assets.demo.settings import DemoSettings  # noqa: E402
from qad_assets.science.io.coadd import CoaddArms, read_coadd  # noqa: E402
from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, WAVE_STEP, merge_arms  # noqa: E402
from qad_assets.science.spectra.noise import (  # noqa: E402
    PIXEL_CLASSES,
    PULL_BINS,
    NoiseStats,
    bare_coadd,
    measure_noise,
    running_median,
)
from qad_assets.science.spectra.snr import masked_median  # noqa: E402

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "desi"
NOISE_TABLES = instrument.DATA_DIR / "demo_noise.npz"
SHAPE_BANDS = {"B": (3600, 3700, 4000, 4500, 5000), "R": (5760, 6000, 6800), "Z": (7520, 8500, 9500)}
SHAPE_WIDTH = 100.0  # Å per band
FAINT = 3.0  # S/N per pixel below which a spectrum is noise-dominated


def read_bare(path: Path) -> CoaddArms:
    """A coadd with only {B,R,Z}_{WAVELENGTH,FLUX,IVAR} (QuasarNP's test file)."""
    with fits.open(path) as hdul:
        arrays = [{a: hdul[f"{a}_{kind}"].data for a in ARMS} for kind in ("WAVELENGTH", "FLUX", "IVAR")]
    return bare_coadd(str(path), *arrays)


def real_coadds(folder: Path) -> dict[str, list[CoaddArms]]:
    """The real coadds under ``folder``: DESI ``coadd-*.fits`` files, and QuasarNP's ``test_coadd.fits``."""
    return {
        "desi": [read_coadd(p) for p in sorted(folder.rglob("coadd-*.fits"))],
        "quasarnp": [read_bare(p) for p in sorted(folder.rglob("test_coadd.fits"))],
    }


def target_snr(coadds: list[CoaddArms]) -> np.ndarray:
    """S/N per pixel (median flux·√ivar over the good brz pixels) of every target (OBJTYPE TGT) with data."""
    out = []
    for coadd in coadds:
        flux, ivar, good = merge_arms(coadd, np.flatnonzero(coadd.fibermap["OBJTYPE"] == "TGT"))
        snr = masked_median(flux * np.sqrt(ivar), good)
        out.append(snr[np.isfinite(snr)])
    return np.concatenate(out)


def demo_coadds(root: Path, seed: int, settings: DemoSettings | None = None, **kwargs: int) -> list[CoaddArms]:
    """The coadds of a demo release written under ``root``."""
    return [read_coadd(p) for p in write_demo_release(root, seed=seed, settings=settings, **kwargs).coadd_paths]


def archive_coadds(root: Path) -> list[CoaddArms]:
    """Every healpix coadd of a DESI-format tree (an earlier demo release, for one)."""
    return [read_coadd(p) for p in sorted(root.rglob("coadd-*.fits"))]


def shape_bands(stats: NoiseStats) -> dict[str, float]:
    """Median normalized noise over the continuum pixels of each SHAPE_BANDS band (Å from its start)."""
    out = {}
    for arm in ARMS:
        wave = ARM_WAVE[arm]
        lo = round((wave[0] - BRZ_WAVE[0]) / WAVE_STEP)
        continuum = stats.pixel_class[lo : lo + wave.size] == 0
        for start in SHAPE_BANDS[arm]:
            band = continuum & (wave >= start) & (wave < start + SHAPE_WIDTH)
            out[f"{arm} {start}–{start + SHAPE_WIDTH:.0f}"] = float(np.nanmedian(stats.arm_shape[arm][band]))
    return out


def table(columns: dict[str, tuple[NoiseStats, NoiseStats, np.ndarray | None]]) -> str:
    """Markdown table, one column per data set: (all spectra, noise-dominated spectra, target S/N)."""
    rows: list[tuple[str, list[str]]] = []
    rows.append(("spectra (pixels) measured", [f"{a.n_spectra} ({a.n_pixels:,})" for a, _, _ in columns.values()]))
    for label, pick in (("all spectra", 0), (f"S/N < {FAINT:g}", 1)):
        for cls in PIXEL_CLASSES:
            stats = [c[pick].pulls[cls] for c in columns.values()]
            rows.append((f"{label}, {cls}: robust σ", [f"{s.robust_sigma:.3f}" for s in stats]))
            rows.append((f"{label}, {cls}: σ", [f"{s.sigma:.2f}" for s in stats]))
            rows.append((f"{label}, {cls}: P(abs r > 3)", [f"{s.p3:.4f}" for s in stats]))
            rows.append((f"{label}, {cls}: P(abs r > 5)", [f"{s.p5:.5f}" for s in stats]))
    for key, name in (("sky", "near a sky line"), ("strong_sky", "near a strong sky line")):
        rows.append((f"pixels {name}", [f"{c[0].sky_fraction[key]:.3f}" for c in columns.values()]))
    shapes = [shape_bands(c[0]) for c in columns.values()]
    for band in shapes[0]:
        rows.append((f"noise shape {band} Å", [f"{s[band]:.2f}" for s in shapes]))
    rows.append(("S/N per pixel, all spectra: median (5–95 %)", [_percentiles(c[0].snr) for c in columns.values()]))
    targets = [_percentiles(c[2]) if c[2] is not None else "–" for c in columns.values()]
    rows.append(("S/N per pixel, targets: median (5–95 %)", targets))
    header = "| quantity | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    return header + "\n".join(f"| {name} | " + " | ".join(values) + " |" for name, values in rows)


def _percentiles(snr: np.ndarray) -> str:
    p5, p50, p95 = np.percentile(snr, [5, 50, 95])
    return f"{p50:.2f} ({p5:.2f}–{p95:.1f})"


def figure(columns: dict[str, NoiseStats], path: Path) -> None:
    """Pull histograms per pixel class (log scale) and per-arm noise shapes, every data set overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    centres = 0.5 * (PULL_BINS[1:] + PULL_BINS[:-1])
    gauss = np.exp(-0.5 * centres**2) / np.sqrt(2 * np.pi)
    for ax, cls in zip(axes[0], PIXEL_CLASSES, strict=True):
        for name, stats in columns.items():
            hist = stats.pull_hist[cls]
            density = hist / max(hist.sum(), 1) / np.diff(PULL_BINS)
            ax.step(centres, np.where(density > 0, density, np.nan), where="mid", label=name)
        ax.plot(centres, gauss, "k:", label="N(0, 1)")
        ax.set(yscale="log", ylim=(1e-6, 1), xlabel="pull r = (flux − running median)·√ivar", title=cls)
        ax.legend(fontsize=8, loc="upper right")
    for ax, arm in zip(axes[1], ARMS, strict=True):
        for name, stats in columns.items():
            ax.plot(ARM_WAVE[arm], stats.arm_shape[arm], lw=0.6, label=name)
        ax.set(yscale="log", xlabel="wavelength (Å)", ylabel="median 1/√ivar, normalized", title=f"{arm} arm")
        ax.legend(fontsize=8)
    fig.suptitle(f"Spectra with S/N < {FAINT:g} per pixel: pulls per pixel class, per-arm noise shape")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def smooth_shape(stats: NoiseStats) -> dict[str, np.ndarray]:
    """Per-arm noise shape over the continuum pixels, bridged across sky lines and running-median smoothed."""
    out = {}
    for arm in ARMS:
        wave = ARM_WAVE[arm]
        lo = round((wave[0] - BRZ_WAVE[0]) / WAVE_STEP)
        shape = stats.arm_shape[arm][None, :]
        good = (stats.pixel_class[lo : lo + wave.size] == 0)[None, :] & np.isfinite(shape)
        out[arm] = running_median(np.nan_to_num(shape), good, 41)[0]
    return out


def first_guess(arm: str) -> np.ndarray:
    """Smooth starting throughputs: peak 0.30-0.32, blue roll-off, logistic dichroic edges, red fall-off."""
    wave = ARM_WAVE[arm]
    edge = lambda centre, width: expit((wave - centre) / width)  # noqa: E731
    if arm == "B":
        return 0.30 * edge(3800.0, 110.0) * (1 - edge(5790.0, 25.0))
    if arm == "R":
        return 0.32 * edge(5770.0, 25.0) * (1 - edge(7600.0, 40.0))
    return 0.32 * edge(7540.0, 40.0) * np.clip(1 - ((wave - 8000.0) / 3000.0) ** 2, 0.05, None)


def calibrate(real: list[CoaddArms], iterations: int = 8, gain: float = 1.2) -> None:
    """Write NOISE_TABLES: the real sky-line excess, then throughputs iterated from ``first_guess`` (each
    step on a fresh 1-pixel dark demo of 800 targets) until the demo's per-arm noise shape of
    noise-dominated spectra is the real coadds' (T ← T·(demo/real)^gain, each arm's median kept)."""
    real_stats = measure_noise(real, max_snr=FAINT)
    excess = np.where(real_stats.sky_excess > 0.05, real_stats.sky_excess, 0.0)  # below: noise of the median
    target = smooth_shape(real_stats)
    tables = {f"throughput_{arm}": first_guess(arm) for arm in ARMS}
    for step in range(iterations + 1):
        np.savez_compressed(
            NOISE_TABLES, sky_excess=excess.astype(np.float32), **{k: v.astype(np.float32) for k, v in tables.items()}
        )
        instrument.noise_tables.cache_clear()
        if step == iterations:
            break
        with tempfile.TemporaryDirectory() as tmp:
            coadds = demo_coadds(Path(tmp), seed=100 + step, n_pixels=1, targets_per_pixel=800)
        shape = smooth_shape(measure_noise(coadds, max_snr=FAINT))
        worst = {}
        for arm in ARMS:
            ratio = np.clip(shape[arm] / target[arm], 0.5, 2.0)
            new = tables[f"throughput_{arm}"] * ratio**gain
            tables[f"throughput_{arm}"] = new * np.median(tables[f"throughput_{arm}"]) / np.median(new)
            worst[arm] = float(np.abs(np.log(ratio)).max())
        print(f"iteration {step}: largest |log(demo/real)| per arm {worst}")
    print(f"wrote {NOISE_TABLES}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=REALDATA, help="folder with the real DESI coadds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="demo seeds (default release each)")
    parser.add_argument("--archives", type=Path, nargs="*", default=[], help="existing releases to measure too")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/noise_realism.png"))
    parser.add_argument("--calibrate", action="store_true", help="rewrite the demo's noise tables first")
    args = parser.parse_args()
    sources = real_coadds(args.realdata)
    real = sources["desi"] + sources["quasarnp"]
    if args.calibrate:
        calibrate(real)
    columns = {"real: all": (measure_noise(real), measure_noise(real, max_snr=FAINT), None)}
    subsets = [f"real: {name}" for name in sources]
    for name, coadds in sources.items():
        columns[f"real: {name}"] = (measure_noise(coadds), measure_noise(coadds, max_snr=FAINT), None)
    demos = {f"demo seed {seed}": seed for seed in args.seeds} | {f"{path.name}": path for path in args.archives}
    for name, source in demos.items():
        with tempfile.TemporaryDirectory() as tmp:
            coadds = demo_coadds(Path(tmp), source) if isinstance(source, int) else archive_coadds(source)
        columns[name] = (measure_noise(coadds), measure_noise(coadds, max_snr=FAINT), target_snr(coadds))
    print(table(columns))
    figure({name: c[1] for name, c in columns.items() if name not in subsets}, args.figure)
    print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
