"""Sky geometry and identifiers: HEALPix pixel positions, Legacy Surveys bricks, DESI TARGETIDs."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

NSIDE = 64
FIRST_PIXEL = 26064  # nested nside-64 pixels from here on form a compact patch at RA 217, Dec +3..+5


_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7])


def nest_pixel_radec(
    pixel: np.ndarray | int, dx: np.ndarray | float, dy: np.ndarray | float, nside: int = NSIDE
) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) of the point at fractional position (dx, dy) in [0, 1)^2 of nested pixels.

    HEALPix face geometry (Gorski et al. 2005; healpix_base ``xyf2loc``), so the package needs no
    healpy or astropy_healpix. Uniform (dx, dy) are uniform on the sky: the HEALPix projection is
    equal-area and face coordinates are linear in it.
    """
    pixel = np.asarray(pixel, dtype=np.int64)
    face, ipf = np.divmod(pixel, nside * nside)
    ix = np.zeros_like(ipf)
    iy = np.zeros_like(ipf)
    for bit in range(int(np.log2(nside))):
        ix |= ((ipf >> (2 * bit)) & 1) << bit
        iy |= ((ipf >> (2 * bit + 1)) & 1) << bit
    x = (ix + np.asarray(dx)) / nside
    y = (iy + np.asarray(dy)) / nside
    jr = _JRLL[face] - x - y
    nr = np.where(jr < 1, jr, np.where(jr > 3, 4 - jr, 1.0))
    z = np.where(jr < 1, 1 - nr**2 / 3, np.where(jr > 3, nr**2 / 3 - 1, (2 - jr) * 2 / 3))
    phi = np.where(nr > 1e-15, 0.25 * np.pi * ((_JPLL[face] * nr + x - y) % 8) / np.maximum(nr, 1e-15), 0.0)
    return np.degrees(phi) % 360.0, np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))


def make_targetid(release: np.ndarray, brickid: np.ndarray, objid: np.ndarray, sky: np.ndarray | int = 0) -> np.ndarray:
    """DESI TARGETID (desitarget): OBJID 22 bits, BRICKID 20, RELEASE 16, MOCK 1, SKY 1, GAIADR 2."""
    release, brickid, objid = (np.asarray(a, dtype=np.int64) for a in (release, brickid, objid))
    return objid | (brickid << 22) | (release << 42) | (np.asarray(sky, dtype=np.int64) << 59)


@lru_cache(maxsize=1)
def _brick_rows() -> tuple[np.ndarray, np.ndarray]:
    """Legacy Surveys-like bricks: 0.25 deg rows in Dec, ~0.25 deg wide in RA; first id per row."""
    dec_c = np.arange(721) * 0.25 - 90.0
    ncol = np.maximum(1, np.round(360.0 * np.cos(np.radians(dec_c)) / 0.25)).astype(np.int64)
    first = 1 + np.concatenate([[0], np.cumsum(ncol)[:-1]])
    return ncol, first


def bricks(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BRICKID and BRICKNAME ('hhhhpddd', centre RA and |Dec| in 0.1 deg) of each position."""
    ncol, first = _brick_rows()
    row = np.round((dec + 90.0) / 0.25).astype(np.int64)
    col = np.minimum((ra / 360.0 * ncol[row]).astype(np.int64), ncol[row] - 1)
    ra_c = (col + 0.5) * 360.0 / ncol[row]
    dec_c = row * 0.25 - 90.0
    names = np.array(
        [f"{int(r * 10):04d}{'p' if d >= 0 else 'm'}{int(abs(d) * 10):03d}" for r, d in zip(ra_c, dec_c, strict=True)]
    )
    return first[row] + col, names
