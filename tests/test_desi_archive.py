"""Finding healpix coadds in a DESI archive tree, and naming their partitions."""

from pathlib import Path

import pytest

from qad_assets.errors import UserError
from qad_assets.partitions import SpectraPartition
from qad_assets.science.io.archive import find_healpix_coadds, healpix_coadd, list_specprods


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_finds_coadds_in_the_desi_layout_and_ignores_the_rest(tmp_path: Path) -> None:
    for survey, program, pix in [("main", "dark", 27247), ("main", "bright", 9144), ("sv3", "dark", 26065)]:
        c = healpix_coadd(str(tmp_path), "iron", survey, program, pix)
        touch(Path(c.coadd))
        touch(Path(c.redrock))
    healpix = tmp_path / "spectro/redux/iron/healpix"
    touch(healpix / "main/dark/272/27247/spectra-main-dark-27247.fits")  # not a coadd
    touch(healpix / "main/dark/999/27248/coadd-main-dark-27248.fits")  # wrong pixel group folder
    touch(healpix / "main/dark/272/27249/coadd-sv1-dark-27249.fits")  # survey disagrees with folder

    found = find_healpix_coadds(str(tmp_path), "iron")

    assert [(c.survey, c.program, c.healpix) for c in found] == [
        ("main", "bright", 9144),
        ("main", "dark", 27247),
        ("sv3", "dark", 26065),
    ]
    assert found[1].coadd.endswith("spectro/redux/iron/healpix/main/dark/272/27247/coadd-main-dark-27247.fits")
    assert found[1].redrock.endswith("272/27247/redrock-main-dark-27247.fits")
    assert list_specprods(str(tmp_path)) == ["iron"]


def test_an_empty_tree_has_no_productions(tmp_path: Path) -> None:
    assert list_specprods(str(tmp_path)) == []
    assert find_healpix_coadds(str(tmp_path), "iron") == []


def test_partition_keys_round_trip_and_reject_bad_keys() -> None:
    part = SpectraPartition("iron", "main", "dark", 27247)
    assert part.key == "iron_main_dark_27247"
    assert SpectraPartition.from_key(part.key) == part
    for bad in ["iron_main_dark", "Iron_main_dark_1", "iron_main_dark_x", "iron-main-dark-1"]:
        with pytest.raises(UserError, match="not a spectra partition key"):
            SpectraPartition.from_key(bad)
