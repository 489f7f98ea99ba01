"""Shared wiring of the per-partition assets: fan partitions out to Ray, report what happened."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace

import dagster as dg
import pyarrow as pa
from ray import get_runtime_context

from qad_assets.errors import QadError
from qad_assets.science.partition_steps import StepSummary
from resources.ray import RayResource

progress = logging.getLogger("qad.progress")


class PartitionStepsFailed(QadError):
    """Some partitions of a run failed; the others were written. The message names each failure."""


def run_partition_steps(
    context: dg.AssetExecutionContext,
    ray: RayResource,
    step_for_key: Callable[[str], Callable[[], StepSummary]],
    *,
    num_gpus: float = 0,
) -> dict[str, StepSummary]:
    """Run one step per partition of this run on Ray; log progress as partitions finish.

    When some partitions fail, the others are recorded as materialized (with their summary) before the
    step fails, so a retry of the step skips them and a rerun of the failed partitions redoes only those.
    """
    asset = context.asset_key.to_user_string()
    keys = sorted(context.partition_keys)
    summaries = done_in_this_run(context, keys)
    todo = [key for key in keys if key not in summaries]
    if summaries:
        progress.info("%s: %d partitions already done by an earlier attempt of this run", asset, len(summaries))
    failures: dict[str, BaseException] = {}
    done = sum(s.kept for s in summaries.values())
    for index, outcome in ray.imap_unordered(_call, [step_for_key(key) for key in todo], num_gpus=num_gpus):
        key = todo[index]
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
        for key in todo:
            if key in summaries:
                context.log_event(
                    dg.AssetMaterialization(
                        context.asset_key,
                        partition=key,
                        metadata={SUMMARY_KEY: dg.MetadataValue.json(asdict(summaries[key]))},
                    )
                )
        lines = "\n".join(f"{key}: {type(err).__name__}: {err}" for key, err in sorted(failures.items()))
        raise PartitionStepsFailed(f"{len(failures)} of {len(keys)} partitions failed:\n{lines}")
    return dict(sorted(summaries.items()))


#: Metadata key of the per-partition summary recorded when a run's other partitions failed.
SUMMARY_KEY = "step_summary"


def done_in_this_run(context: dg.AssetExecutionContext, keys: list[str]) -> dict[str, StepSummary]:
    """Partitions an earlier attempt of this same run already materialized (a step retry), with their
    summaries: they are not redone.
    """
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=keys), limit=len(keys)
    ).records
    done = {}
    for record in records:
        materialization = record.asset_materialization
        if (
            record.run_id == context.run.run_id
            and materialization is not None
            and SUMMARY_KEY in materialization.metadata
        ):
            done[materialization.partition] = StepSummary(**materialization.metadata[SUMMARY_KEY].value)
    return done


def _call(step: Callable[[], StepSummary]) -> StepSummary:
    """A partition step in a Ray task; its summary says which node ran it."""
    return replace(step(), node=get_runtime_context().get_node_id())


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
        f"| {key} | {s.rows_in} | {s.kept} | {s.filtered} | {s.quarantined} | {s.seconds:.2f} | {s.node[:8]} |"
        for key, s in summaries.items()
    ]
    header = "| partition | in | kept | filtered | quarantined | s | node |\n|---|---|---|---|---|---|---|\n"
    table = header + "\n".join(rows)
    nodes = Counter(s.node for s in summaries.values() if s.node)
    return {
        "partitions": len(summaries),
        "rows_in": total["rows_in"],
        "rows_kept": total["kept"],
        "rows_filtered": total["filtered"],
        "rows_quarantined": total["quarantined"],
        "reasons": dg.MetadataValue.json(dict(sorted(reasons.items()))),
        "seconds": round(sum(s.seconds for s in summaries.values()), 3),
        "per_partition": dg.MetadataValue.md(table),
        "partitions_per_node": dg.MetadataValue.json(dict(sorted(nodes.items()))),
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
    "ledger_balances": (
        True,
        "every input row (FIBERMAP NAXIS2 from the coadd header) is in the ledger once: kept, filtered or quarantined",
    ),
    "quarantine_empty": (False, "warns when input rows were quarantined (reasons: qad's summary, the ledger files)"),
}


def accounting_checks(asset: str, summaries: Mapping[str, StepSummary]) -> list[dg.AssetCheckResult]:
    """Blocking: every input row (counted apart from the ledger, from the coadd's FIBERMAP header) is in the
    ledger exactly once, kept, filtered or quarantined. Warning: quarantine is empty."""
    unbalanced = {
        k: {"input_rows": s.rows_in, "kept": s.kept, "filtered": s.filtered, "quarantined": s.quarantined}
        | {"ledger_rows_are_the_input_rows": s.accounted}
        for k, s in summaries.items()
        if not s.balanced
    }
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
