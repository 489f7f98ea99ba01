"""The demo generator at DR1's shape (benchmarks/bench_scale.py): coadds without RESOLUTION read as the
full ones, and releases past 800 pixels keep TARGETIDs unique.
"""

from pathlib import Path

import numpy as np
from astropy.io import fits

from qad_assets.demo.geometry import FIRST_PIXEL
from qad_assets.demo.pixel import OBJID_CYCLE, simulate_pixel
from qad_assets.demo.plan import PixelPlan, plan_release
from qad_assets.demo.release import write_demo_release
from qad_assets.demo.settings import DemoSettings
from qad_assets.science.io.spectra_file import read_spectra_file


def test_coadds_without_resolution_give_the_same_rows(tmp_path: Path) -> None:
    kwargs = {"n_pixels": 1, "targets_per_pixel": 20}
    full = write_demo_release(tmp_path / "full", **kwargs)
    lean = write_demo_release(tmp_path / "lean", resolution=False, **kwargs)
    with fits.open(lean.coadd_paths[0]) as hdul:
        assert not [hdu.name for hdu in hdul if hdu.name.endswith("RESOLUTION")]
    assert lean.coadd_paths[0].stat().st_size < full.coadd_paths[0].stat().st_size / 2
    rows = [read_spectra_file(d.coadd_paths[0], d.redrock_paths[0], release="demo").spectra for d in (full, lean)]
    assert rows[0].equals(rows[1])


def test_pixels_a_cycle_apart_have_distinct_targetids() -> None:
    plan = plan_release(1, 20, DemoSettings().anomaly_fraction, 0)[0]
    later = PixelPlan(OBJID_CYCLE, FIRST_PIXEL + OBJID_CYCLE, plan.program, plan.roles, plan.anomaly, plan.strength)
    ids = [simulate_pixel(p, np.random.default_rng(0), DemoSettings()).cat["targetid"] for p in (plan, later)]
    assert not set(ids[0][ids[0] > 0]) & set(ids[1][ids[1] > 0])
