"""The scoring service's HTTP API as pydantic models: what ``POST /score`` takes and what it returns.

FastAPI turns these into the OpenAPI description (``/openapi.json``, browsable at ``/docs``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from qad_assets.science.spectra.observed import MAX_PIXELS, Z_RANGE


class SpectrumIn(BaseModel):
    """One observed-frame spectrum, as a DESI coadd holds it (e.g. the merged ``brz`` arrays)."""

    model_config = ConfigDict(extra="forbid")

    wavelength: list[float] | None = Field(
        default=None,
        max_length=MAX_PIXELS,
        description="observed vacuum wavelengths (Å), strictly increasing; omit to use the request's `wavelength`",
    )
    flux: list[float] = Field(max_length=MAX_PIXELS, description="flux density, 1e-17 erg/s/cm²/Å")
    ivar: list[float] = Field(max_length=MAX_PIXELS, description="inverse variance of flux, ≥ 0 (0 = no data)")
    mask: list[int] | None = Field(default=None, max_length=MAX_PIXELS, description="DESI mask: 0 good, else bad")
    redshift: float = Field(description=f"quasar redshift, {Z_RANGE[0]:g} to {Z_RANGE[1]:g}")
    targetid: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="DESI TARGETID, echoed back")


class ScoreRequest(BaseModel):
    """One or more spectra to score with the champion model."""

    model_config = ConfigDict(extra="forbid")

    spectra: list[SpectrumIn] = Field(min_length=1, description="the spectra, scored in this order")
    wavelength: list[float] | None = Field(
        default=None, max_length=MAX_PIXELS, description="wavelength grid shared by spectra that give none"
    )
    release: str | None = Field(
        default=None,
        description="DESI release the spectra come from (e.g. 'iron'). When it is the release the model was "
        "trained on, spectra with a TARGETID are scored exactly as the batch `anomaly_scores` scores them "
        "(training-split spectra against the training calibration); otherwise as unseen spectra.",
    )


class ModelRef(BaseModel):
    """A registered model version."""

    name: str
    version: str
    alias: str
    training_release: str | None = None


class SpectrumScore(BaseModel):
    """Score and explanation of one spectrum; null where a value is undefined (no observed pixels)."""

    index: int = Field(description="position in the request (or FIBERMAP row of an uploaded coadd)")
    targetid: int | None
    anomaly_score: float | None = Field(description="≈ N(0, 1) for normal quasars at any S/N; higher = odder")
    p_value: float | None = Field(description="fraction of held-out spectra scoring at least as high")
    reduced_chi2: float | None
    chi2: float | None
    n_obs: int
    kl: float | None
    neg_elbo: float | None
    latent_nll: float | None
    top_component: str = Field(description="score component that drove the score (e.g. 'trough', 'weak_lines')")
    top_region: str = Field(description="rest-frame region with the largest excess χ² (e.g. 'civ')")
    top_region_share: float | None
    worst_arm: str = Field(description="DESI arm (b, r, z) with the largest excess χ²")
    snr: float | None = Field(description="median S/N per rest pixel redward of 1250 Å")
    low_coverage: bool = Field(description="fewer than 1000 good rest-frame pixels")
    model_name: str
    model_version: str


class NotScored(BaseModel):
    """A FIBERMAP row of an uploaded coadd that was not scored, and why (ingestion's ledger reason)."""

    index: int
    targetid: int | None
    status: str
    reason: str


class ScoreResponse(BaseModel):
    model: ModelRef
    scores: list[SpectrumScore]
    not_scored: list[NotScored] = Field(default_factory=list, description="uploads: rows filtered or quarantined")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: what is wrong, in words."""

    detail: str
