"""Reading DESI files and the product store: coadds, redshifts, the archive tree, the ledger, Parquet."""

from qad_assets.science.io.archive import HealpixCoadd, find_healpix_coadds, healpix_coadd, list_specprods
from qad_assets.science.io.atomic_files import write_atomic, write_bytes_atomic
from qad_assets.science.io.coadd import CoaddArms, read_coadd
from qad_assets.science.io.parquet_store import iter_tables, read_table, row_count, schema_matches, write_table_atomic
from qad_assets.science.io.redshifts import QsoCatalog, read_qso_catalog, read_redshifts
from qad_assets.science.io.spectra_file import RAW_SPECTRA_SCHEMA, ReadResult, read_spectra_file
from qad_assets.science.spectra import ledger

__all__ = [
    "RAW_SPECTRA_SCHEMA",
    "CoaddArms",
    "HealpixCoadd",
    "QsoCatalog",
    "ReadResult",
    "find_healpix_coadds",
    "healpix_coadd",
    "iter_tables",
    "ledger",
    "list_specprods",
    "read_coadd",
    "read_qso_catalog",
    "read_redshifts",
    "read_spectra_file",
    "read_table",
    "row_count",
    "schema_matches",
    "write_atomic",
    "write_bytes_atomic",
    "write_table_atomic",
]
