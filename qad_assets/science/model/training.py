"""Training of the spectral VAE (:mod:`qad_assets.science.model.vae`), in one process or on Ray Train.

One code path serves both: :func:`train_vae` runs :func:`_fit` in this process, :func:`train_vae_ray`
runs the same :func:`_fit` in every Ray Train worker with the model wrapped in DDP. Data stream from
Parquet partitions (or in-memory arrays) in record batches through a bounded shuffle buffer, so a
release larger than memory trains; rows go to train/validation (and to a DDP rank) by a stable hash
of TARGETID, so the split never depends on file order, worker count or Python's ``hash()``.
Procedure and determinism: ``docs/model.md``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from qad_assets.errors import GridMismatchError, TooFewSpectraError
from qad_assets.science.io.parquet_store import iter_tables
from qad_assets.science.model.calibration import MIN_CALIBRATION_ROWS
from qad_assets.science.model.split import Split, select_rows, split_position, splitmix64
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig, negative_elbo
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import RestFrameGrid, lya_forest_mask

_T = TypeVar("_T")

_COLUMNS = ("TARGETID", "Z", "flux", "ivar")
_STATE_FILE = "state.pt"


Source = Sequence[str | Path] | Spectra


@dataclass(frozen=True)
class TrainOptions:
    """How to train (not what): defaults suit a DR1-sized release on one GPU; tests shrink them."""

    seed: int = 0
    max_epochs: int = 50
    patience: int = 5  # epochs without a better validation loss before stopping
    batch_size: int = 1024  # global: Ray Train workers take batch_size // num_workers each
    learning_rate: float = 1e-3  # Adam, cosine-annealed to 0 over max_epochs
    val_fraction: float = 0.05  # of TARGETIDs (by hash), held in memory
    shuffle_rows: int = 16384  # shuffle-buffer rows per rank and loader worker
    read_rows: int = 2048  # Parquet record-batch (or array chunk) rows
    loader_workers: int = 0  # DataLoader processes reading files in parallel (Parquet sources)

    def for_release(self, n_spectra: int) -> TrainOptions:
        """These options with a held-out fraction large enough for :data:`HELD_OUT_TARGET` spectra (a small
        release holds out more, up to :data:`MAX_VAL_FRACTION`); :class:`TooFewSpectraError` when even
        that is too few to calibrate a scorer on.
        """
        if n_spectra * MAX_VAL_FRACTION < HELD_OUT_TARGET:
            raise TooFewSpectraError(
                f"{n_spectra} quasar spectra: too few to train and calibrate a model (at least "
                f"{int(np.ceil(HELD_OUT_TARGET / MAX_VAL_FRACTION))} are needed)"
            )
        return replace(self, val_fraction=max(self.val_fraction, HELD_OUT_TARGET / n_spectra))

    @property
    def earliest_stop(self) -> int:
        """The first epoch early stopping may end training: half of ``max_epochs``.

        A small release's held-out loss swings by ×2–3 between early epochs (3.3 → 9.3 → 3.7 on an untuned
        demo of 2,783 quasars), so an early best is luck, not convergence: stopping there left one seed at
        χ²/pixel 6.5 after 11 epochs; trained on, the same seed reached 3.0 at epoch 35.
        """
        return self.max_epochs // 2

    def for_targets(self, targetid: np.ndarray) -> TrainOptions:
        """:meth:`for_release`'s options with the held-out fraction raised where it holds out fewer than
        :data:`HELD_OUT_TARGET` of these very TARGETIDs, to at most :data:`MAX_VAL_FRACTION`;
        :class:`TooFewSpectraError` when that holds out fewer than the scorer's calibration needs.

        Exact where :meth:`for_release` is only right on average: the split is a hash, so 30/n held out
        fewer than 20 in 1-2 % of releases of 100-600 quasars, whose training then failed after it ran.
        """
        options = self.for_release(len(targetid))  # the same releases are too small as before
        positions = np.sort(split_position(splitmix64(np.asarray(targetid, np.int64))))
        fraction = min(max(options.val_fraction, positions[HELD_OUT_TARGET - 1] + 2.0**-53), MAX_VAL_FRACTION)
        held_out = int((positions < fraction).sum())
        if min(held_out, positions.size - held_out) < MIN_CALIBRATION_ROWS:
            raise TooFewSpectraError(
                f"{positions.size} quasar spectra: too few to train and calibrate a model (a held-out fraction "
                f"of {fraction:.3g} holds out {held_out}; the calibration needs at least {MIN_CALIBRATION_ROWS})"
            )
        return replace(self, val_fraction=float(fraction))


#: Held-out spectra a release should give the scorer's calibration (20 is the least it accepts).
HELD_OUT_TARGET = 30
MAX_VAL_FRACTION = 0.3


@dataclass
class TrainResult:
    """The best model (CPU, eval mode) and the per-epoch history that chose it."""

    model: SpectrumVAE
    config: VaeConfig
    best_epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def epochs_run(self) -> int:
        return len(self.history["val_loss"])

    @property
    def best_val_reduced_chi2(self) -> float:
        return self.history["val_reduced_chi2"][self.best_epoch]

    @property
    def throughput(self) -> float:
        """Median training throughput over epochs, spectra per second (all workers together)."""
        return float(np.median(self.history["throughput"]))


class SpectraStream(IterableDataset):
    """Shuffled training batches ``(flux, ivar)`` of one rank, streamed from Parquet files or arrays.

    Each epoch visits chunks (files, or ``read_rows`` slices of arrays) in a seeded random order, keeps
    the training rows of this rank, and shuffles them within a buffer of ``shuffle_rows`` rows; batches
    are slices of the shuffled buffer (no per-sample Python). Call :meth:`set_epoch` before iterating.
    DataLoader workers split the chunks between them.
    """

    def __init__(
        self, source: Source, wave: np.ndarray, options: TrainOptions, *, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        self.source, self.wave, self.options = source, wave, options
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        opts = self.options
        # One chunk order for all loader workers (each takes every n-th), its own buffer shuffle each.
        order_rng = np.random.default_rng([opts.seed, self.epoch, self.rank])
        rng = np.random.default_rng([opts.seed, self.epoch, self.rank, worker])
        chunks = _iter_chunks(self.source, self.wave, opts.read_rows, order_rng, worker, n_workers)
        kept = (c[select_rows(c.targetid, "train", opts.val_fraction, self.rank, self.world_size)] for c in chunks)
        yield from _shuffled_batches(kept, rng, opts.batch_size, opts.shuffle_rows)


def load_split(
    source: Source,
    wave: np.ndarray,
    split: Split,
    val_fraction: float,
    *,
    rank: int = 0,
    world_size: int = 1,
    read_rows: int = 2048,
) -> Spectra:
    """All rows of ``split`` owned by ``rank``, in memory (the validation set: a few % of a release)."""
    parts = [
        c[select_rows(c.targetid, split, val_fraction, rank, world_size)] for c in _iter_chunks(source, wave, read_rows)
    ]
    return Spectra.concat(parts) if parts else Spectra.empty(wave)


def _iter_chunks(
    source: Source,
    wave: np.ndarray,
    read_rows: int,
    rng: np.random.Generator | None = None,
    worker: int = 0,
    n_workers: int = 1,
) -> Iterator[Spectra]:
    """Chunks of ``source`` in random order (``rng``) or stored order; worker ``w`` gets every n-th."""
    if isinstance(source, Spectra):
        _check_npix(source.flux.shape[1], len(wave), "arrays")
        starts = np.arange(0, len(source), read_rows)
        order = rng.permutation(starts) if rng is not None else starts
        for start in order[worker::n_workers]:
            yield source[start : start + read_rows]
        return
    order = rng.permutation(len(source)) if rng is not None else np.arange(len(source))
    for i in order[worker::n_workers]:
        yield from _read_parquet(Path(source[i]), wave, read_rows)


def _read_parquet(path: Path, wave: np.ndarray, read_rows: int) -> Iterator[Spectra]:
    """Record batches of one ``normalized_spectra`` file as spectra (fixed-size lists → (n, P) views)."""
    for batch in iter_tables(path, columns=_COLUMNS, rows=read_rows):
        _check_npix(batch.schema.field("flux").type.list_size, len(wave), str(path))
        yield Spectra.from_table(batch, wave)


def _check_npix(found: int, npix: int, where: str) -> None:
    if found != npix:
        raise GridMismatchError(f"{where}: spectra have {found} pixels, the model grid has {npix}")


def _shuffled_batches(
    chunks: Iterable[Spectra], rng: np.random.Generator, batch_size: int, shuffle_rows: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fill a buffer to ``shuffle_rows``, permute, emit full batches, carry the remainder over."""
    pending: list[Spectra] = []
    n_pending = 0
    for chunk in chunks:
        pending.append(chunk)
        n_pending += len(chunk)
        if n_pending < shuffle_rows:
            continue
        buffer = Spectra.concat(pending)
        perm = rng.permutation(len(buffer))
        n_full = len(perm) - len(perm) % batch_size
        yield from _batches(buffer, perm[:n_full], batch_size)
        pending = [buffer[perm[n_full:]]]
        n_pending = len(pending[0])
    if n_pending:
        buffer = Spectra.concat(pending)
        yield from _batches(buffer, rng.permutation(len(buffer)), batch_size)


def _batches(buffer: Spectra, order: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield torch.from_numpy(buffer.flux[rows]), torch.from_numpy(buffer.ivar[rows])


def beta_at(config: VaeConfig, epoch: int) -> float:
    """KL weight of ``epoch``: linear warm-up to ``config.beta`` over ``beta_warmup_epochs`` epochs."""
    if config.beta_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, (epoch + 1) / config.beta_warmup_epochs)


def cut_coverage(ivar: torch.Tensor, config: VaeConfig) -> torch.Tensor:
    """Blank the blue or red end (up to ``coverage_cut_max`` of the observed pixels) of a random
    ``coverage_cut_prob`` of the spectra in a batch.

    The data already mix rest windows, but only of one width (the observed range over 1+z); this
    teaches the encoder narrower windows too (masked chunks, bad arms), and the loss then only sees
    what is left, exactly as scoring does.
    """
    observed_rank = (ivar > 0).cumsum(1)
    n_observed = observed_rank[:, -1:]
    draws = torch.rand(ivar.shape[0], 3, device=ivar.device)
    cut = draws[:, :1] * config.coverage_cut_max * (draws[:, 1:2] < config.coverage_cut_prob)
    from_blue = draws[:, 2:] < 0.5
    keep = torch.where(from_blue, observed_rank > cut * n_observed, observed_rank <= (1 - cut) * n_observed)
    return ivar * keep


def train_one_epoch(
    net: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    config: VaeConfig,
    *,
    beta: float,
    device: torch.device,
) -> tuple[float, float, float]:
    """One pass over this rank's batches; returns (Σ loss·n_eff, Σ n_eff, spectra) summed over ranks.

    Loss sums stay on the device until the end. Under DDP every rank stops when the first one runs
    out of batches (hash shards differ by a few rows), so all take the same optimizer steps.
    """
    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for flux_cpu, ivar_cpu in _until_any_rank_is_done(loader, device):
        flux = flux_cpu.to(device, non_blocking=True)
        ivar = cut_coverage(ivar_cpu.to(device, non_blocking=True), config)
        with _autocast(device):
            out = net(flux, ivar, sample=True)
        loss, n_eff = negative_elbo(out, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums += torch.stack([loss.detach() * n_eff, n_eff, n_eff.new_tensor(len(flux))]).double()
    _all_reduce(sums)
    loss_sum, n_eff_sum, n_spectra = sums.tolist()
    return loss_sum, n_eff_sum, n_spectra


@torch.no_grad()
def evaluate(
    vae: SpectrumVAE, data: Spectra, *, beta: float, device: torch.device, batch_size: int = 4096
) -> tuple[float, float]:
    """Validation (loss per weighted pixel, pooled reduced χ² Σχ²/Σdof), over all ranks' shards.

    The latent mean and fp32 are used, as in scoring, so the figure is what the detector will see.
    """
    vae.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for start in range(0, len(data), batch_size):
        flux = torch.from_numpy(data.flux[start : start + batch_size]).to(device)
        ivar = torch.from_numpy(data.ivar[start : start + batch_size]).to(device)
        out = vae(flux, ivar)
        dof = torch.where(out.n_obs > 0, (out.n_eff - 1.0).clamp_min(1.0), 0.0)
        terms = [(0.5 * out.chi2 + beta * out.kl).sum(), out.n_eff.sum(), out.chi2.sum(), dof.sum()]
        sums += torch.stack(terms).double()
    _all_reduce(sums)
    loss_sum, n_eff, chi2, dof = sums.tolist()
    return loss_sum / max(n_eff, 1.0), chi2 / max(dof, 1.0)


@dataclass
class _FitOutcome:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: dict[str, list[float]]


def _fit(
    net: torch.nn.Module,
    vae: SpectrumVAE,
    stream: SpectraStream,
    val: Spectra,
    options: TrainOptions,
    device: torch.device,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> _FitOutcome:
    """Epoch loop with early stopping on validation loss; keeps the best weights (on CPU).

    ``net`` is what gets trained (``vae`` itself, or its DDP wrapper); ``vae`` is evaluated. All ranks
    see the same all-reduced validation loss, so they stop at the same epoch.
    """
    loader = DataLoader(stream, batch_size=None, num_workers=options.loader_workers, pin_memory=device.type == "cuda")
    optimizer = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.max_epochs)
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "val_loss", "val_reduced_chi2", "throughput")}
    best_loss, best_epoch, best_state = float("inf"), 0, _cpu_state(vae)
    for epoch in range(options.max_epochs):
        stream.set_epoch(epoch)
        start = time.perf_counter()
        loss_sum, n_eff, n_spectra = train_one_epoch(
            net, loader, optimizer, vae.config, beta=beta_at(vae.config, epoch), device=device
        )
        seconds = time.perf_counter() - start
        schedule.step()
        val_loss, val_chi2 = evaluate(vae, val, beta=vae.config.beta, device=device)
        metrics = {
            "train_loss": loss_sum / max(n_eff, 1.0),
            "val_loss": val_loss,
            "val_reduced_chi2": val_chi2,
            "throughput": n_spectra / seconds,
        }
        for key, value in metrics.items():
            history[key].append(value)
        if report is not None:
            report({"epoch": epoch, **metrics})
        if val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, _cpu_state(vae)
        elif epoch >= options.earliest_stop and epoch - best_epoch >= options.patience:
            break
    return _FitOutcome(best_state, best_epoch, history)


def train_vae(
    source: Source,
    grid: RestFrameGrid,
    config: VaeConfig | None = None,
    options: TrainOptions | None = None,
    *,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a VAE on ``grid`` in this process on Parquet files or spectra; bit-reproducible on CPU for a seed."""
    config, options, device = config or VaeConfig(), options or TrainOptions(), torch.device(device)
    with _deterministic(device):
        torch.manual_seed(options.seed)
        vae = SpectrumVAE(grid.npix, lya_forest_mask(grid), config).to(device)
        val = load_split(source, grid.wave, "val", options.val_fraction, read_rows=options.read_rows)
        outcome = _fit(vae, vae, SpectraStream(source, grid.wave, options), val, options, device)
    return _result(grid, config, outcome.best_state, outcome.best_epoch, outcome.history)


def train_vae_ray(
    paths: Sequence[str | Path],
    grid: RestFrameGrid,
    config: VaeConfig | None = None,
    options: TrainOptions | None = None,
    *,
    storage_path: str | Path,
    num_workers: int = 2,
    use_gpu: bool = False,
    cpus_per_worker: float = 1,
    run_name: str = "qad-vae",
) -> TrainResult:
    """Train with Ray Train's ``TorchTrainer`` (DDP; gloo on CPU, NCCL on GPU) on Parquet files.

    Every worker streams all files but keeps only rows whose TARGETID hash falls in its shard; the
    best weights come back as a Ray checkpoint under ``storage_path`` (a local or shared directory).
    Needs ``ray.init`` (or a cluster) beforehand; ``qad_assets`` must be importable by the workers.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config, options = config or VaeConfig(), options or TrainOptions()
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={
            "paths": [str(p) for p in paths],
            "grid": grid,
            "config": config,
            "options": options,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(name=run_name, storage_path=str(storage_path)),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as checkpoint_dir:
        state = torch.load(Path(checkpoint_dir) / _STATE_FILE, map_location="cpu", weights_only=True)
    metrics = result.metrics
    history = {k: list(metrics[k]) for k in ("train_loss", "val_loss", "val_reduced_chi2", "throughput")}
    return _result(grid, config, state, int(metrics["best_epoch"]), history)


def _ray_train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train worker: the same :func:`_fit` as :func:`train_vae`, on this rank's hash shard."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    config, options, grid = cfg["config"], cfg["options"], cfg["grid"]
    torch.manual_seed(options.seed)
    vae = SpectrumVAE(grid.npix, lya_forest_mask(grid), config)
    net = ray.train.torch.prepare_model(vae, parallel_strategy_kwargs={"forward_sync_buffers": False})
    torch.manual_seed(options.seed + rank)  # identical init above, distinct sampling noise below
    per_rank = replace(options, batch_size=max(1, options.batch_size // world_size))
    stream = SpectraStream(cfg["paths"], grid.wave, per_rank, rank=rank, world_size=world_size)
    val = load_split(
        cfg["paths"],
        grid.wave,
        "val",
        options.val_fraction,
        rank=rank,
        world_size=world_size,
        read_rows=options.read_rows,
    )
    outcome = _fit(net, vae, stream, val, options, device, report=ray.train.report)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(outcome.best_state, Path(tmp) / _STATE_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"best_epoch": outcome.best_epoch, **outcome.history}, checkpoint=checkpoint)


def _result(
    grid: RestFrameGrid,
    config: VaeConfig,
    state: dict[str, torch.Tensor],
    best_epoch: int,
    history: dict[str, list[float]],
) -> TrainResult:
    model = SpectrumVAE(grid.npix, lya_forest_mask(grid), config)
    model.load_state_dict(state)
    return TrainResult(model.eval(), config, best_epoch, history)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _all_reduce(t: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


def _until_any_rank_is_done(batches: Iterable[_T], device: torch.device) -> Iterator[_T]:
    """Yield batches while every rank still has one (a one-integer all-reduce per step).

    DDP's ``join()`` would let ranks with more batches step alone, but their optimizer states (Adam
    moments, step counts) then diverge from the others', which measurably slows training; stopping
    together instead drops at most a few batches per epoch, different rows each epoch.
    """
    if not (dist.is_available() and dist.is_initialized()):
        yield from batches
        return
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        has_batch = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        dist.all_reduce(has_batch, op=dist.ReduceOp.MIN)
        if not has_batch.item():
            return
        yield batch


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (H100/H200 tensor cores); fp32 on CPU, where bf16 is slow and inexact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU for the duration (CUDA would also need cuBLAS settings)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(previous or device.type == "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
