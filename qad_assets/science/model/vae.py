"""A variational autoencoder of rest-frame quasar spectra: the model, its likelihood, its persistence.

The VAE learns what a *normal* quasar looks like on the rest-frame grid; a spectrum it cannot
reconstruct (high reduced χ²) is a candidate anomaly. Design (rationale in ``docs/model.md``):

* the encoder sees ``(flux·observed, observed)``, so partial rest coverage (every redshift sees a
  different rest window) is an input, not a silent zero;
* the decoder predicts the log of the full rest-frame spectrum; the likelihood is an ivar-weighted Gaussian χ²
  over observed pixels only, with a fractional model-error floor, and the Lyα forest down-weighted and
  given an extra variance;
* the amplitude is fitted analytically per spectrum, so normalization errors are not anomalies.

This module is plain PyTorch (no Dagster, no Ray) and is the model's only home.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

#: Smallest amplitude the analytic fit may return: a template is never flipped or zeroed.
MIN_AMPLITUDE = 1e-3

#: Bound on the decoder's log-template, so exp() cannot overflow early in training.
_MAX_LOG_TEMPLATE = 10.0


@dataclass(frozen=True)
class VaeConfig:
    """Architecture, likelihood and training-recipe knobs; defaults explained in ``docs/model.md``."""

    latent_dim: int = 12
    hidden: tuple[int, ...] = (256, 128)
    beta: float = 1.0
    beta_warmup_epochs: int = 3
    forest_weight: float = 0.25
    forest_sigma: float = 0.3
    model_error: float = 0.05
    input_clip: float = 10.0
    coverage_cut_prob: float = 0.5
    coverage_cut_max: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.model_error, int | float) and 0.0 <= self.model_error < 1.0):
            raise ValueError(f"model_error must be a number in [0, 1), got {self.model_error!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VaeConfig:
        """A package written before ``model_error`` existed was trained and calibrated without it (0)."""
        return cls(**{"model_error": 0.0, **d, "hidden": tuple(int(h) for h in d["hidden"])})


class VaeOutput(NamedTuple):
    """Per-spectrum results of one pass (tensors; a NamedTuple so DDP can traverse it)."""

    template: torch.Tensor  # (N, P) decoder output, before the amplitude
    amplitude: torch.Tensor  # (N,) best-fit positive scale of the template
    chi2: torch.Tensor  # (N,) Σ w·(f − a·t)² over observed pixels
    n_obs: torch.Tensor  # (N,) observed pixels (ivar > 0)
    n_eff: torch.Tensor  # (N,) observed pixels counted with their weight (forest < 1)
    kl: torch.Tensor  # (N,) KL(q(z|x) || N(0, 1))
    mu: torch.Tensor  # (N, L) latent means


class SpectrumVAE(nn.Module):
    """MLP encoder ``(flux·observed, observed) → (μ, log σ²)`` and decoder ``z → log template`` over a
    fixed rest-frame grid of ``npix`` pixels.

    The Lyα forest mask is a buffer, so it travels with the weights and a loaded model scores
    exactly as it was trained.
    """

    def __init__(self, npix: int, forest_mask: np.ndarray | torch.Tensor, config: VaeConfig) -> None:
        super().__init__()
        mask = torch.as_tensor(np.asarray(forest_mask, dtype=bool))
        if mask.shape != (npix,):
            raise ValueError(f"forest_mask has shape {tuple(mask.shape)}, expected ({npix},)")
        self.npix = npix
        self.config = config
        self.register_buffer("forest_mask", mask)
        self.encoder = _mlp([2 * npix, *config.hidden, 2 * config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *reversed(config.hidden), npix])

    def encode(self, flux: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance; unobserved flux (even NaN) is replaced by 0 and flagged."""
        clip = self.config.input_clip
        shown = torch.where(observed, flux.clamp(-clip, clip), torch.zeros_like(flux))
        mu, logvar = self.encoder(torch.cat([shown, observed.to(flux.dtype)], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def pixel_weights(self, ivar: torch.Tensor) -> torch.Tensor:
        """Effective χ² weights: ivar with a model-error floor ε, forest pixels with extra variance σ² and
        a factor < 1.

        ``w = f·ivar / (1 + ivar·σ²)`` in the forest, ``ivar / (1 + ivar·ε²)`` elsewhere; ivar = 0 gives
        w = 0. Without ε the brightest few spectra (χ² ∝ S/N² for a per-cent misfit) carry the loss, and
        the decoder fits normal quasars worse than a 10-component PCA (docs/model.md).
        """
        cfg = self.config
        forest_w = cfg.forest_weight * ivar / (1.0 + ivar * cfg.forest_sigma**2)
        return torch.where(self.forest_mask, forest_w, ivar / (1.0 + ivar * cfg.model_error**2))

    def forward(self, flux: torch.Tensor, ivar: torch.Tensor, sample: bool = False) -> VaeOutput:
        """Encode, decode (``z`` sampled when ``sample``, else the mean) and score against the data.

        The decoder predicts the log of the template: quasar spectra are products (power law ×
        emission lines × forest transmission), which become sums, and the template stays positive.
        The χ² part runs in fp32 even under bf16 autocast.
        """
        observed = ivar > 0
        mu, logvar = self.encode(flux, observed)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        template = self.decoder(z).float().clamp(-_MAX_LOG_TEMPLATE, _MAX_LOG_TEMPLATE).exp()
        weights = self.pixel_weights(torch.where(observed, ivar.float(), 0.0))
        data = torch.where(observed, flux.float(), torch.zeros_like(template))
        amplitude, chi2 = fit_amplitude(template, data, weights)
        obs = observed.float()
        n_eff = (obs * torch.where(self.forest_mask, self.config.forest_weight, 1.0)).sum(1)
        kl = 0.5 * (mu.float().square() + logvar.float().exp() - 1.0 - logvar.float()).sum(1)
        return VaeOutput(template, amplitude, chi2, obs.sum(1), n_eff, kl, mu.float())


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (none after the last: outputs are unbounded)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def fit_amplitude(
    template: torch.Tensor, flux: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-fit positive scale ``a = Σw·f·t / Σw·t²`` of each template, and the χ² at that scale.

    Profiling the amplitude out makes the score blind to the normalization of the input (a 10 %
    flux-calibration error is not an anomaly); the clamp keeps the model from fitting an inverted
    template to an absorption-dominated spectrum.
    """
    numerator = (weights * flux * template).sum(1)
    denominator = (weights * template.square()).sum(1).clamp_min(torch.finfo(template.dtype).tiny)
    amplitude = (numerator / denominator).clamp_min(MIN_AMPLITUDE)
    chi2 = (weights * (flux - amplitude[:, None] * template).square()).sum(1)
    return amplitude, chi2


def negative_elbo(out: VaeOutput, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ(χ²/2 + β·KL) / Σ n_eff`` for a batch, and the denominator.

    Dividing by the weighted pixel count makes the loss "per observed pixel" (≈ 0.5 for a perfect
    model), so it is comparable across batches, coverage and grids.
    """
    n_eff = out.n_eff.sum().clamp_min(1.0)
    return (0.5 * out.chi2 + beta * out.kl).sum() / n_eff, n_eff


@dataclass(frozen=True)
class Reconstruction:
    """Per-spectrum reconstruction and goodness of fit (numpy, float32/float64)."""

    spectrum: np.ndarray  # (N, P) amplitude-fitted reconstruction
    amplitude: np.ndarray  # (N,)
    chi2: np.ndarray  # (N,)
    n_obs: np.ndarray  # (N,) int
    n_eff: np.ndarray  # (N,) weighted pixel count
    reduced_chi2: np.ndarray  # (N,) χ² / (n_eff − 1); NaN when nothing is observed
    kl: np.ndarray  # (N,)
    latent_mean: np.ndarray  # (N, L)


@torch.no_grad()
def reconstruct(
    model: SpectrumVAE,
    flux: np.ndarray | torch.Tensor,
    ivar: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 4096,
    device: torch.device | str | None = None,
) -> Reconstruction:
    """Reconstruct spectra from their latent mean (deterministic), in chunks of ``batch_size``.

    fp32 throughout: a score must not depend on bf16 rounding of high-S/N spectra.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    flux_t, ivar_t = torch.as_tensor(flux, dtype=torch.float32), torch.as_tensor(ivar, dtype=torch.float32)
    outs = [
        model(flux_t[i : i + batch_size].to(device), ivar_t[i : i + batch_size].to(device))
        for i in range(0, flux_t.shape[0], batch_size)
    ]
    model.train(was_training)
    cat = VaeOutput(*(torch.cat(parts).cpu() for parts in zip(*outs, strict=True)))
    dof = (cat.n_eff - 1.0).clamp_min(1.0).double()
    reduced = torch.where(cat.n_obs > 0, cat.chi2.double() / dof, torch.nan)
    return Reconstruction(
        spectrum=(cat.amplitude[:, None] * cat.template).numpy(),
        amplitude=cat.amplitude.numpy(),
        chi2=cat.chi2.numpy(),
        n_obs=cat.n_obs.to(torch.int64).numpy(),
        n_eff=cat.n_eff.numpy(),
        reduced_chi2=reduced.numpy(),
        kl=cat.kl.numpy(),
        latent_mean=cat.mu.numpy(),
    )
