"""Writers: DESI coadd and redrock FITS files in the data model's layout, and the Parquet truth table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from astropy.io import fits

from qad_assets.demo.geometry import NSIDE
from qad_assets.demo.instrument import BGS_BRIGHT, FLUX_UNIT, IVAR_UNIT, OBSCONDITIONS, REDROCK_TEMPLATES
from qad_assets.demo.pixel import Pixel
from qad_assets.demo.plan import FILTER_REASON, QUARANTINE_ROWS, TRUE_CLASS, PixelPlan
from qad_assets.demo.sources import BANDS
from qad_assets.science.io.atomic_files import write_atomic
from qad_assets.science.spectra.arms import ARMS

GENERATOR = "qad_assets.demo"
GENERATOR_VERSION = "1"


SURVEY = "main"


def _primary(plan: PixelPlan, release: str, seed: int, extra: list[tuple[object, ...]]) -> fits.PrimaryHDU:
    """PRIMARY header of a healpix coadd or redrock file (no dates or checksums: reproducible bytes)."""
    hdu = fits.PrimaryHDU()
    cards = [
        *extra,
        ("SPGRP", "healpix"),
        ("SPGRPVAL", plan.healpix),
        ("HPXPIXEL", plan.healpix),
        ("HPXNSIDE", NSIDE),
        ("HPXNEST", True),
        ("SURVEY", SURVEY),
        ("PROGRAM", plan.program),
        ("DEPNAM00", "desi-qad-demo"),
        ("DEPVER00", f"{GENERATOR} v{GENERATOR_VERSION}"),
        ("DEPNAM01", "SPECPROD"),
        ("DEPVER01", release),
        ("DEMOSEED", seed, "seed of the synthetic demo release"),
    ]
    for card in cards:
        hdu.header[card[0]] = card[1:] if len(card) > 2 else card[1]
    hdu.header["COMMENT"] = f"Synthetic demo data written by {GENERATOR}; not a DESI observation."
    return hdu


def _table(name: str, columns: list[tuple[str, str, np.ndarray]]) -> fits.BinTableHDU:
    return fits.BinTableHDU.from_columns([fits.Column(name=c, format=f, array=a) for c, f, a in columns], name=name)


def _fibermap(pixel: Pixel, plan: PixelPlan) -> fits.BinTableHDU:
    cat = pixel.cat
    n = len(cat["role"])
    tgt = ~np.isin(cat["role"], ("unassigned", "sky"))
    assigned = cat["role"] != "unassigned"
    zeros = np.zeros(n)
    is_galaxy = cat["role"] == "galaxy"
    ivar = {"g": 600.0, "r": 250.0, "z": 60.0}
    fiber_frac = np.where(is_galaxy, 0.45, cat["psf_to_fiber"])
    bright = plan.program == "bright"
    flux = {b: np.where(tgt, cat[f"flux_{b}"], 0.0) for b in BANDS}
    cols = [
        ("TARGETID", "K", cat["targetid"]),
        ("COADD_FIBERSTATUS", "J", cat["fiberstatus"]),
        ("TARGET_RA", "D", cat["ra"]),
        ("TARGET_DEC", "D", cat["dec"]),
        ("PMRA", "E", zeros),
        ("PMDEC", "E", zeros),
        ("REF_EPOCH", "E", np.where(tgt, 2015.5, 0.0)),
        ("FA_TARGET", "K", cat["desi_target"]),
        ("FA_TYPE", "B", np.select([tgt, cat["role"] == "sky"], [1, 4], 0)),
        ("OBJTYPE", "3A", np.select([tgt, cat["role"] == "sky"], ["TGT", "SKY"], "")),
        ("SUBPRIORITY", "D", np.where(assigned, cat["subpriority"], 0.0)),
        ("OBSCONDITIONS", "J", np.where(assigned, OBSCONDITIONS[plan.program], 0)),
        ("RELEASE", "I", np.where(assigned, cat["release"], 0)),
        ("BRICKNAME", "8A", np.where(assigned, cat["brickname"], "")),
        ("BRICKID", "J", np.where(assigned, cat["brickid"], 0)),
        ("BRICK_OBJID", "J", np.where(assigned, cat["objid"], 0)),
        ("MORPHTYPE", "4A", np.select([is_galaxy, tgt], [np.where(cat["is_elg"], "EXP", "DEV"), "PSF"], "")),
        ("EBV", "E", np.where(assigned, cat["ebv_mw"], 0.0)),
        *[(f"FLUX_{b.upper()}", "E", flux[b]) for b in BANDS],
        *[(f"FLUX_IVAR_{b.upper()}", "E", np.where(tgt, ivar[b], 0.0)) for b in BANDS],
        *[(f"FIBERFLUX_{b.upper()}", "E", flux[b] * fiber_frac) for b in BANDS],
        ("MASKBITS", "I", np.zeros(n, dtype=np.int16)),
        ("PHOTSYS", "1A", np.where(tgt, cat["photsys"], "")),
        ("PRIORITY_INIT", "K", np.select([is_galaxy & tgt, tgt, cat["role"] == "sky"], [3200, 3400, -1], 0)),
        ("NUMOBS_INIT", "K", np.select([is_galaxy & tgt, tgt, cat["role"] == "sky"], [2, 4, -1], 0)),
        ("DESI_TARGET", "K", cat["desi_target"]),
        ("BGS_TARGET", "K", np.where(tgt & bright, BGS_BRIGHT, 0)),
        ("MWS_TARGET", "K", np.zeros(n, dtype=np.int64)),
        ("SCND_TARGET", "K", np.zeros(n, dtype=np.int64)),
        ("PLATE_RA", "D", cat["ra"]),
        ("PLATE_DEC", "D", cat["dec"]),
        ("COADD_NUMEXP", "I", cat["nexp"]),
        ("COADD_EXPTIME", "E", cat["exptime"]),
        ("COADD_NUMNIGHT", "I", cat["numnight"]),
        ("COADD_NUMTILE", "I", cat["numtile"]),
        ("MEAN_FIBER_RA", "D", cat["ra"]),
        ("MEAN_FIBER_DEC", "D", cat["dec"]),
        ("MEAN_PSF_TO_FIBER_SPECFLUX", "E", np.where(assigned, cat["psf_to_fiber"], 0.0)),
    ]
    return _table("FIBERMAP", cols)


def _exp_fibermap(pixel: Pixel) -> fits.BinTableHDU:
    formats = {"TARGETID": "K", "NIGHT": "J", "EXPID": "J", "MJD": "D", "TILEID": "J", "EXPTIME": "D"}
    formats |= {"PETAL_LOC": "I", "DEVICE_LOC": "J", "LOCATION": "K", "FIBER": "J", "FIBERSTATUS": "J"}
    formats |= {"FIBER_RA": "D", "FIBER_DEC": "D"}
    return _table("EXP_FIBERMAP", [(k, formats[k], v) for k, v in pixel.exposures.items()])


def coadd_hdus(pixel: Pixel, plan: PixelPlan, release: str, seed: int, *, resolution: bool = True) -> fits.HDUList:
    """The coadd's HDUs; ``resolution=False`` leaves out the RESOLUTION HDUs (three quarters of a coadd's bytes,
    never read by the pipeline), so that a release of a hundred thousand spectra fits on a small disk."""
    hdus: list[fits.hdu.base.ExtensionHDU] = [_fibermap(pixel, plan), _exp_fibermap(pixel)]
    for arm, d in pixel.arms.items():
        hdus.append(fits.ImageHDU(d["wave"], name=f"{arm}_WAVELENGTH"))
        hdus[-1].header["BUNIT"] = "Angstrom"
        hdus.append(fits.ImageHDU(d["flux"].astype(np.float32), name=f"{arm}_FLUX"))
        hdus[-1].header["BUNIT"] = FLUX_UNIT
        hdus.append(fits.ImageHDU(d["ivar"].astype(np.float32), name=f"{arm}_IVAR"))
        hdus[-1].header["BUNIT"] = IVAR_UNIT
        hdus.append(fits.ImageHDU(d["mask"], name=f"{arm}_MASK"))  # uint32 -> int32 + BZERO
        if resolution:
            hdus.append(fits.ImageHDU(d["resolution"], name=f"{arm}_RESOLUTION"))
    cat = pixel.cat
    scores = [("TARGETID", "K", cat["targetid"])]
    for arm in ARMS:
        scores += [
            (f"INTEG_COADD_FLUX_{arm}", "E", cat[f"integ_flux_{arm}"]),
            (f"MEDIAN_COADD_FLUX_{arm}", "E", cat[f"median_flux_{arm}"]),
            (f"MEDIAN_COADD_SNR_{arm}", "E", cat[f"median_snr_{arm}"]),
        ]
    scores += [("TSNR2_QSO", "E", cat["tsnr2_qso"]), ("TSNR2_LYA", "E", cat["tsnr2_lya"])]
    hdus.append(_table("SCORES", scores))
    return fits.HDUList([_primary(plan, release, seed, []), *hdus])


def redrock_hdus(pixel: Pixel, plan: PixelPlan, release: str, seed: int) -> fits.HDUList:
    templates: list[tuple[object, ...]] = [("RRVER", "0.17.0", "DR1 redrock format; not a redrock run")]
    for i, (name, version) in enumerate(REDROCK_TEMPLATES):
        templates += [(f"TEMNAM{i:02d}", name), (f"TEMVER{i:02d}", version)]
    rr = pixel.redshifts
    formats = {"TARGETID": "K", "Z": "D", "ZERR": "D", "ZWARN": "K", "CHI2": "D", "COEFF": "10D"}
    formats |= {"NPIXELS": "K", "SPECTYPE": "6A", "SUBTYPE": "20A", "NCOEFF": "K", "DELTACHI2": "D"}
    redshifts = _table("REDSHIFTS", [(k, formats[k], rr[k]) for k in formats])
    cat = pixel.cat
    tsnr2 = _table(
        "TSNR2",
        [("TARGETID", "K", cat["targetid"])]
        + [(f"TSNR2_{k.upper()}", "E", cat[f"tsnr2_{k}"]) for k in ("elg", "lrg", "qso", "lya")],
    )
    return fits.HDUList(
        [
            _primary(plan, release, seed, templates),
            redshifts,
            _fibermap(pixel, plan),
            _exp_fibermap(pixel),
            tsnr2,
        ]
    )


def write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write atomically, so a reader never sees a partial file."""
    write_atomic(path, lambda tmp: hdul.writeto(tmp, overwrite=True))


def truth_table(pixel: Pixel, plan: PixelPlan, file: str) -> pa.Table:
    """One row per FIBERMAP row: what it is and what the reader must do with it."""
    cat, rr = pixel.cat, pixel.redshifts
    role = cat["role"]
    n = len(role)
    broken = np.isin(role, list(QUARANTINE_ROWS))
    status = np.where(broken, "quarantined", np.where(np.isin(role, list(FILTER_REASON)), "filtered", "kept"))
    reason = np.array([FILTER_REASON.get(r, r if r in QUARANTINE_ROWS else "") for r in role])
    true_class = np.array([TRUE_CLASS.get(r, "broken") for r in role])
    has_anomaly = cat["anomaly"] != ""
    no_flux = np.isin(role, ("sky", "unassigned"))
    objtype = np.select([role == "unassigned", role == "sky"], ["", "SKY"], "TGT")
    return pa.table(
        {
            "TARGETID": pa.array(cat["targetid"], pa.int64()),
            "file": pa.array([file] * n, pa.string()),
            "row": pa.array(np.arange(n), pa.int32()),
            "healpix": pa.array(np.full(n, plan.healpix), pa.int32()),
            "survey": pa.array([SURVEY] * n, pa.string()),
            "program": pa.array([plan.program] * n, pa.string()),
            "objtype": pa.array(objtype, pa.string()),
            "true_class": pa.array(true_class, pa.string()),
            "z_true": pa.array(cat["z"], pa.float64()),
            "z_catalog": pa.array(rr["Z"], pa.float64()),
            "spectype": pa.array(rr["SPECTYPE"], pa.string()),
            "zwarn": pa.array(rr["ZWARN"], pa.int64()),
            "anomaly_class": pa.array(cat["anomaly"].tolist(), pa.string(), mask=~has_anomaly),
            "anomaly_strength": pa.array(cat["strength"], pa.float64(), mask=~has_anomaly),
            "anomaly_detail": pa.array(cat["details"].tolist(), pa.string(), mask=~has_anomaly),
            "expected_status": pa.array(status, pa.string()),
            "expected_reason": pa.array(reason, pa.string()),
            "r_mag": pa.array(cat["rmag"], pa.float32(), mask=no_flux | ~np.isfinite(cat["rmag"])),
            "median_snr": pa.array(cat["median_snr"], pa.float32(), mask=~np.isfinite(cat["median_snr"])),
            "absorbers": pa.array(cat["absorbers"].tolist(), pa.string(), mask=cat["absorbers"] == ""),
        }
    )
