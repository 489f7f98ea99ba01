"""Damaged and misplaced input: each case is set aside with a reason that names the file and what is wrong,
and nothing else is lost. Real DESI files (tests/data/desi) damaged in ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fitsio
import numpy as np
import pytest

from qad_assets.cli import main
from qad_assets.errors import UserError
from qad_assets.science.io.archive import healpix_coadd, healpix_dir, scan_healpix_coadds
from qad_assets.science.io.fits_headers import fibermap_rows
from qad_assets.science.io.parquet_store import read_table
from qad_assets.science.io.spectra_file import ReadResult, read_spectra_file
from qad_assets.science.partition_steps import ingest_healpix_coadd
from qad_assets.science.spectra import ledger as lg
from resources.storage import StorageResource

DESI = Path(__file__).parent / "data" / "desi"
#: A real EDR healpix coadd that records DATASUM/CHECKSUM in every HDU: 5 rows (2 targets, a sky fiber,
#: 2 unassigned fibers).
CHECKSUMMED = DESI / "specutils/coadd-sv3-dark-26065.fits"
CATALOG = DESI / "picca/QSO_cat_fuji_dark_healpix.fits.gz"
#: A real DR2 healpix coadd and its redrock file (special/dark pixel 27247, one galaxy).
DR2 = (DESI / "fastspecfit/coadd-special-dark-27247.fits", DESI / "fastspecfit/redrock-special-dark-27247.fits")


def read(path: Path | str, **kw) -> ReadResult:
    return read_spectra_file(str(path), None, release="fuji", qso_catalog=str(CATALOG), **kw)


def reasons(result: ReadResult) -> list[str]:
    return result.ledger.column("reason").to_pylist()


def hdu_offsets(path: Path, name: str) -> dict[str, int]:
    with fitsio.FITS(str(path)) as f:
        return f[name].get_offsets()


def flip_exponent_bits(src: Path, dst: Path, hdu: str = "B_FLUX", pixels: int = 8) -> Path:
    """One exponent bit flipped in ``pixels`` float32 pixels of every row: finite values, off by 2x."""
    data = bytearray(src.read_bytes())
    start = hdu_offsets(src, hdu)["data_start"]
    with fitsio.FITS(str(src)) as f:
        nrow, npix = f[hdu].get_dims()
    for row in range(nrow):
        for pixel in np.linspace(100, npix - 100, pixels).astype(int):
            data[start + 4 * (row * npix + pixel) + 1] ^= 0x80  # the lowest exponent bit
    dst.write_bytes(bytes(data))
    return dst


def test_flipped_bits_fail_the_recorded_checksum_and_quarantine_the_file(tmp_path: Path) -> None:
    clean = read(CHECKSUMMED)
    assert set(lg.counts(clean.ledger)) and lg.counts(clean.ledger)["quarantined"] == 0
    damaged = flip_exponent_bits(CHECKSUMMED, tmp_path / CHECKSUMMED.name)
    for path in (str(damaged), damaged.as_uri()):  # fitsio + memory map, and astropy on fsspec
        result = read(path)
        assert result.ledger.column("status").to_pylist() == ["quarantined"] * 5
        assert result.ledger.column("TARGETID").to_pylist() == clean.ledger.column("TARGETID").to_pylist()
        (why,) = set(reasons(result))
        assert why.startswith("checksum_mismatch: B_FLUX: DATASUM"), why
        assert result.spectra.num_rows == 0


def test_a_file_without_checksums_is_read_as_before(tmp_path: Path) -> None:
    tile = DESI / "picca/coadd-1-80693-thru20210204.fits"  # its arm HDUs record no checksum
    copy = tmp_path / tile.name
    shutil.copy(tile, copy)
    result = read_spectra_file(
        str(copy), None, release="fuji", qso_catalog=str(DESI / "picca/QSO_cat_fuji_dark_tile.fits.gz")
    )
    assert lg.counts(result.ledger)["kept"] == 5


def set_card(src: Path, dst: Path, hdu: str, key: str, value: int) -> Path:
    """A copy of ``src`` whose ``hdu`` header card ``key`` says ``value``, the bytes otherwise untouched."""
    data = bytearray(src.read_bytes())
    offsets = hdu_offsets(src, hdu)
    for at in range(offsets["header_start"], offsets["data_start"], 80):
        if data[at : at + 8].rstrip() == key.encode():
            data[at : at + 80] = f"{key:<8}= {value:>20}".ljust(80).encode()
    dst.write_bytes(bytes(data))
    return dst


def test_a_file_cut_inside_its_fibermap_has_no_trusted_row_count(tmp_path: Path) -> None:
    """The header still announces 5 rows, but its table does not fit in what is left of the file: a cut
    and a corrupt NAXIS2 look alike, so the file is one row -1 and the reason gives the figures."""
    fibermap = hdu_offsets(CHECKSUMMED, "FIBERMAP")
    path = tmp_path / "coadd.fits"
    path.write_bytes(CHECKSUMMED.read_bytes()[: fibermap["data_start"] + 100])
    result = read(path)
    assert fibermap_rows(str(path)) is None
    assert result.ledger.column("row").to_pylist() == [-1]
    assert reasons(result) == [
        "corrupt_fits: truncated: file ends inside the data of HDU 1 (FIBERMAP): NAXIS1=341 x NAXIS2=5 "
        "announce 1705 bytes, 100 are left"
    ]
    assert lg.accounts_for(result.ledger, 5)


@pytest.mark.parametrize("naxis2", [10**6, 10**18])
def test_a_fibermap_announcing_more_rows_than_the_file_holds_is_one_bounded_row(
    archive: Path, tmp_path: Path, naxis2: int
) -> None:
    """NAXIS2 = 10**18 once made ingestion allocate a ledger row per announced row (MemoryError; 10**9
    took 9 GB): the file is quarantined with the figures, one row -1, and balances against that row."""
    place(archive, *DR2, "special", "dark", 27247)
    coadd = healpix_coadd(str(archive), "iron", "special", "dark", 27247).coadd
    set_card(DR2[0], Path(coadd), "FIBERMAP", "NAXIS2", naxis2)
    assert fibermap_rows(coadd) is None
    summary, ledger = ingest(archive, tmp_path / "s", "special", "dark", 27247)
    assert ledger.column("row").to_pylist() == [-1]
    (why,) = ledger.column("reason").to_pylist()
    assert why.startswith("corrupt_fits: truncated: file ends inside the data of HDU 1 (FIBERMAP): NAXIS1="), why
    assert f" x NAXIS2={naxis2} announce " in why and why.endswith(" are left"), why
    assert (summary.rows_in, summary.quarantined, summary.balanced) == (1, 1, True)


def test_a_file_cut_inside_a_header_says_so_rather_than_missing_hdu(tmp_path: Path) -> None:
    path = tmp_path / "coadd.fits"
    path.write_bytes(CHECKSUMMED.read_bytes()[: hdu_offsets(CHECKSUMMED, "FIBERMAP")["header_start"] + 2880])
    (why,) = reasons(read(path))
    assert why.startswith("corrupt_fits: truncated: file ends inside the header of HDU 1 (after PRIMARY)"), why


def test_random_bytes_over_a_header_name_the_hdu(tmp_path: Path) -> None:
    data = bytearray(CHECKSUMMED.read_bytes())
    start = hdu_offsets(CHECKSUMMED, "B_WAVELENGTH")["header_start"]
    data[start + 800 : start + 1600] = np.random.default_rng(0).integers(128, 256, 800, dtype=np.uint8).tobytes()
    path = tmp_path / "coadd.fits"
    path.write_bytes(bytes(data))
    result = read(path)
    assert set(reasons(result)) == {
        "corrupt_fits: HDU 3 (after EXP_FIBERMAP): header card 11 holds bytes that are not FITS text"
    }
    assert result.ledger.num_rows == 5  # the FIBERMAP header before it still counts the rows


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def place(archive: Path, coadd: Path, redrock: Path, survey: str, program: str, healpix: int) -> None:
    """Copy a coadd and its redrock file to the archive place of (survey, program, healpix)."""
    where = healpix_coadd(str(archive), "iron", survey, program, healpix)
    Path(where.coadd).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(coadd, where.coadd)
    shutil.copy(redrock, where.redrock)


def ingest(archive: Path, storage: Path, survey: str, program: str, healpix: int):
    key = f"iron_{survey}_{program}_{healpix}"
    summary = ingest_healpix_coadd(
        healpix_coadd(str(archive), "iron", survey, program, healpix),
        release="iron",
        out=storage / f"{key}.parquet",
        ledger_out=storage / "ledger" / f"{key}.parquet",
        archive_root=str(archive),
    )
    return summary, read_table(storage / "ledger" / f"{key}.parquet")


def test_a_header_pixel_or_survey_other_than_the_path_quarantines_the_file(archive: Path, tmp_path: Path) -> None:
    place(archive, *DR2, "special", "dark", 27247)  # where it belongs
    place(archive, *DR2, "special", "dark", 27248)  # HPXPIXEL 27247 under pixel 27248
    place(archive, *DR2, "main", "dark", 27247)  # SURVEY special under main
    good, ledger = ingest(archive, tmp_path / "s", "special", "dark", 27247)
    assert (good.filtered, good.quarantined) == (1, 0)  # a galaxy, filtered as not_qso
    summary, ledger = ingest(archive, tmp_path / "s", "special", "dark", 27248)
    assert summary.quarantined == 1 and summary.balanced
    assert ledger.column("reason").to_pylist() == [
        "header_mismatch: HPXPIXEL=27247 in the header but 27248 from the file's path"
    ]
    _, ledger = ingest(archive, tmp_path / "s", "main", "dark", 27247)
    assert ledger.column("reason").to_pylist() == [
        "header_mismatch: SURVEY='special' in the header but 'main' from the file's path"
    ]


@pytest.mark.parametrize("kind", ["directory", "symlink loop"])
def test_a_directory_or_a_link_loop_in_place_of_a_coadd_is_quarantined(archive: Path, tmp_path: Path, kind) -> None:
    where = healpix_coadd(str(archive), "iron", "special", "dark", 27247)
    Path(where.coadd).parent.mkdir(parents=True)
    if kind == "directory":
        os.mkdir(where.coadd)
    else:
        os.symlink(where.coadd + ".other", where.coadd)
        os.symlink(where.coadd, where.coadd + ".other")
    shutil.copy(DR2[1], where.redrock)
    assert [c.healpix for c in scan_healpix_coadds(str(archive), "iron").coadds] == [27247]
    summary, ledger = ingest(archive, tmp_path / "s", "special", "dark", 27247)
    expected = "not_a_file: a directory" if kind == "directory" else "not_a_file: a symbolic link loop"
    assert ledger.column("reason").to_pylist() == [expected]
    assert (summary.quarantined, summary.balanced) == (1, True)


def test_ledger_balance_is_checked_against_the_fibermap_header(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place(archive, *DR2, "special", "dark", 27247)
    summary, _ = ingest(archive, tmp_path / "s", "special", "dark", 27247)
    assert summary.rows_in == 1 and summary.balanced

    import qad_assets.science.partition_steps as steps

    real = steps.read_spectra_file

    def losing_a_row(*args, **kwargs) -> ReadResult:  # a bug that drops a row from the ledger
        result = real(*args, **kwargs)
        return ReadResult(result.spectra, result.ledger.slice(0, 0))

    monkeypatch.setattr(steps, "read_spectra_file", losing_a_row)
    summary, _ = ingest(archive, tmp_path / "s2", "special", "dark", 27247)
    assert summary.rows_in == 1 and (summary.kept, summary.filtered, summary.quarantined) == (0, 0, 0)
    assert not summary.balanced


def test_the_scan_lists_what_it_skipped_and_why(archive: Path) -> None:
    place(archive, *DR2, "special", "dark", 27247)
    healpix = archive / "spectro/redux/iron/healpix"
    for wrong in (
        "special/dark/272/coadd-special-dark-27249.fits",  # one folder too high
        "special/dark/999/27250/coadd-special-dark-27250.fits",  # wrong pixel group
        "special/dark/272/27251/coadd-sv1-dark-27251.fits",  # survey disagrees with the folder
        "special/dark/272/27252/coadd_special_dark_27252.fits",  # name off the pattern
        "special/dark/272/27253/coadd-special-dark-27253.fits.gz",
        "weird/dark/272/27254/coadd-weird-dark-27254.fits",  # unknown survey
    ):
        (healpix / wrong).parent.mkdir(parents=True, exist_ok=True)
        (healpix / wrong).write_bytes(b"")
    scan = scan_healpix_coadds(str(archive), "iron")
    assert [c.healpix for c in scan.coadds] == [27247]
    assert dict(scan.skipped) == {
        "special/dark/272/coadd-special-dark-27249.fits": "in special/dark/272/, expected special/dark/272/27249/ "
        "for this name",
        "special/dark/999/27250/coadd-special-dark-27250.fits": "in special/dark/999/27250/, expected "
        "special/dark/272/27250/ for this name",
        "special/dark/272/27251/coadd-sv1-dark-27251.fits": "in special/dark/272/27251/, expected "
        "sv1/dark/272/27251/ for this name",
        "special/dark/272/27252/coadd_special_dark_27252.fits": "name does not follow "
        "coadd-<survey>-<program>-<healpix>.fits",
        "special/dark/272/27253/coadd-special-dark-27253.fits.gz": "name does not follow "
        "coadd-<survey>-<program>-<healpix>.fits",
        "weird/dark/272/27254/coadd-weird-dark-27254.fits": "unknown survey 'weird' (one of cmx, main, special, "
        "sv1, sv2, sv3)",
    }


def test_qad_run_lists_the_skipped_entries(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    place(archive, *DR2, "special", "dark", 27247)
    misplaced = archive / "spectro/redux/iron/healpix/special/dark/coadd-special-dark-1.fits"
    misplaced.write_bytes(b"")
    monkeypatch.setattr("qad_assets.cli.commands.materialize", lambda *args: [])
    assert main(["run", "--archive", str(archive), "--storage", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "release iron: 1 partitions" in err
    assert "skipped 1 entries under" in err
    assert "special/dark/coadd-special-dark-1.fits: in special/dark/, expected special/dark/0/1/ for this name" in err


# --- names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--release", "ünï"), ("--release", "Iron"), ("--specprod", "../../../x"), ("--release", "../..")],
)
def test_bad_release_and_specprod_names_are_refused_up_front(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, option, value
) -> None:
    place(archive, *DR2, "special", "dark", 27247)
    outside = tmp_path / "x/healpix/special/dark/272/27247"  # what ../../../x would reach from spectro/redux
    outside.mkdir(parents=True)
    shutil.copy(DR2[0], outside / DR2[0].name)
    ran = []
    monkeypatch.setattr("qad_assets.cli.commands.materialize", lambda *args: ran.append(args) or [])
    assert main(["run", "--archive", str(archive), "--storage", str(tmp_path / "s"), option, value]) == 2
    assert f"name {value!r} must be 1 to 32 lower-case ASCII letters and digits" in capsys.readouterr().err
    assert not ran


def test_names_are_checked_where_they_become_paths(tmp_path: Path) -> None:
    storage = StorageResource(root=str(tmp_path))
    assert storage.asset_dir("vae_model", "iron") == tmp_path / "vae_model" / "iron"
    for bad in ("../..", "ünï", "a/b", ""):
        with pytest.raises(UserError, match="must be 1 to 32 lower-case ASCII"):
            storage.asset_dir("vae_model", bad)
        with pytest.raises(UserError, match="specprod name"):
            healpix_dir(str(tmp_path), bad, "main", "dark", 1)


# --- through the pipeline -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_partitions_are_quarantined_and_the_others_are_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qad_spectra over a release whose second coadd is a directory and whose third names another pixel:
    the run succeeds, the damaged partitions are valid zero-row products in every stage, and the good one
    is byte for byte what it is in an undamaged release.
    """
    import dagster as dg
    from astropy.io import fits

    from qad_assets.definitions import defs
    from qad_assets.demo.release import write_demo_release
    from qad_assets.partitions import archive_partition_keys, range_tags

    archive = tmp_path / "archive"
    demo = write_demo_release(archive, n_pixels=3, targets_per_pixel=40, seed=2)
    keys = archive_partition_keys(str(archive), "demo")

    def spectra_run(storage: Path) -> dg.ExecuteInProcessResult:
        monkeypatch.setenv("QAD_STORAGE", str(storage))
        monkeypatch.setenv("QAD_ARCHIVE", str(archive))
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("spectra_partitions", keys)
            return defs.resolve_job_def("qad_spectra").execute_in_process(
                instance=instance, tags=range_tags(keys[0], keys[-1]), raise_on_error=False
            )

    assert spectra_run(tmp_path / "clean").success
    directory, moved = demo.coadd_paths[1], demo.coadd_paths[2]
    directory.unlink()
    directory.mkdir()
    with fits.open(moved, mode="update") as hdul:
        hdul[0].header["HPXPIXEL"] = hdul[0].header["HPXPIXEL"] + 1
    result = spectra_run(tmp_path / "damaged")
    assert result.success
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks[("raw_spectra", "ledger_balances")] and not checks[("raw_spectra", "quarantine_empty")]
    good, *bad = sorted(keys, key=lambda k: [p.parent.name for p in demo.coadd_paths].index(k.rsplit("_", 1)[1]))
    for asset in ("raw_spectra", "normalized_spectra", "spectral_features"):
        clean = tmp_path / "clean" / asset / "demo"
        damaged = tmp_path / "damaged" / asset / "demo"
        assert (damaged / f"{good}.parquet").read_bytes() == (clean / f"{good}.parquet").read_bytes(), asset
        for key in bad:
            table = read_table(damaged / f"{key}.parquet")
            assert table.num_rows == 0 and table.schema == read_table(clean / f"{good}.parquet").schema, asset
    ledgers = {key: read_table(tmp_path / "damaged/raw_spectra/demo/ledger" / f"{key}.parquet") for key in bad}
    assert ledgers[bad[0]].column("reason").to_pylist() == ["not_a_file: a directory"]
    (why,) = set(ledgers[bad[1]].column("reason").to_pylist())
    assert why.startswith("header_mismatch: HPXPIXEL=") and ledgers[bad[1]].num_rows == 40
