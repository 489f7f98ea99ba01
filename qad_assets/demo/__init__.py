"""Embedded demo release: a small synthetic DESI spectroscopic release with ground truth.

Why it exists: the pipeline has to run end to end anywhere (CI, a laptop, a fresh cluster) on input
that exercises the reader exactly as DESI DR1 does, and the anomaly scores need labelled anomalies
to be judged against. This package writes healpix coadd and redrock files that follow the DESI data
model (desihub/desidatamodel; condensed in the project's realdata notes) and a Parquet truth table
that says, for every FIBERMAP row, what the object is, what the reader must do with it and which
anomaly, if any, was injected. Nothing here is a DESI observation; every primary header says so.

One module per concern: ``plan`` (which rows exist), ``geometry`` (positions, TARGETIDs),
``sources`` (quasars, galaxies, stars, dust, IGM), ``absorbers`` (LLS, DLAs, metal and associated
absorbers), ``anomalies``, ``instrument`` (throughput, sky, resolution, noise, calibration), ``pixel``
(one pixel end to end), ``fits_writer`` (FITS and truth table), ``reading`` (a written release read back
as the pipeline reads it), ``settings`` (the knobs). No production module imports it.

Physics (vectorised over the spectra of a pixel; docs/realism.md compares it with real DESI data):

- Quasars: the Temple, Hewett & Banerji (2021) ``qsogen`` recipe: a broken power-law continuum with
  a per-object slope, equivalent-width-preserving emission lines mixed between the median, high-EW
  and high-blueshift templates with qsogen's luminosity dependence (Baldwin effect, C IV blueshift and
  asymmetry growing with L) plus scatter, lines broadened by 0-2000 km/s, qsogen's host galaxy below
  z = 1; a lognormal Lyα forest whose mean transmission follows Becker et al. (2013), Lyβ/Lyγ
  suppression and a Lyman-limit cut; Lyman-limit systems and DLAs (Voigt profiles), intervening Mg II/
  Fe II and C IV/Si IV doublets, associated narrow absorbers in a quarter of the quasars.
- Galaxies: old/young stellar archetypes plus nebular lines. Stars: redrock stellar archetypes.
- Instrument: Milky Way dust (CCM89), per-arm throughput and sky-line pattern measured on real coadds,
  the Kitt Peak dark sky, a Gaussian line-spread stored as the 11-diagonal RESOLUTION, photon and read
  noise drawn from the ivar, which is a few per cent optimistic, heavy-tailed pixels, sky-subtraction
  residuals, flux-calibration wiggles and arm offsets, observing conditions, cosmic-ray masks.
- Anomalies (``ANOMALY_CLASSES``): weak_line, artifact (an arm's calibration jump or spurious spikes),
  hibal, lobal, superposition (a foreground galaxy or star), star_as_qso, extreme_lines, wrong_z,
  reddened; each from subtle to obvious, at the normal quasars' magnitudes.

Reader contract encoded in the truth table (``expected_status`` / ``expected_reason``, the ledger
codes of ``qad_assets.science.spectra.ledger``), first reason that applies: filtered ``unassigned_fiber``
(TARGETID < 0), ``not_target`` (OBJTYPE != 'TGT'), ``bad_fiberstatus`` (COADD_FIBERSTATUS != 0);
quarantined ``duplicate_targetid`` (every row of a repeated TARGETID); filtered ``not_qso``
(SPECTYPE != 'QSO'), ``zwarn`` (ZWARN != 0); quarantined ``nonfinite`` (NaN flux at a good pixel),
``negative_ivar``, ``no_good_pixels`` (good = ivar > 0 and mask == 0). Every injected anomaly is
kept.

Truth table columns: TARGETID, file (coadd path relative to ``root``), row, healpix, survey,
program, objtype, true_class (qso/galaxy/star/sky/unassigned/broken), z_true, z_catalog (redrock
Z), spectype, zwarn, anomaly_class (null for normal rows), anomaly_strength (0.1 subtle .. 1
obvious), anomaly_detail (the physical parameters), expected_status, expected_reason ('' when
kept), r_mag, median_snr (median flux*sqrt(ivar) over the good pixels of the merged brz spectrum),
absorbers (the absorbers in front of a quasar, null for none). Its schema metadata ``demo_settings``
holds the :class:`DemoSettings` as JSON.

Run ``python -m qad_assets.demo ROOT [--settings JSON]`` to write the default release (8 pixels of
400 rows, about 1.4 GB: a coadd holds 435 KiB per spectrum, like DESI's own).
"""

from qad_assets.demo.plan import ANOMALY_CLASSES
from qad_assets.demo.reading import read_demo_spectra
from qad_assets.demo.release import DemoRelease, write_demo_release
from qad_assets.demo.settings import DemoSettings

__all__ = ["ANOMALY_CLASSES", "DemoRelease", "DemoSettings", "read_demo_spectra", "write_demo_release"]
