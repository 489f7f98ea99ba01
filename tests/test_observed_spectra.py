"""Spectra sent one by one: the same rest-frame arrays as the batch, and ingestion's reasons for bad ones."""

import numpy as np
import pyarrow as pa
import pytest

from qad_assets.demo.release import DemoRelease
from qad_assets.errors import SpectrumError
from qad_assets.science.io.spectra_file import read_spectra_file
from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import list_to_numpy
from qad_assets.science.spectra.normalization import normalized_table
from qad_assets.science.spectra.observed import normalize_observed, observed_spectrum


@pytest.fixture(scope="module")
def raw(small_demo: DemoRelease) -> pa.Table:
    demo = small_demo
    return read_spectra_file(demo.coadd_paths[0], demo.redrock_paths[0], release="demo").spectra


def row(raw: pa.Table, i: int) -> dict:
    good = list_to_numpy(raw["good"])[i]
    return {
        "wavelength": BRZ_WAVE,
        "flux": list_to_numpy(raw["flux"])[i],
        "ivar": list_to_numpy(raw["ivar"])[i],
        "z": float(raw["Z"][i].as_py()),
        "mask": (~good).astype(np.int64),
    }


def test_brz_spectra_come_out_as_normalized_spectra_has_them(raw: pa.Table) -> None:
    batch = normalized_table(raw)
    spectra = [observed_spectrum(i, **row(raw, i)) for i in range(raw.num_rows)]
    one_by_one = normalize_observed(spectra)
    np.testing.assert_array_equal(one_by_one.flux, list_to_numpy(batch["flux"]))
    np.testing.assert_array_equal(one_by_one.ivar, list_to_numpy(batch["ivar"]))
    np.testing.assert_array_equal(one_by_one.columns["scale"], batch["scale"].to_numpy())
    low_coverage = batch["low_coverage"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(one_by_one.columns["low_coverage"], low_coverage)


def test_spectra_on_other_grids_keep_their_order(raw: pa.Table) -> None:
    """Every other pixel of spectrum 1 is another grid; each row equals normalizing it alone."""
    first, second = row(raw, 0), row(raw, 1)
    coarse = {key: (value[::2] if isinstance(value, np.ndarray) else value) for key, value in second.items()}
    spectra = [observed_spectrum(0, **first), observed_spectrum(1, **coarse), observed_spectrum(2, **first)]
    mixed = normalize_observed(spectra)
    alone = normalize_observed([spectra[1]])
    np.testing.assert_array_equal(mixed.flux[1], alone.flux[0])
    np.testing.assert_array_equal(mixed.flux[0], mixed.flux[2])
    assert not np.array_equal(mixed.flux[0], mixed.flux[1])
    assert (mixed.ivar[1] > 0).sum() > 1000


def test_nan_at_a_masked_pixel_is_ignored(raw: pa.Table) -> None:
    spectrum = row(raw, 0)
    clean = normalize_observed([observed_spectrum(0, **spectrum)])
    flux, mask = spectrum["flux"].copy(), spectrum["mask"].copy()
    pixel = int(np.flatnonzero(mask == 0)[100])
    flux[pixel], mask[pixel] = np.nan, 1
    masked = normalize_observed([observed_spectrum(0, **{**spectrum, "flux": flux, "mask": mask})])
    assert np.isfinite(masked.flux).all()
    assert (masked.ivar > 0).sum() <= (clean.ivar > 0).sum()


@pytest.mark.parametrize(
    ("change", "code", "detail"),
    [
        (lambda s: s | {"flux": s["flux"][:-1]}, "shape_mismatch", "flux has 7780 values, wavelength 7781"),
        (lambda s: s | {"mask": s["mask"][:10]}, "shape_mismatch", "mask has 10 values"),
        (lambda s: s | {"wavelength": s["wavelength"][::-1]}, "bad_wavelength", "not strictly increasing"),
        (lambda s: s | {"wavelength": np.full(7781, np.nan)}, "bad_wavelength", "finite and positive"),
        (lambda s: s | {"z": 7.5}, "bad_redshift", "z = 7.5 is outside [0, 6]"),
        (lambda s: s | {"z": float("nan")}, "bad_redshift", "z = nan"),
        (lambda s: s | {"ivar": np.where(np.arange(7781) == 12, -1.0, s["ivar"])}, "negative_ivar", "ivar[12]"),
        (lambda s: s | {"flux": np.where(s["mask"] == 0, np.nan, s["flux"])}, "nonfinite", "flux["),
        (lambda s: s | {"ivar": np.where(s["mask"] == 0, np.inf, s["ivar"])}, "nonfinite", "ivar["),
        (lambda s: s | {"ivar": np.zeros(7781)}, "no_good_pixels", "ivar = 0 or mask != 0 everywhere"),
        (lambda s: s | {"mask": np.full(7781, 0.5)}, "bad_mask", "integers"),
    ],
)
def test_a_bad_spectrum_is_refused_with_the_ledger_reason(raw: pa.Table, change, code: str, detail: str) -> None:
    with pytest.raises(SpectrumError) as err:
        observed_spectrum(3, **change(row(raw, 0)))
    assert err.value.index == 3 and err.value.reason.startswith(f"{code}: ")
    assert detail in str(err.value) and str(err.value).startswith("spectra[3]: ")


def test_only_the_pixel_rules_of_ingestion_apply(raw: pa.Table) -> None:
    """Zero ivar, a mask bit and no mask at all are all valid input."""
    spectrum = row(raw, 0)
    without_mask = observed_spectrum(0, **{k: v for k, v in spectrum.items() if k != "mask"})
    with_mask = observed_spectrum(0, **spectrum)
    np.testing.assert_array_equal(without_mask.ivar > 0, with_mask.ivar > 0)  # raw_spectra zeroed ivar where masked
    assert with_mask.flux.dtype == np.float32 and not (with_mask.ivar > 0).all()
