"""What ``qad`` prints about its runs: the asset checks, the summary table and why a run failed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg
    from dagster._utils.error import SerializableErrorInfo

COUNTS = ("partitions", "rows_in", "rows_kept", "rows_filtered", "rows_quarantined", "seconds")
#: What the summary shows for a per-release product, which has no row counts.
RELEASE_FIELDS = (
    "model_version",
    "val_reduced_chi2",
    "epochs_run",
    "overall_auroc",
    "pca_auroc",
    "snr_spearman_vae",
    "promoted_to_champion",
    "report",
)


def check_rows(result: dg.ExecuteInProcessResult) -> list[dict]:
    """Every asset check evaluated in a run: asset, check, passed, severity, description."""
    return [
        {
            "asset": evaluation.asset_key.to_user_string(),
            "check": evaluation.check_name,
            "passed": evaluation.passed,
            "severity": evaluation.severity.value,
            "description": evaluation.description or "",
        }
        for evaluation in result.get_asset_check_evaluations()
    ]


def print_checks(checks: list[dict]) -> None:
    """The asset checks as a table; a failed ERROR check blocks what is downstream of its asset."""
    if not checks:
        return
    print(f"\n{'asset':<22}{'check':<24}{'result':<10}description", file=sys.stderr)
    for c in checks:
        result = "pass" if c["passed"] else ("FAIL" if c["severity"] == "ERROR" else "warn")
        print(f"{c['asset']:<22}{c['check']:<24}{result:<10}{c['description']}", file=sys.stderr)


def stage_rows(result: dg.ExecuteInProcessResult) -> list[dict]:
    """One summary row per asset of a run, from its materialization metadata.

    A run over a partition range records one event per partition, all with the run's totals.
    """
    rows: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        stage = materialization.asset_key.to_user_string()
        rows[stage] = {"stage": stage, **{k: v.value for k, v in materialization.metadata.items()}}
    return list(rows.values())


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """Each failed step with the partition(s) of its run and the innermost cause of its error (the user's
    exception, not Dagster's wrapper around it), for a run that did not succeed.
    """
    tags = result.dagster_run.tags
    partition = tags.get("dagster/partition") or "..".join(
        tags[name]
        for name in ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
        if name in tags
    )
    where = f" (partition {partition})" if partition else ""
    messages = [f"{step}{where}: {innermost_cause(error)}" for step, error in _failures(result)]
    return "pipeline run failed\n" + "\n".join(messages or [f"run {result.run_id} did not succeed"])


def _failures(result: dg.ExecuteInProcessResult) -> list[tuple[str, SerializableErrorInfo]]:
    """(step, error) of each failed step and each step whose resources could not start (a Ray cluster that
    refused us, a registry that cannot be read); else the run's own error."""
    failed = [
        (event.step_key or "run", event.event_specific_data.error)
        for event in result.all_events
        if (event.is_step_failure or event.is_resource_init_failure) and event.event_specific_data.error is not None
    ]
    if failed:
        return failed
    return [
        ("run", event.event_specific_data.error)
        for event in result.all_events
        if event.is_run_failure and getattr(event.event_specific_data, "error", None) is not None
    ]


def innermost_cause(error: SerializableErrorInfo) -> str:
    """``Class: message`` of the deepest error in the chain of causes (else of contexts)."""
    while (deeper := error.cause or error.context) is not None:
        error = deeper
    text = error.message.strip()
    qualified = f"{error.cls_name}:"
    if ":" in text and text.split(":", 1)[0].endswith(f".{error.cls_name}"):  # module-qualified class name
        text = f"{error.cls_name}:{text.split(':', 1)[1]}"
    return text if text.startswith(qualified) or not error.cls_name else f"{error.cls_name}: {text}"


#: Skipped archive entries listed one per line; beyond this, a count.
MAX_SKIPPED_SHOWN = 50


def print_skipped(skipped: list[tuple[str, str]], where: str) -> None:
    """The archive entries named like coadds that are not partitions, each with why."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} entries under {where} that are not healpix coadds:", file=sys.stderr)
    for path, why in skipped[:MAX_SKIPPED_SHOWN]:
        print(f"  {path}: {why}", file=sys.stderr)
    if len(skipped) > MAX_SKIPPED_SHOWN:
        print(f"  … and {len(skipped) - MAX_SKIPPED_SHOWN} more", file=sys.stderr)


def print_model_decisions(rows: list[dict]) -> None:
    """Which model scored each release and why, and what validation decided about promotion."""
    for row in rows:
        for release, choice in (row.get("model_choice") or {}).items():
            print(f"\n{release}: scored by qad-vae v{choice['version']} ({choice['status']}): {choice['reason']}")
        if "decision" in row:
            print(f"validation_report: {row['decision']}")


def print_reasons(rows: list[dict]) -> None:
    """Why rows were filtered or quarantined, per stage: the ledger's reasons counted, most frequent first."""
    for row in rows:
        reasons = row.get("reasons") or {}
        if reasons:
            counted = ", ".join(f"{why} {n}" for why, n in sorted(reasons.items(), key=lambda item: -item[1]))
            print(f"{row['stage']:<22}{counted}")


def print_summary(rows: list[dict], seconds: float, storage: Path) -> None:
    """Rows in/kept/filtered/quarantined per stage (or the key figures of a per-release product), time,
    and where the outputs are.
    """
    totals: dict[str, dict] = {}
    for row in rows:
        total = totals.setdefault(row["stage"], dict.fromkeys(COUNTS, 0) | {"detail": ""})
        for name in COUNTS:
            total[name] += row.get(name, 0)
        total["detail"] = ", ".join(
            f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in RELEASE_FIELDS if k in row
        )
    header = f"{'stage':<22}{'partitions':>11}{'in':>9}{'kept':>9}{'filtered':>10}{'quarantined':>13}{'cpu s':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for stage, t in totals.items():
        if t["detail"]:
            print(f"{stage:<22}{t['detail']}")
            continue
        print(
            f"{stage:<22}{t['partitions']:>11}{t['rows_in']:>9}{t['rows_kept']:>9}{t['rows_filtered']:>10}"
            f"{t['rows_quarantined']:>13}{t['seconds']:>9.1f}"
        )
    print_reasons(rows)
    print_model_decisions(rows)
    print(f"\nwall time {seconds:.1f} s")
    for stage in totals:
        print(f"{stage:<22}{storage / stage}")
    print(f"{'dagster instance':<22}{storage / 'dagster_home'}   (open with: qad ui --storage {storage})")
