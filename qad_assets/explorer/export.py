"""Candidate lists as CSV, FITS and VOTable (astropy), ready for TOPCAT and for cross-matching.

Each file carries the position (RA/Dec in degrees, with units and the UCDs TOPCAT uses to find the sky
columns), TARGETID, redshift, the scores, the current label with its note, author and time, and a link to
the Legacy Survey sky viewer at the candidate's position. FITS is ASCII-only by standard: characters
outside ASCII in a note are written as ``?`` there (CSV and VOTable keep them).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import polars as pl
from astropy.io.votable import from_table
from astropy.table import MaskedColumn, Table

Format = Literal["csv", "fits", "votable"]
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv",
    "fits": "application/fits",
    "votable": "application/x-votable+xml",
}
SUFFIX: dict[str, str] = {"csv": "csv", "fits": "fits", "votable": "vot"}
LEGACY_VIEWER = (
    "https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=16&mark={ra:.6f},{dec:.6f}"
)
LEGACY_VIEWER_FORMAT = "https://www.legacysurvey.org/viewer?ra={}&dec={}&layer=ls-dr10&zoom=16&mark={},{}"

#: Exported columns (those the view has), their unit and UCD.
COLUMNS: dict[str, tuple[str | None, str]] = {
    "TARGETID": (None, "meta.id;meta.main"),
    "RA": ("deg", "pos.eq.ra;meta.main"),
    "DEC": ("deg", "pos.eq.dec;meta.main"),
    "Z": (None, "src.redshift"),
    "snr": (None, "stat.snr"),
    "anomaly_score": (None, "stat.value"),
    "p_value": (None, "stat.probability"),
    "rank": (None, "meta.number"),
    "priority_rank": (None, "meta.number"),
    "top_component": (None, "meta.code"),
    "top_region": (None, "meta.code"),
    "civ_bi": ("km/s", "phys.veloc"),
    "label": (None, "meta.code.class"),
    "note": (None, "meta.note"),
    "author": (None, "meta.curation"),
    "labelled_at": (None, "time.creation"),
    "legacy_viewer": (None, "meta.ref.url"),
}


def legacy_viewer_url(ra: float | None, dec: float | None) -> str:
    """The DESI Legacy Imaging Surveys sky viewer centred and marked at (ra, dec); empty without a position."""
    if ra is None or dec is None or not (np.isfinite(ra) and np.isfinite(dec)):
        return ""
    return LEGACY_VIEWER.format(ra=ra, dec=dec)


def export_table(view: pl.DataFrame) -> Table:
    """The astropy table of a view: the exported columns it has, units and UCDs set, nulls masked."""
    if {"RA", "DEC"} <= set(view.columns):
        ra, dec = pl.col("RA").round(6).cast(pl.String), pl.col("DEC").round(6).cast(pl.String)
        url = pl.format(LEGACY_VIEWER_FORMAT, ra, dec, ra, dec)
        view = view.with_columns(
            pl.when(pl.col("RA").is_finite() & pl.col("DEC").is_finite()).then(url).alias("legacy_viewer")
        )
    table = Table()
    for name, (unit, ucd) in COLUMNS.items():
        if name not in view.columns:
            continue
        series = view[name]
        if series.dtype == pl.String:
            column = MaskedColumn(series.fill_null("").to_numpy().astype(str), name=name)
        else:
            values = series.cast(pl.Float64 if series.dtype.is_float() else pl.Int64)
            mask = values.is_null().to_numpy()
            filled = values.fill_null(np.nan if series.dtype.is_float() else -1).to_numpy()
            column = MaskedColumn(filled, name=name, mask=mask if mask.any() else None)
        column.unit = unit
        column.meta["ucd"] = ucd
        table[name] = column
    return table


def export_bytes(view: pl.DataFrame, fmt: Format) -> bytes:
    """The view as a file of format ``fmt``."""
    table = export_table(view)
    buffer = io.BytesIO()
    if fmt == "csv":
        text = io.StringIO()
        table.write(text, format="ascii.csv")
        return text.getvalue().encode()
    if fmt == "fits":
        for name in table.colnames:
            if table[name].dtype.kind == "U":
                table[name] = np.char.encode(table[name].astype(str), "ascii", "replace")
        table.write(buffer, format="fits")
        return buffer.getvalue()
    votable = from_table(table)
    for field in votable.get_first_table().fields:
        field.ucd = COLUMNS[field.name][1]
    votable.to_xml(buffer)
    return buffer.getvalue()
