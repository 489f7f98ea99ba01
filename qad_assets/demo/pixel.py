"""One HEALPix pixel of the release: catalogue, noiseless models, observation, redshifts."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from qad_assets.demo.absorbers import line_of_sight
from qad_assets.demo.anomalies import (
    INTRINSIC_ANOMALIES,
    MIN_Z,
    artifact,
    star_as_qso_types,
    superposition,
    wrong_z,
)
from qad_assets.demo.geometry import bricks, make_targetid, nest_pixel_radec
from qad_assets.demo.instrument import (
    DESI_BGS_ANY,
    DESI_ELG,
    DESI_LRG,
    DESI_QSO,
    DESI_SKY,
    FIBERSTATUS_BADPOSITION,
    FIBERSTATUS_UNASSIGNED,
    SCORE_WINDOWS,
    ZWARN_NODATA,
    ZWARN_SKY,
    ZWARN_SMALL_DELTA_CHI2,
    observe,
)
from qad_assets.demo.plan import QSO_ROLES, Arms, Columns, PixelPlan
from qad_assets.demo.settings import DemoSettings
from qad_assets.demo.sources import (
    BANDS,
    band_nmgy,
    ccm_extinction,
    draw_mag,
    draw_qso_z,
    galaxy_spectra,
    quasar_params,
    quasar_spectra,
    scale_to_rmag,
    star_spectra,
    templates,
)
from qad_assets.science.io.coadd import CoaddArms
from qad_assets.science.spectra.arms import BRZ_WAVE, WAVE_STEP, merge_arms
from qad_assets.science.spectra.rest_frame import C_KMS
from qad_assets.science.spectra.snr import masked_median

#: pixels per cycle of OBJID ranges and observing dates (5000 OBJIDs per pixel; OBJID has 22 bits)
OBJID_CYCLE = 800
EXPOSURE_SPEED_SPREAD = 0.5  # lognormal σ of the survey speed of an exposure (observing conditions)


@dataclass
class Pixel:
    cat: Columns  # per-row catalogue and truth
    arms: Arms
    exposures: Columns  # EXP_FIBERMAP
    redshifts: Columns  # REDSHIFTS


def simulate_pixel(plan: PixelPlan, rng: np.random.Generator, settings: DemoSettings) -> Pixel:
    """Draw the objects of one healpix pixel, their spectra and their redrock results."""
    order = rng.permutation(len(plan.roles))
    cat: Columns = {
        "role": plan.roles[order],
        "anomaly": plan.anomaly[order],
        "strength": plan.strength[order],
    }
    _place_duplicates(cat)
    _draw_catalogue(rng, cat, plan)
    exposures = _draw_exposures(rng, cat, plan, settings.exposure_scale)
    model = _noiseless_models(rng, cat, plan.program, settings)
    arms = observe(rng, model, cat, plan.program, settings)
    _corrupt_rows(rng, cat, arms)
    redshifts = _redshifts(rng, cat, arms)
    _summaries(cat, arms)
    return Pixel(cat, arms, exposures, redshifts)


def _place_duplicates(cat: Columns) -> None:
    """Pair the 'duplicate_targetid' rows: the later row of a pair repeats the earlier one's target."""
    rows = np.flatnonzero(cat["role"] == "duplicate_targetid")
    cat["dup_source"] = np.full(len(cat["role"]), -1)
    cat["dup_source"][rows[1::2]] = rows[0::2]


def _draw_catalogue(rng: np.random.Generator, cat: Columns, plan: PixelPlan) -> None:
    """Positions, identifiers, redshifts, magnitudes and targeting bits of every row."""
    _draw_identity(rng, cat, plan)
    _draw_redshifts(rng, cat)
    _draw_magnitudes(rng, cat, plan.program)
    dup = np.flatnonzero(cat["dup_source"] >= 0)
    for key in ("ra", "dec", "brickid", "brickname", "release", "objid", "photsys", "targetid"):
        cat[key][dup] = cat[key][cat["dup_source"][dup]]
    for key in ("z", "z_cat", "rmag", "ebv_mw", "psf_to_fiber"):
        cat[key][dup] = cat[key][cat["dup_source"][dup]]


def _draw_identity(rng: np.random.Generator, cat: Columns, plan: PixelPlan) -> None:
    """Sky position inside the pixel, imaging identifiers, TARGETID and targeting bits."""
    n, role = len(cat["role"]), cat["role"]
    ra, dec = nest_pixel_radec(np.full(n, plan.healpix), rng.random(n), rng.random(n))
    brickid, brickname = bricks(ra, dec)
    north = dec > 32.375  # DR9 north/south photometric split
    release = np.where(north, 9011, 9010)
    # OBJID has 22 bits: pixels 800 apart (far apart on the sky, so in other bricks) reuse the same range
    objid = (plan.index % OBJID_CYCLE) * 5000 + rng.choice(5000, n, replace=False)
    is_sky, is_galaxy = role == "sky", role == "galaxy"
    is_elg = is_galaxy & (rng.random(n) < 0.6)
    target = np.where(is_galaxy, np.where(is_elg, DESI_ELG, DESI_LRG), DESI_QSO)
    target = np.where(plan.program == "bright", DESI_BGS_ANY, target)
    target = np.select([is_sky, role == "unassigned"], [DESI_SKY, 0], target)
    cat.update(
        ra=ra,
        dec=dec,
        brickid=brickid,
        brickname=brickname,
        release=release,
        objid=objid,
        photsys=np.where(north, "N", "S"),
        targetid=make_targetid(release, brickid, objid, sky=is_sky.astype(np.int64)),
        is_elg=is_elg,
        desi_target=target.astype(np.int64),
        ebv_mw=np.clip(0.035 + 0.01 * (plan.index % 3) + rng.normal(0.0, 0.003, n), 0.005, None),
        psf_to_fiber=np.clip(rng.normal(0.78, 0.03, n), 0.6, 0.85),
        subpriority=rng.random(n),
    )


def _draw_redshifts(rng: np.random.Generator, cat: Columns) -> None:
    """True and catalogue redshifts; BAL quasars need their troughs observed (anomalies.MIN_Z)."""
    n, role, anomaly = len(cat["role"]), cat["role"], cat["anomaly"]
    qso_like = np.isin(role, QSO_ROLES)
    zmin = np.select([anomaly == name for name in MIN_Z], list(MIN_Z.values()), 0.3)
    z = np.where(qso_like, draw_qso_z(rng, n, zmin), 0.0)
    is_galaxy = role == "galaxy"
    z = np.where(cat["is_elg"], rng.uniform(0.6, 1.6, n), np.where(is_galaxy, rng.uniform(0.4, 1.0, n), z))
    is_star = np.isin(role, ("star", "star_as_qso"))
    rv = rng.normal(0.0, 80.0, n)
    z = np.where(is_star, rv / C_KMS, z)
    z_cat = z + rng.normal(0.0, 3e-4, n) * (1 + z) * qso_like
    details = np.full(n, "", dtype=object)
    wrong = anomaly == "wrong_z"
    z_cat[wrong], details[wrong] = wrong_z(z[wrong], cat["strength"][wrong], rng)
    fake = role == "star_as_qso"
    z_cat[fake] = draw_qso_z(rng, int(fake.sum()), 0.5)
    star_which = _draw_star_types(rng, n, role)
    star_which[fake], kinds = star_as_qso_types(rng, cat["strength"][fake])
    details[fake] = [f"{k} z_rr={zc:.3f}" for k, zc in zip(kinds, z_cat[fake], strict=True)]
    cat.update(z=z, z_cat=z_cat, rv=rv, details=details, star_which=star_which)


#: r-band number counts per (program, kind): brightest and faintest magnitude, log-count slope. Dark:
#: DESI's QSO targets (r < 23), contaminant stars with flatter counts, LRG and ELG; bright: BGS-like.
MAGNITUDES = {
    ("dark", "qso"): (16.5, 23.0, 0.3),
    ("dark", "star"): (16.0, 22.5, 0.1),
    ("dark", "lrg"): (19.0, 23.0, 0.3),
    ("dark", "elg"): (21.5, 24.0, 0.35),
    ("bright", "qso"): (16.5, 20.5, 0.35),
    ("bright", "star"): (16.0, 20.0, 0.15),
    ("bright", "lrg"): (16.0, 19.5, 0.35),
    ("bright", "elg"): (16.0, 19.5, 0.35),
}


def _draw_magnitudes(rng: np.random.Generator, cat: Columns, program: str) -> None:
    """r magnitudes from MAGNITUDES by kind of object; ZWARN failures at the faint end. Every quasar
    target, anomalous or not (a star labelled QSO included), has the quasars' distribution."""
    n, role = len(cat["role"]), cat["role"]
    kind = np.select(
        [role == "star", (role == "galaxy") & cat["is_elg"], role == "galaxy"], ["star", "elg", "lrg"], "qso"
    )
    rmag = np.zeros(n)
    for name in ("qso", "star", "lrg", "elg"):
        rmag = np.where(kind == name, draw_mag(rng, n, *MAGNITUDES[program, name]), rmag)
    cat["rmag"] = np.where(role == "qso_zwarn", rng.uniform(22.6, 23.3, n), rmag)


def _draw_star_types(rng: np.random.Generator, n: int, role: np.ndarray) -> np.ndarray:
    """Stellar archetype per star row: stars selected as QSO targets are mostly F/G/K, some A/WD/M."""
    types = templates()["star_type"]
    weight = np.select([types == t for t in ("A", "F", "G", "K", "M", "WD")], [1.0, 3.0, 3.0, 2.0, 1.0, 1.0])
    which = rng.choice(len(types), n, p=weight / weight.sum())
    return np.where(np.isin(role, ("star", "star_as_qso")), which, -1)


def _draw_exposures(rng: np.random.Generator, cat: Columns, plan: PixelPlan, exposure_scale: float) -> Columns:
    """Six exposures cover the pixel; each target gets 1-4 (more for z > 2.1 Lyα quasars).

    Each exposure has its own observing conditions (transparency, seeing, airmass, moon): a survey speed
    drawn lognormal with σ = EXPOSURE_SPEED_SPREAD, so that the effective exposure time (``efftime``,
    what the noise sees) differs from the open-shutter time. Returns the EXP_FIBERMAP columns and fills
    COADD_* and fibre-location columns of ``cat``.
    """
    n, n_pool = len(cat["role"]), 6
    bright = plan.program == "bright"
    mjd0 = 59300 + 40 * (plan.index % OBJID_CYCLE) + np.sort(rng.integers(0, 300, n_pool))
    pool = {
        "tileid": (20000 if bright else 1000) + rng.integers(0, 9000, n_pool),
        "mjd": mjd0 + rng.uniform(0.15, 0.45, n_pool),
        "exptime": np.clip(rng.normal(300.0, 50.0, n_pool) if bright else rng.normal(1000.0, 120.0, n_pool), 150, 1500),
        "speed": rng.lognormal(0.0, EXPOSURE_SPEED_SPREAD, n_pool),
    }
    pool["night"] = np.array(
        [int((datetime.date(1858, 11, 17) + datetime.timedelta(days=int(m))).strftime("%Y%m%d")) for m in mjd0]
    )
    pool["expid"] = 80000 + 150 * (mjd0 - 59300) + np.arange(n_pool)

    lya = (cat["z"] > 2.1) & np.isin(cat["role"], QSO_ROLES) & ~bright
    nexp = np.where(lya, rng.choice([1, 2, 3, 4], n, p=[0.2, 0.3, 0.3, 0.2]), rng.choice([1, 2], n, p=[0.75, 0.25]))
    nodata = np.isin(cat["role"], ("unassigned", "badposition"))
    nexp = np.where(nodata, 0, nexp)
    rank = np.argsort(rng.random((n, n_pool)), axis=1).argsort(axis=1)
    used = rank < nexp[:, None]
    on_tile = rank < np.maximum(nexp, 1)[:, None]

    location = np.sort(rng.choice(10 * 543, n, replace=False))
    location = (location // 543) * 1000 + location % 543
    petal, device = location // 1000, location % 1000
    first_tile = pool["tileid"][np.argmin(np.where(on_tile, rank, n_pool), axis=1)]
    unassigned = cat["role"] == "unassigned"
    cat["targetid"] = np.where(unassigned, -(first_tile * 10000 + location), cat["targetid"])

    cat["nexp"] = nexp
    cat["exptime"] = (used * pool["exptime"]).sum(axis=1)
    cat["efftime"] = exposure_scale * (used * pool["exptime"] * pool["speed"]).sum(axis=1)
    cat["numnight"] = sum((used & (pool["night"] == night)).any(axis=1) for night in np.unique(pool["night"]))
    cat["numtile"] = sum((used & (pool["tileid"] == tile)).any(axis=1) for tile in np.unique(pool["tileid"]))
    cat["fiberstatus"] = np.select(
        [unassigned, cat["role"] == "badposition"], [FIBERSTATUS_UNASSIGNED, FIBERSTATUS_BADPOSITION], 0
    )

    row, e = np.nonzero(on_tile)
    return {
        "TARGETID": cat["targetid"][row],
        "NIGHT": pool["night"][e],
        "EXPID": pool["expid"][e],
        "MJD": pool["mjd"][e],
        "TILEID": pool["tileid"][e],
        "EXPTIME": pool["exptime"][e],
        "PETAL_LOC": petal[row],
        "DEVICE_LOC": device[row],
        "LOCATION": location[row],
        "FIBER": petal[row] * 500 + device[row] % 500,
        "FIBERSTATUS": cat["fiberstatus"][row],
        "FIBER_RA": cat["ra"][row] + rng.normal(0.0, 0.1 / 3600, row.size),
        "FIBER_DEC": cat["dec"][row] + rng.normal(0.0, 0.1 / 3600, row.size),
    }


def _noiseless_models(rng: np.random.Generator, cat: Columns, program: str, settings: DemoSettings) -> np.ndarray:
    """Observed-frame noiseless spectra on BRZ_WAVE in 1e-17 erg/s/cm2/Å, Milky Way dust included;
    quasars seen through their absorbers (``cat["absorbers"]`` describes them)."""
    n = len(cat["role"])
    role, anomaly, strength = cat["role"], cat["anomaly"], cat["strength"]
    model = np.zeros((n, BRZ_WAVE.size))

    qso = np.isin(role, QSO_ROLES)
    params = quasar_params(rng, cat["z"][qso], cat["rmag"][qso])
    for name, inject in INTRINSIC_ANOMALIES.items():
        sel = anomaly[qso] == name
        if sel.any():
            cat["details"][np.flatnonzero(qso)[sel]] = inject(params, sel, strength[qso][sel], rng)
    cat["absorbers"] = np.full(n, "", dtype=object)
    transmission, cat["absorbers"][qso] = line_of_sight(rng, cat["z"][qso], settings)
    model[qso] = quasar_spectra(rng, cat["z"][qso], params) * transmission

    gal = role == "galaxy"
    model[gal] = galaxy_spectra(rng, cat["z"][gal], cat["is_elg"][gal])
    star = np.isin(role, ("star", "star_as_qso"))
    model[star] = star_spectra(cat["star_which"][star], cat["rv"][star])

    has_flux = qso | gal | star
    model[has_flux] = scale_to_rmag(model[has_flux], cat["rmag"][has_flux])
    sup = anomaly == "superposition"
    if sup.any():
        model[sup], cat["details"][sup] = superposition(rng, model[sup], cat["z"][sup], strength[sup])
    src = cat["dup_source"] >= 0
    model[src] = model[cat["dup_source"][src]]
    cat["absorbers"][src] = cat["absorbers"][cat["dup_source"][src]]
    model *= 10 ** (-0.4 * cat["ebv_mw"][:, None] * ccm_extinction(BRZ_WAVE)[None, :])

    for band in BANDS:
        cat[f"flux_{band}"] = np.where(has_flux, band_nmgy(model, band), 0.0)
    cat["rmag"] = np.where(has_flux, 22.5 - 2.5 * np.log10(np.maximum(cat["flux_r"], 1e-9)), np.nan)
    return model


def _corrupt_rows(rng: np.random.Generator, cat: Columns, arms: Arms) -> None:
    """Empty fibres, calibration artefacts and the broken rows the reader must quarantine."""
    role = cat["role"]
    empty = np.isin(role, ("unassigned", "badposition", "no_good_pixels"))
    for a in arms.values():
        a["flux"][empty] = 0.0
        a["ivar"][empty] = 0.0
        a["mask"][empty] = 0
    art = np.flatnonzero(cat["anomaly"] == "artifact")
    if art.size:
        cat["details"][art] = artifact(arms, art, cat["strength"][art], rng)
    for row in np.flatnonzero(role == "nonfinite"):
        good = np.flatnonzero((arms["R"]["ivar"][row] > 0) & (arms["R"]["mask"][row] == 0))
        arms["R"]["flux"][row, rng.choice(good, 5, replace=False)] = np.nan
    for row in np.flatnonzero(role == "negative_ivar"):
        arms["B"]["ivar"][row, rng.choice(arms["B"]["ivar"].shape[1], 5, replace=False)] *= -1.0


def _redshifts(rng: np.random.Generator, cat: Columns, arms: Arms) -> Columns:
    """Redrock-like REDSHIFTS columns.

    CHI2 is the chi2 of the true noiseless model and DELTACHI2 grows with the squared S/N; COEFF
    holds the mean model flux and zeros (not a template fit).
    """
    n = len(cat["role"])
    role = cat["role"]
    good = {a: (d["ivar"] > 0) & (d["mask"] == 0) & np.isfinite(d["flux"]) for a, d in arms.items()}
    npix = sum(g.sum(axis=1) for g in good.values())
    chi2 = sum(
        np.where(good[a], (np.nan_to_num(d["flux"]) - d["model"]) ** 2 * np.abs(d["ivar"]), 0).sum(axis=1)
        for a, d in arms.items()
    )
    snr2 = sum(np.where(good[a], d["model"] ** 2 * d["ivar"], 0).sum(axis=1) for a, d in arms.items())

    is_galaxy, is_star = role == "galaxy", role == "star"
    spectype = np.where(is_galaxy | np.isin(role, ("sky", "unassigned", "badposition")), "GALAXY", "QSO")
    spectype = np.where(is_star, "STAR", spectype)
    subtype = np.where(is_star, templates()["star_type"][cat["star_which"]], "")
    zwarn = np.select(
        [role == "sky", np.isin(role, ("unassigned", "badposition")), role == "qso_zwarn"],
        [ZWARN_SKY, ZWARN_NODATA, ZWARN_SMALL_DELTA_CHI2],
        0,
    )
    z = np.where(role == "sky", rng.uniform(0.0, 1.5, n), cat["z_cat"])
    z = np.where(np.isin(role, ("unassigned", "badposition")), 0.0, z)
    deltachi2 = 25.0 + 0.02 * snr2
    deltachi2 = np.where(role == "qso_zwarn", rng.uniform(1.0, 9.0, n), deltachi2)
    deltachi2 = np.where(np.isin(role, ("sky", "unassigned", "badposition")), rng.uniform(0.0, 5.0, n), deltachi2)
    zerr = np.select([spectype == "QSO", spectype == "GALAXY"], [2e-4, 2e-5], 1e-5) * (1 + np.abs(z))
    ncoeff = np.select([spectype == "QSO", spectype == "STAR"], [4, 5], 10)
    coeff = np.zeros((n, 10))
    coeff[:, 0] = np.nanmean(np.concatenate([d["model"] for d in arms.values()], axis=1), axis=1)
    return {
        "TARGETID": cat["targetid"],
        "Z": z,
        "ZERR": zerr * rng.lognormal(0.0, 0.3, n),
        "ZWARN": zwarn.astype(np.int64),
        "CHI2": chi2,
        "COEFF": coeff,
        "NPIXELS": npix.astype(np.int64),
        "SPECTYPE": spectype,
        "SUBTYPE": subtype,
        "NCOEFF": ncoeff.astype(np.int64),
        "DELTACHI2": deltachi2,
    }


def _row_nanmedian(values: np.ndarray) -> np.ndarray:
    """Median of the finite values of each row, NaN for a row without any.

    Sorting puts NaN last, so the median sits at the middle of each row's finite prefix; this is
    much faster than np.nanmedian along an axis.
    """
    ordered = np.sort(values, axis=1)
    count = np.isfinite(values).sum(axis=1)
    lo = np.take_along_axis(ordered, (np.maximum(count - 1, 0) // 2)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, (count // 2)[:, None], axis=1)[:, 0]
    return np.where(count > 0, 0.5 * (lo + hi), np.nan)


def _summaries(cat: Columns, arms: Arms) -> None:
    """SCORES-like per-arm summaries and the truth table's S/N per pixel: the median flux·√ivar over the
    good pixels of the merged brz spectrum, as ``qad_assets.science.spectra.noise`` measures it."""
    for arm, d in arms.items():
        good = (d["ivar"] > 0) & (d["mask"] == 0) & np.isfinite(d["flux"])
        snr = np.where(good, d["flux"] * np.sqrt(np.abs(d["ivar"])), np.nan)
        lo, hi = SCORE_WINDOWS[arm]
        win = (d["wave"] >= lo) & (d["wave"] <= hi)
        flux = np.where(good[:, win], d["flux"][:, win], np.nan)
        cat[f"median_flux_{arm}"] = np.nan_to_num(_row_nanmedian(flux))
        cat[f"integ_flux_{arm}"] = np.nansum(flux, axis=1) * WAVE_STEP
        cat[f"median_snr_{arm}"] = np.nan_to_num(_row_nanmedian(snr[:, win]))
    coadd = CoaddArms(
        "demo",
        {},
        {"TARGETID": cat["targetid"]},
        {a: d["wave"] for a, d in arms.items()},
        {a: np.nan_to_num(d["flux"]).astype(np.float32) for a, d in arms.items()},
        {a: np.clip(d["ivar"], 0, None).astype(np.float32) for a, d in arms.items()},
        {a: d["mask"] for a, d in arms.items()},
    )
    flux, ivar, good = merge_arms(coadd)
    cat["median_snr"] = masked_median(flux * np.sqrt(ivar), good)
    teff = cat["efftime"] / 1000.0
    cat["tsnr2_qso"] = 40.0 * teff
    cat["tsnr2_lya"] = 120.0 * teff
    cat["tsnr2_elg"] = 90.0 * teff
    cat["tsnr2_lrg"] = 80.0 * teff
