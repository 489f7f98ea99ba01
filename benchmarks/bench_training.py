"""VAE training throughput (spectra/s per epoch) and peak memory, on CPU and on CUDA when present.

    python benchmarks/bench_training.py [--epochs 3] [--n-pixels 8]

Trains the default model (qad_assets.assets.vae_model.VaeTrainingConfig) on the normalized spectra of a
freshly written demo release, through the same ``train_vae`` the asset calls, and prints one row per
device with the median epoch throughput and the FLOPs arithmetic of the model.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import pyarrow as pa
import torch

from qad_assets.assets.vae_model import VaeTrainingConfig
from qad_assets.demo.release import write_demo_release
from qad_assets.science.io.spectra_file import read_spectra_file
from qad_assets.science.model.training import train_vae
from qad_assets.science.model.vae import SpectrumVAE
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.normalization import normalized_table
from qad_assets.science.spectra.rest_frame import REST_GRID


def training_flops_per_spectrum(model: SpectrumVAE) -> float:
    """2 FLOPs per multiply-add of every Linear layer, ×3 for forward + backward."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 3 * 2 * macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-pixels", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = write_demo_release(Path(tmp), n_pixels=args.n_pixels)
        table = pa.concat_tables(
            normalized_table(read_spectra_file(c, r, release="bench").spectra)
            for c, r in zip(demo.coadd_paths, demo.redrock_paths, strict=True)
        )
    data = Spectra.from_table(table, REST_GRID.wave)
    config = VaeTrainingConfig(max_epochs=args.epochs, patience=args.epochs)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"{len(data.targetid)} spectra × {REST_GRID.npix} pixels, batch {config.batch_size}, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"{'device':<8}{'epochs':>8}{'spectra/s':>12}{'GFLOP/s':>10}{'peak MB':>10}")
    for device in devices:
        result = train_vae(data, REST_GRID, config.vae_config(), config.train_options(), device=device)
        flops = training_flops_per_spectrum(result.model)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rate = result.throughput
        print(f"{device:<8}{result.epochs_run:>8}{rate:>12.0f}{rate * flops / 1e9:>10.1f}{peak:>10.0f}")
        print(f"  {device}: a DR1 epoch (1.5M spectra) would take {1.5e6 / rate / 60:.1f} min")
    print(f"training FLOPs per spectrum (forward + backward): {flops / 1e6:.1f} M")


if __name__ == "__main__":
    main()
