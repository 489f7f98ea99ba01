"""Reading real DESI coadds into ``raw_spectra`` rows and a ledger (qad_assets.science.io).

Every input is a real DESI file (tests/data/desi, see tests/data/README.md); bad-input cases are real files
damaged in ``tmp_path``.
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.table import Table

from qad_assets.errors import DesiFormatError, UserError
from qad_assets.science.io.coadd import FIBERMAP_COLUMNS, read_coadd
from qad_assets.science.io.fits_headers import fibermap_rows
from qad_assets.science.io.redshifts import read_qso_catalog, read_redshifts
from qad_assets.science.io.spectra_file import RAW_SPECTRA_SCHEMA, ReadResult, read_spectra_file
from qad_assets.science.partition_steps import summarize_ledger
from qad_assets.science.spectra import ledger as lg
from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, NPIX, merge_arms

DATA = Path(__file__).parent / "data"
DESI = DATA / "desi"
HPX = DESI / "picca/coadd-sv3-dark-9144.fits"
TILE = DESI / "picca/coadd-1-80693-thru20210204.fits"
CAT_HPX = DESI / "picca/QSO_cat_fuji_dark_healpix.fits.gz"
CAT_TILE = DESI / "picca/QSO_cat_fuji_dark_tile.fits.gz"
SV3_26065 = DESI / "specutils/coadd-sv3-dark-26065.fits"
TILE_169 = DESI / "specutils/coadd-5-169-thru20210419.fits"
DR1 = (
    DESI / "fastspecfit/coadd-4-80613-thru20210324.fits",
    DESI / "fastspecfit/redrock-4-80613-thru20210324.fits",
)
DR2 = (
    DESI / "fastspecfit/coadd-special-dark-27247.fits",
    DESI / "fastspecfit/redrock-special-dark-27247.fits",
)
ALL_COADDS = [HPX, TILE, SV3_26065, TILE_169, DR1[0], DR2[0]]


def labels(coadd: Path) -> list[dict[str, str]]:
    """LABELS.csv rows of one file, in FIBERMAP order."""
    name = str(coadd.relative_to(DATA))
    with open(DESI / "LABELS.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["file"] == name]
    return sorted(rows, key=lambda r: int(r["row"]))


def read(coadd: Path, redrock: Path | None = None, root: Path = DATA, **kw) -> ReadResult:
    return read_spectra_file(str(coadd), redrock and str(redrock), release="fuji", archive_root=str(root), **kw)


def ledger_rows(result: ReadResult) -> list[tuple]:
    """(file, row, TARGETID, status, reason code) of every ledger row."""
    t = result.ledger.to_pydict()
    return [
        (f, r, tid, s, lg.reason_code(why))
        for f, r, tid, s, why in zip(t["file"], t["row"], t["TARGETID"], t["status"], t["reason"], strict=True)
    ]


def fibermap_targetids(coadd: Path) -> np.ndarray:
    return np.asarray(fits.getdata(coadd, "FIBERMAP")["TARGETID"], dtype=np.int64)


def write_redrock(path: Path, targetids: np.ndarray, z: float = 1.5) -> Path:
    """A minimal redrock file (REDSHIFTS HDU), SPECTYPE=QSO and ZWARN=0 for every row."""
    n = len(targetids)
    table = Table(
        {
            "TARGETID": np.asarray(targetids, np.int64),
            "Z": np.full(n, z),
            "ZERR": np.full(n, 1e-4),
            "ZWARN": np.zeros(n, np.int64),
            "SPECTYPE": np.full(n, "QSO"),
            "SUBTYPE": np.full(n, ""),
            "DELTACHI2": np.full(n, 100.0),
        }
    )
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(table, name="REDSHIFTS")]).writeto(path)
    return path


def damaged(tmp_path: Path, edit: Callable[[fits.HDUList], None], src: Path = TILE) -> Path:
    """A copy of a real coadd, edited with astropy."""
    dst = tmp_path / src.name
    with fits.open(src) as hdul:
        edit(hdul)
        hdul.writeto(dst)
    return dst


@pytest.fixture(scope="module")
def clean_tile() -> ReadResult:
    """The undamaged tile coadd: 5 real quasars, all kept."""
    result = read(TILE, qso_catalog=str(CAT_TILE))
    assert result.spectra.num_rows == 5
    return result


def assert_survivors(result: ReadResult, clean: ReadResult, rows: list[int]) -> None:
    """The kept rows of a damaged file are exactly the clean file's rows ``rows``, with identical data."""
    expected = clean.spectra.take(pa.array(rows))
    assert result.spectra.equals(expected)


def test_brz_grid_is_the_merged_desi_grid() -> None:
    assert BRZ_WAVE.dtype == np.float64 and BRZ_WAVE.size == NPIX == 7781
    assert BRZ_WAVE[0] == 3600.0 and BRZ_WAVE[-1] == 9824.0
    np.testing.assert_allclose(np.diff(BRZ_WAVE), 0.8, rtol=1e-9)
    assert {arm: w.size for arm, w in ARM_WAVE.items()} == {"B": 2751, "R": 2326, "Z": 2881}
    assert (ARM_WAVE["R"][0], ARM_WAVE["Z"][-1]) == (5760.0, 9824.0)


@pytest.mark.parametrize(("coadd", "catalog", "healpix"), [(HPX, CAT_HPX, 9144), (TILE, CAT_TILE, -1)])
def test_real_quasars_are_kept_with_the_catalogue_redshift(coadd: Path, catalog: Path, healpix: int) -> None:
    result = read(coadd, qso_catalog=str(catalog))
    truth = labels(coadd)
    t = result.spectra.to_pydict()
    assert t["TARGETID"] == [int(r["targetid"]) for r in truth]
    np.testing.assert_allclose(t["Z"], [float(r["z"]) for r in truth], atol=6e-6)
    assert set(t["Z_SOURCE"]) == {"qso_catalog"}
    assert set(t["healpix"]) == {healpix} and set(t["release"]) == {"fuji"}
    assert all(ra is not None for ra in t["TARGET_RA"])  # the 9144 FIBERMAP has none: from the catalogue
    assert [s for _, _, _, s, _ in ledger_rows(result)] == ["kept"] * len(truth)
    if healpix > 0:
        assert set(t["survey"]) == {"sv3"} and set(t["program"]) == {"dark"}
    else:
        assert set(t["survey"]) == {None}  # tile coadd headers carry no SURVEY / PROGRAM


@pytest.mark.parametrize(
    ("coadd", "expected"),
    [
        (
            SV3_26065,
            [
                "unassigned_fiber: TARGETID<0",
                "unassigned_fiber: TARGETID<0",
                "",
                "not_target: OBJTYPE=SKY",
                "",
            ],
        ),
        (
            TILE_169,
            [
                "unassigned_fiber: TARGETID<0",
                "bad_fiberstatus: COADD_FIBERSTATUS=512",
                "unassigned_fiber: TARGETID<0",
                "unassigned_fiber: TARGETID<0",
                "",
            ],
        ),
    ],
)
def test_fibermap_filters_on_real_edge_cases(tmp_path: Path, coadd: Path, expected: list[str]) -> None:
    tids = fibermap_targetids(coadd)
    result = read(coadd, write_redrock(tmp_path / "redrock.fits", tids))
    t = result.ledger.to_pydict()
    assert t["reason"] == expected
    assert t["status"] == ["kept" if not r else "filtered" for r in expected]
    assert t["TARGETID"] == tids.tolist()
    kept = [int(tid) for tid, r in zip(tids, expected, strict=True) if not r]
    assert result.spectra.column("TARGETID").to_pylist() == kept
    assert set(result.spectra.column("Z_SOURCE").to_pylist()) == {"redrock"}


@pytest.mark.parametrize(("coadd", "redrock"), [DR1, DR2], ids=["dr1-iron-tile", "dr2-loa-healpix"])
def test_real_galaxies_with_real_redrock_are_filtered_as_not_qso(coadd: Path, redrock: Path) -> None:
    result = read(coadd, redrock)
    (truth,) = labels(coadd)
    assert ledger_rows(result) == [(str(coadd.relative_to(DATA)), 0, int(truth["targetid"]), "filtered", "not_qso")]
    assert result.ledger.column("reason").to_pylist() == ["not_qso: SPECTYPE=GALAXY"]
    assert result.spectra.num_rows == 0 and result.spectra.schema == RAW_SPECTRA_SCHEMA
    rr = read_redshifts(str(redrock))
    assert rr["TARGETID"].tolist() == [int(truth["targetid"])]
    np.testing.assert_allclose(rr["Z"], float(truth["z"]), atol=6e-6)


def test_dr2_healpix_header_and_newer_fibermap_columns() -> None:
    arms = read_coadd(str(DR2[0]))
    assert (arms.header["SURVEY"], arms.header["PROGRAM"], arms.header["HPXPIXEL"]) == (
        "special",
        "dark",
        27247,
    )
    assert set(FIBERMAP_COLUMNS) <= set(arms.fibermap)
    assert arms.fibermap["TARGETID"].dtype == np.int64
    assert {a: arms.mask[a].dtype for a in ARMS} == dict.fromkeys(ARMS, np.dtype(np.uint32))


@pytest.mark.parametrize("coadd", ALL_COADDS, ids=lambda p: p.name)
def test_merge_matches_desispec_coadd_cameras(coadd: Path) -> None:
    desispec_io = pytest.importorskip("desispec.io")
    from desispec.coaddition import coadd_cameras

    ref = coadd_cameras(desispec_io.read_spectra(str(coadd)))
    (band,) = ref.bands
    flux, ivar, good = merge_arms(read_coadd(str(coadd)))
    assert flux.dtype == ivar.dtype == np.float32 and flux.shape == (len(ref.flux[band]), 7781)
    np.testing.assert_allclose(ref.wave[band], BRZ_WAVE, atol=1e-4, rtol=0)
    np.testing.assert_allclose(flux[good], ref.flux[band][good], rtol=1e-6, atol=0)
    np.testing.assert_allclose(ivar, ref.ivar[band], rtol=1e-6, atol=0)
    assert np.all(ivar[ref.ivar[band] == 0] == 0)
    np.testing.assert_array_equal(good, (ref.ivar[band] > 0) & (ref.mask[band] == 0))


@pytest.mark.parametrize("coadd", ALL_COADDS, ids=lambda p: p.name)
def test_ledger_accounts_for_every_fibermap_row(tmp_path: Path, coadd: Path) -> None:
    tids = fibermap_targetids(coadd)
    result = read(coadd, write_redrock(tmp_path / "redrock.fits", tids))
    counts = lg.counts(result.ledger)
    assert counts["kept"] + counts["filtered"] + counts["quarantined"] == len(tids)
    assert counts["kept"] == result.spectra.num_rows
    assert lg.accounts_for(result.ledger, len(tids))
    assert result.ledger.schema == lg.LEDGER_SCHEMA


def test_output_schema_and_snr(clean_tile: ReadResult) -> None:
    t = clean_tile.spectra
    assert t.schema == RAW_SPECTRA_SCHEMA
    assert t.schema.field("TARGETID").type == pa.int64()
    flux = np.asarray(t.column("flux").combine_chunks().flatten()).reshape(-1, 7781)
    ivar = np.asarray(t.column("ivar").combine_chunks().flatten()).reshape(-1, 7781)
    good = np.asarray(t.column("good").combine_chunks().flatten()).reshape(-1, 7781)
    assert np.all(ivar[~good] == 0) and np.all(ivar[good] > 0)
    snr = np.where(good, flux * np.sqrt(ivar), np.nan)
    wave = BRZ_WAVE
    for name, lo, hi in [("snr_b", 3600, 5800), ("snr_r", 5760, 7620), ("snr_z", 7520, 9824)]:
        window = (wave > lo - 0.1) & (wave < hi + 0.1)
        expected = np.nanmedian(snr[:, window], axis=1)
        np.testing.assert_allclose(t.column(name).to_numpy(), expected, rtol=1e-5)


def test_fsspec_urls_give_the_same_table_as_local_paths(tmp_path: Path) -> None:
    local = read(HPX, qso_catalog=str(CAT_HPX))
    url = read_spectra_file(
        HPX.as_uri(), None, release="fuji", qso_catalog=CAT_HPX.as_uri(), archive_root=DATA.as_uri()
    )
    assert url.spectra.equals(local.spectra) and url.ledger.equals(local.ledger)

    memfs = fsspec.filesystem("memory")
    memfs.pipe("/desi/coadd.fits", HPX.read_bytes())
    memfs.pipe("/desi/cat.fits.gz", CAT_HPX.read_bytes())
    mem = read_spectra_file(
        "/desi/coadd.fits",
        None,
        release="fuji",
        qso_catalog="/desi/cat.fits.gz",
        fs=memfs,
        archive_root="/desi",
    )
    assert mem.spectra.equals(local.spectra)
    assert mem.ledger.column("file").to_pylist() == ["coadd.fits"] * 2

    # the two readers: fitsio + memory map (local path) and astropy on an fsspec file object (URL)
    a, b = read_coadd(str(HPX)), read_coadd(HPX.as_uri())
    for arm in ARMS:
        for kind in ("wave", "flux", "ivar", "mask"):
            np.testing.assert_array_equal(getattr(a, kind)[arm], getattr(b, kind)[arm])
    assert int(a.mask["R"].max()) > 0  # real nonzero mask bits survive the BZERO=2**31 decoding


def test_compressed_mask_hdus_are_read_by_name(tmp_path: Path) -> None:
    def compress(hdul: fits.HDUList) -> None:
        for arm in ARMS:
            name = f"{arm}_MASK"
            hdul[name] = fits.CompImageHDU(np.asarray(hdul[name].data), name=name)

    path = damaged(tmp_path, compress, src=HPX)
    with fits.open(path) as hdul:
        assert isinstance(hdul["B_MASK"], fits.CompImageHDU)
    original = read_coadd(str(HPX))
    for arms in (read_coadd(str(path)), read_coadd(path.as_uri())):
        for arm in ARMS:
            np.testing.assert_array_equal(arms.mask[arm], original.mask[arm])
    assert read(path, root=tmp_path, qso_catalog=str(CAT_HPX)).spectra.equals(
        read(HPX, qso_catalog=str(CAT_HPX)).spectra
    )


def test_catalogue_z_can_be_ignored_and_lookup_respects_survey(tmp_path: Path) -> None:
    tids = fibermap_targetids(TILE)
    result = read(TILE, write_redrock(tmp_path / "rr.fits", tids, z=1.25), qso_catalog=str(CAT_TILE), catalog_z=False)
    assert result.spectra.column("Z").to_pylist() == [1.25] * 5
    assert set(result.spectra.column("Z_SOURCE").to_pylist()) == {"redrock"}
    assert result.spectra.column("ZWARN").to_pylist() == [0] * 5

    catalog = read_qso_catalog(str(CAT_HPX))
    quasars = fibermap_targetids(HPX)
    assert (catalog.lookup(quasars, "sv3") >= 0).all()
    assert (catalog.lookup(quasars, "sv1") == -1).all()  # they are sv3 rows of the catalogue
    with pytest.raises(UserError, match="no redshift source"):
        read_spectra_file(str(TILE), None, release="fuji")


# ---------------------------------------------------------------------------------------------------------
# Bad input: file-level cases quarantine every FIBERMAP row (or one row -1); row-level cases keep the rest.

TILE_TIDS = fibermap_targetids(TILE).tolist()


def test_truncated_file_is_quarantined_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / TILE.name
    path.write_bytes(TILE.read_bytes()[: int(TILE.stat().st_size * 0.6)])
    result = read(path, root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [(TILE.name, i, t, "quarantined", "corrupt_fits") for i, t in enumerate(TILE_TIDS)]
    assert "truncated" in result.ledger.column("reason")[0].as_py()
    assert result.spectra.num_rows == 0
    with pytest.raises(DesiFormatError, match=rf"{path.name}, row -1: corrupt_fits: truncated"):
        read_coadd(str(path))


def test_a_file_that_is_not_fits_is_one_ledger_row(tmp_path: Path) -> None:
    path = tmp_path / "coadd-bad.fits"
    path.write_bytes(b"SIMPLE  = garbage" * 300)
    result = read(path, root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [("coadd-bad.fits", -1, None, "quarantined", "corrupt_fits")]
    assert lg.accounts_for(result.ledger, 5)


def test_missing_hdu_quarantines_the_file(tmp_path: Path) -> None:
    path = damaged(tmp_path, lambda h: h.__delitem__("Z_IVAR"))
    result = read(path, root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [(TILE.name, i, t, "quarantined", "missing_hdu") for i, t in enumerate(TILE_TIDS)]
    assert result.ledger.column("reason")[0].as_py() == "missing_hdu: Z_IVAR"
    err = pytest.raises(DesiFormatError, read_coadd, str(path)).value
    assert (err.path, err.row, err.reason) == (str(path), -1, "missing_hdu: Z_IVAR")
    assert pickle.loads(pickle.dumps(err)).reason == err.reason


def test_missing_fibermap_gives_one_row_without_targetid(tmp_path: Path) -> None:
    path = damaged(tmp_path, lambda h: h.__delitem__("FIBERMAP"))
    result = read(path, root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [(TILE.name, -1, None, "quarantined", "missing_hdu")]


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.__setitem__("B_IVAR", fits.ImageHDU(h["B_IVAR"].data[:4], name="B_IVAR")),
        lambda h: h.__setitem__("R_MASK", fits.ImageHDU(h["R_MASK"].data[:, :-3], name="R_MASK")),
        lambda h: h.__setitem__("Z_WAVELENGTH", fits.ImageHDU(h["Z_WAVELENGTH"].data[:-1], name="Z_WAVELENGTH")),
    ],
    ids=["ivar-rows", "mask-pixels", "wavelength-length"],
)
def test_mismatched_shapes_quarantine_the_file(tmp_path: Path, edit: Callable[[fits.HDUList], None]) -> None:
    result = read(damaged(tmp_path, edit), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [(TILE.name, i, t, "quarantined", "shape_mismatch") for i, t in enumerate(TILE_TIDS)]
    assert result.spectra.num_rows == 0


def test_fibermap_shorter_than_the_arrays_quarantines_each_fibermap_row(tmp_path: Path) -> None:
    def shorten(h: fits.HDUList) -> None:
        h["FIBERMAP"] = fits.BinTableHDU(h["FIBERMAP"].data[:4], name="FIBERMAP")

    result = read(damaged(tmp_path, shorten), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [
        (TILE.name, i, t, "quarantined", "shape_mismatch") for i, t in enumerate(TILE_TIDS[:4])
    ]


def test_an_empty_fibermap_beside_full_arrays_quarantines_the_file(tmp_path: Path) -> None:
    """NAXIS2 = 0 fails the shape check like any other count; with no row to name, the file is one row -1,
    and it balances although the header it would be counted against says 0."""

    def empty(h: fits.HDUList) -> None:
        h["FIBERMAP"] = fits.BinTableHDU(h["FIBERMAP"].data[:0], name="FIBERMAP")

    path = damaged(tmp_path, empty)
    result = read(path, root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result) == [(TILE.name, -1, None, "quarantined", "shape_mismatch")]
    assert result.ledger.column("reason")[0].as_py().startswith("shape_mismatch: B_FLUX (5, 2751) != (0 FIBERMAP")
    summary = summarize_ledger(result.ledger, seconds=0.0, output=path, input_rows=fibermap_rows(str(path)))
    assert fibermap_rows(str(path)) == 0 and (summary.rows_in, summary.quarantined, summary.balanced) == (1, 1, True)


@pytest.mark.parametrize("bad_z", [np.nan, -3.0, np.inf, 6.5])
def test_a_redshift_outside_the_handled_range_quarantines_only_that_row(tmp_path: Path, bad_z: float) -> None:
    """redrock's failed fits (Z = NaN, -3) once became spectra with no rest-frame pixel and finite scores."""
    path = write_redrock(tmp_path / "redrock.fits", np.array(TILE_TIDS))
    with fits.open(path, mode="update") as hdul:
        hdul["REDSHIFTS"].data["Z"][2] = bad_z
    result = read(TILE, path)
    assert [r[1:] for r in ledger_rows(result) if r[3] != "kept"] == [(2, TILE_TIDS[2], "quarantined", "bad_redshift")]
    assert result.ledger.column("reason")[2].as_py() == f"bad_redshift: Z={bad_z:g} outside [0, 6]"
    assert result.spectra.column("TARGETID").to_pylist() == TILE_TIDS[:2] + TILE_TIDS[3:]


def test_a_catalogue_redshift_outside_the_handled_range_quarantines_only_that_row(clean_tile: ReadResult) -> None:
    catalog = read_qso_catalog(str(CAT_TILE))
    z = catalog.z.copy()
    z[catalog.lookup(np.array(TILE_TIDS[1:2]))] = -3.0
    result = read(TILE, qso_catalog=replace(catalog, z=z, _index={}))
    assert [r[1:] for r in ledger_rows(result) if r[3] != "kept"] == [(1, TILE_TIDS[1], "quarantined", "bad_redshift")]
    assert_survivors(result, clean_tile, [0, 2, 3, 4])


def test_a_row_with_no_good_pixel_on_the_rest_grid_is_quarantined(tmp_path: Path) -> None:
    """Good pixels only redward of the rest grid's end (8450 A) at Z = 0: normalized, it would have no
    observed pixel (n_obs = 0) and yet a finite score; it is set aside with the reason instead."""

    def red_only(h: fits.HDUList) -> None:
        h["B_IVAR"].data[3] = 0
        h["R_IVAR"].data[3] = 0
        h["Z_IVAR"].data[3, h["Z_WAVELENGTH"].data < 8500] = 0

    path = write_redrock(tmp_path / "redrock.fits", np.array(TILE_TIDS))
    with fits.open(path, mode="update") as hdul:
        hdul["REDSHIFTS"].data["Z"][3] = 0.0
    result = read(damaged(tmp_path, red_only), path, root=tmp_path)
    assert [r[1:] for r in ledger_rows(result) if r[3] != "kept"] == [
        (3, TILE_TIDS[3], "quarantined", "no_rest_pixels")
    ]
    assert result.ledger.column("reason")[3].as_py() == "no_rest_pixels: none in 800-8452 A rest at Z=0"


def test_nan_at_a_good_pixel_quarantines_only_that_row(tmp_path: Path, clean_tile: ReadResult) -> None:
    def inject(h: fits.HDUList) -> None:
        assert h["R_IVAR"].data[1, 500] > 0 and h["R_MASK"].data[1, 500] == 0
        h["R_FLUX"].data[1, 500] = np.nan

    result = read(damaged(tmp_path, inject), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert ledger_rows(result)[1] == (TILE.name, 1, TILE_TIDS[1], "quarantined", "nonfinite")
    assert [s for *_, s, _ in ledger_rows(result)] == ["kept", "quarantined", "kept", "kept", "kept"]
    assert_survivors(result, clean_tile, [0, 2, 3, 4])


def test_nan_where_ivar_is_zero_is_tolerated(tmp_path: Path, clean_tile: ReadResult) -> None:
    def inject(h: fits.HDUList) -> None:
        h["B_FLUX"].data[2, 100] = np.nan
        h["B_IVAR"].data[2, 100] = 0

    result = read(damaged(tmp_path, inject), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert [s for *_, s, _ in ledger_rows(result)] == ["kept"] * 5
    row = result.spectra.slice(2, 1).to_pylist()[0]
    assert (row["flux"][100], row["ivar"][100], row["good"][100]) == (0.0, 0.0, False)
    assert result.spectra.take([0, 1, 3, 4]).equals(clean_tile.spectra.take([0, 1, 3, 4]))


def test_negative_ivar_quarantines_only_that_row(tmp_path: Path, clean_tile: ReadResult) -> None:
    def negative(h: fits.HDUList) -> None:
        h["Z_IVAR"].data[2, 50] = -1.0

    result = read(damaged(tmp_path, negative), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert [r for r in ledger_rows(result) if r[3] != "kept"] == [
        (TILE.name, 2, TILE_TIDS[2], "quarantined", "negative_ivar")
    ]
    assert_survivors(result, clean_tile, [0, 1, 3, 4])


def test_row_without_good_pixels_is_quarantined(tmp_path: Path, clean_tile: ReadResult) -> None:
    def zero(h: fits.HDUList) -> None:
        for arm in ARMS:
            h[f"{arm}_IVAR"].data[3] = 0

    result = read(damaged(tmp_path, zero), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert [r for r in ledger_rows(result) if r[3] != "kept"] == [
        (TILE.name, 3, TILE_TIDS[3], "quarantined", "no_good_pixels")
    ]
    assert_survivors(result, clean_tile, [0, 1, 2, 4])


def test_duplicate_targetids_quarantine_both_rows(tmp_path: Path, clean_tile: ReadResult) -> None:
    def duplicate(h: fits.HDUList) -> None:
        h["FIBERMAP"].data["TARGETID"][4] = h["FIBERMAP"].data["TARGETID"][3]

    result = read(damaged(tmp_path, duplicate), root=tmp_path, qso_catalog=str(CAT_TILE))
    assert [r for r in ledger_rows(result) if r[3] != "kept"] == [
        (TILE.name, 3, TILE_TIDS[3], "quarantined", "duplicate_targetid"),
        (TILE.name, 4, TILE_TIDS[3], "quarantined", "duplicate_targetid"),
    ]
    assert_survivors(result, clean_tile, [0, 1, 2])


def test_redrock_rows_in_another_order_are_matched_by_targetid(tmp_path: Path) -> None:
    order = [3, 1, 4, 0, 2]
    path = write_redrock(tmp_path / "redrock.fits", np.array(TILE_TIDS)[order])
    with fits.open(path, mode="update") as hdul:
        hdul["REDSHIFTS"].data["Z"] = [1.0 + 0.1 * i for i in order]  # each TARGETID's own redshift
    result = read(TILE, path)
    assert [s for *_, s, _ in ledger_rows(result)] == ["kept"] * 5
    assert result.spectra.column("TARGETID").to_pylist() == TILE_TIDS
    np.testing.assert_allclose(result.spectra.column("Z").to_numpy(), [1.0, 1.1, 1.2, 1.3, 1.4])
    clean = read(TILE, write_redrock(tmp_path / "ok.fits", np.array(TILE_TIDS)))
    assert result.spectra.drop_columns(["Z"]).equals(clean.spectra.drop_columns(["Z"]))


def test_redrock_rows_missing_or_repeated_quarantine_only_those_rows(tmp_path: Path) -> None:
    tids = np.array(TILE_TIDS)
    result = read(TILE, write_redrock(tmp_path / "short.fits", tids[:4]))
    assert [r[1:] for r in ledger_rows(result) if r[3] != "kept"] == [
        (4, TILE_TIDS[4], "quarantined", "redrock_mismatch")
    ]
    assert (
        result.ledger.column("reason")[4].as_py() == f"redrock_mismatch: 0 REDSHIFTS rows with TARGETID={TILE_TIDS[4]}"
    )
    assert result.spectra.column("TARGETID").to_pylist() == TILE_TIDS[:4]
    repeated = read(TILE, write_redrock(tmp_path / "repeated.fits", tids[[0, 1, 2, 3, 4, 2]]))
    assert [r[1] for r in ledger_rows(repeated) if r[3] != "kept"] == [2]
    unreadable = tmp_path / "broken-redrock.fits"
    unreadable.write_bytes(b"\0" * 100)
    assert [r[3:] for r in ledger_rows(read(TILE, unreadable))] == [("quarantined", "bad_redrock")] * 5


def test_a_redrock_file_of_another_pixel_quarantines_only_the_targets_it_lacks(tmp_path: Path) -> None:
    other = write_redrock(tmp_path / "redrock.fits", np.array(TILE_TIDS[:3]))  # another file's targets
    result = read(SV3_26065, other)
    assert [code for *_, code in ledger_rows(result)] == [
        "unassigned_fiber",
        "unassigned_fiber",
        "redrock_mismatch",
        "not_target",
        "redrock_mismatch",
    ]
    assert [s for *_, s, _ in ledger_rows(result)].count("quarantined") == 2  # the two targets, nothing else
    assert result.spectra.num_rows == 0 and lg.accounts_for(result.ledger, 5)


def test_an_unreachable_file_raises_instead_of_being_quarantined(tmp_path: Path) -> None:
    """A missing file is an I/O failure to retry, not bad data."""
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "coadd-missing.fits", root=tmp_path, qso_catalog=str(CAT_TILE))
    with pytest.raises(FileNotFoundError):
        read_coadd((tmp_path / "coadd-missing.fits").as_uri())


def test_a_missing_redrock_file_quarantines_the_coadd_unless_the_catalogue_gives_redshifts(tmp_path: Path) -> None:
    missing = tmp_path / "redrock-sv3-dark-9144.fits"
    without_catalogue = read(HPX, missing)
    assert [r[3:] for r in ledger_rows(without_catalogue)] == [("quarantined", "missing_redrock")] * 2
    assert without_catalogue.spectra.num_rows == 0
    with_catalogue = read(HPX, missing, qso_catalog=str(CAT_HPX))
    assert with_catalogue.spectra.column("Z_SOURCE").to_pylist() == ["qso_catalog"] * 2


@pytest.mark.parametrize("coadd", [TILE, DR1[0]], ids=["tile", "dr1"])
def test_reading_some_rows_gives_those_rows_of_the_full_read(coadd: Path) -> None:
    """Ingestion converts only the candidate quasars' rows; they must be exactly those of a full read."""
    full = read_coadd(str(coadd))
    rows = np.arange(full.nspec)[::-2][: max(1, full.nspec // 2)]  # reversed order, a subset
    for arms in (read_coadd(str(coadd), rows=rows), read_coadd(coadd.as_uri(), rows=rows)):
        assert arms.rows is rows and arms.nspec == full.nspec  # the FIBERMAP keeps every row
        for arm in ARMS:
            for part in ("flux", "ivar", "mask"):
                got, want = getattr(arms, part)[arm], getattr(full, part)[arm][rows]
                assert got.dtype == want.dtype and got.dtype.isnative
                np.testing.assert_array_equal(got, want)


def test_checksum_kernel_matches_the_plain_sum() -> None:
    """The compiled checksum of large HDUs is the FITS ones' complement sum, carries included."""
    from qad_assets.science.io.fits_headers import _KERNEL_WORDS, ones_complement_sum

    rng = np.random.default_rng(3)
    for n in (7, _KERNEL_WORDS, 3 * _KERNEL_WORDS + 5):
        words = rng.integers(0, 2**32, n, dtype=np.uint64).astype(">u4")
        words[:4] = 0xFFFFFFFF  # end-around carries
        total = sum(int(w) for w in words)
        while total >> 32:
            total = (total & 0xFFFFFFFF) + (total >> 32)
        assert ones_complement_sum(words) == ones_complement_sum(words.tobytes()) == total
