"""Shared wiring of the per-partition assets: fan partitions out to Ray, report what happened."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping

import dagster as dg
import pyarrow as pa

from qad_assets.science.partition_steps import StepSummary
from resources.ray import RayResource

progress = logging.getLogger("qad.progress")


class PartitionStepsFailed(Exception):
    """Some partitions of a run failed; the others were written. The message names each failure."""


def run_partition_steps(
    context: dg.AssetExecutionContext,
    ray: RayResource,
    step_for_key: Callable[[str], Callable[[], StepSummary]],
    *,
    num_gpus: float = 0,
) -> dict[str, StepSummary]:
    """Run one step per partition of this run on Ray; log progress as partitions finish."""
    asset = context.asset_key.to_user_string()
    keys = sorted(context.partition_keys)
    summaries: dict[str, StepSummary] = {}
    failures: dict[str, BaseException] = {}
    done = 0
    for index, outcome in ray.imap_unordered(_call, [step_for_key(key) for key in keys], num_gpus=num_gpus):
        key = keys[index]
        if isinstance(outcome, BaseException):
            failures[key] = outcome
            progress.error("%s %s failed: %s", asset, key, outcome)
            continue
        summaries[key] = outcome
        done += outcome.kept
        progress.info(
            "%s %d/%d %s: %d in, %d kept, %d filtered, %d quarantined (%d spectra done)",
            asset,
            len(summaries) + len(failures),
            len(keys),
            key,
            outcome.rows_in,
            outcome.kept,
            outcome.filtered,
            outcome.quarantined,
            done,
        )
    if failures:
        lines = "\n".join(f"{key}: {type(err).__name__}: {err}" for key, err in sorted(failures.items()))
        raise PartitionStepsFailed(f"{len(failures)} of {len(keys)} partitions failed:\n{lines}")
    return dict(sorted(summaries.items()))


def _call(step: Callable[[], StepSummary]) -> StepSummary:
    return step()


def stage_metadata(summaries: Mapping[str, StepSummary]) -> dict[str, object]:
    """Totals over the run's partitions, and a per-partition table, for the materialization."""
    total = Counter()
    reasons = Counter()
    for summary in summaries.values():
        total.update(
            rows_in=summary.rows_in, kept=summary.kept, filtered=summary.filtered, quarantined=summary.quarantined
        )
        reasons.update(summary.reasons)
    rows = [
        f"| {key} | {s.rows_in} | {s.kept} | {s.filtered} | {s.quarantined} | {s.seconds:.2f} |"
        for key, s in summaries.items()
    ]
    table = "| partition | in | kept | filtered | quarantined | s |\n|---|---|---|---|---|---|\n" + "\n".join(rows)
    return {
        "partitions": len(summaries),
        "rows_in": total["rows_in"],
        "rows_kept": total["kept"],
        "rows_filtered": total["filtered"],
        "rows_quarantined": total["quarantined"],
        "reasons": dg.MetadataValue.json(dict(sorted(reasons.items()))),
        "seconds": round(sum(s.seconds for s in summaries.values()), 3),
        "per_partition": dg.MetadataValue.md(table),
        "outputs": dg.MetadataValue.json({key: s.output for key, s in summaries.items()}),
    }


#: Checks of an asset: name → (blocking, what it checks). Blocking checks fail with ERROR severity and
#: stop downstream assets; the others warn.
CheckTable = Mapping[str, tuple[bool, str]]


def check_specs(asset: str, checks: CheckTable) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset, blocking=blocking, description=text)
        for name, (blocking, text) in checks.items()
    ]


def check_result(
    asset: str, checks: CheckTable, name: str, passed: bool, metadata: Mapping[str, object]
) -> dg.AssetCheckResult:
    blocking, text = checks[name]
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        description=text,
        metadata=dict(metadata),
    )


ACCOUNTING_CHECKS: CheckTable = {
    "ledger_balances": (True, "input = kept + filtered + quarantined in every partition"),
    "quarantine_empty": (False, "no input row was quarantined (see the ledger files)"),
}


def accounting_checks(asset: str, summaries: Mapping[str, StepSummary]) -> list[dg.AssetCheckResult]:
    """Blocking: every input row is kept, filtered or quarantined. Warning: quarantine is empty."""
    unbalanced = {k: [s.rows_in, s.kept, s.filtered, s.quarantined] for k, s in summaries.items() if not s.balanced}
    quarantined = {k: s.quarantined for k, s in summaries.items() if s.quarantined}
    return [
        check_result(
            asset,
            ACCOUNTING_CHECKS,
            "ledger_balances",
            not unbalanced,
            {"unbalanced_partitions": dg.MetadataValue.json(unbalanced)},
        ),
        check_result(
            asset,
            ACCOUNTING_CHECKS,
            "quarantine_empty",
            not quarantined,
            {"quarantined_by_partition": dg.MetadataValue.json(quarantined)},
        ),
    ]


def arrow_table_schema(schema: pa.Schema) -> dg.TableSchema:
    """An Arrow schema as Dagster column metadata, so the UI shows each product's columns."""
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])
