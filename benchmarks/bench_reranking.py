"""What labels buy: a simulated inspection per anomaly class of a demo release scored by the pipeline.

For each injected class the simulated astronomer walks down the anomaly ranking and labels the first
``--labels`` members of that class (as a person would meet them) with the vocabulary's label for it,
nothing else; then the release is re-ranked (``candidate_ranking``'s science,
``qad_assets.science.ranking``) and the recall of the class's *unlabelled* members in the top ``k`` of
the unlabelled queue (``--tops``: 100 and 300), and their median place in it, are compared with the
plain anomaly-score order. Classes whose label means
"wanted" (BAL, weak lines, other interesting) should rise, the others (artifact, star, wrong z, galaxy
blend) sink.

The default demo has too few anomalies per class for 30 labels and a remainder to measure; write a
richer one (20 % of the quasar targets anomalous: ~60 per class) and run the pipeline on it::

    .venv/bin/python -m qad_assets.demo /tmp/rr/demo_archive --n-pixels 8 --targets-per-pixel 500 \
        --settings '{"anomaly_fraction": 0.2}'
    .venv/bin/qad run --archive /tmp/rr/demo_archive --storage /tmp/rr
    .venv/bin/python benchmarks/bench_reranking.py --storage /tmp/rr

Figures of a run are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

from qad_assets.labels.vocabulary import default_interest
from qad_assets.science.ranking.candidates import read_candidates
from qad_assets.science.ranking.inspection import simulate_inspection

#: The label an astronomer would give each injected class of the demo.
LABEL_OF_CLASS = {
    "hibal": "bal",
    "lobal": "bal",
    "weak_line": "weak_lines",
    "reddened": "other_interesting",
    "extreme_lines": "other_interesting",
    "artifact": "artifact",
    "star_as_qso": "star",
    "wrong_z": "wrong_z",
    "superposition": "galaxy_blend",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="storage root of a demo run (with demo_archive)")
    parser.add_argument("--release", default="demo")
    parser.add_argument("--labels", type=int, default=30, help="spectra of the class labelled (default: 30)")
    parser.add_argument("--tops", type=int, nargs="+", default=[100, 300], help="queue heads measured")
    args = parser.parse_args()
    truth_table = pl.read_parquet(args.storage / "demo_archive" / f"truth-{args.release}.parquet")
    truth = {int(t): c for t, c in zip(truth_table["TARGETID"], truth_table["anomaly_class"], strict=True) if c}
    candidates = read_candidates(args.storage, args.release)
    print(f"{len(candidates)} scored spectra, {args.labels} labels per class; recall of the unlabelled rest")
    columns = "".join(f"{f'top {k}':>16}" for k in args.tops)
    print(f"{'class':<22}{'label':<19}{'interest':>9}{'left':>6}{columns}{'median place':>16}{'s':>6}")
    interest = default_interest()
    for true_class in sorted(set(truth.values())):
        label = LABEL_OF_CLASS[true_class]
        start = time.perf_counter()
        result = simulate_inspection(
            candidates, truth, true_class, label, interest_of=interest, n_labels=args.labels, tops=args.tops
        )
        recalls = "".join(f"{result.recall_plain[k]:>9.2f} → {result.recall_reranked[k]:.2f}" for k in args.tops)
        places = f"{result.median_position_plain:>8.0f} → {result.median_position_reranked:<5.0f}"
        print(
            f"{true_class:<22}{label:<19}{interest[label]:>9.0f}{result.remaining:>6}{recalls}{places}"
            f"{time.perf_counter() - start:>5.1f}"
        )


if __name__ == "__main__":
    main()
