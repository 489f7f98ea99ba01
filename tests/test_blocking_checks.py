"""A failed blocking check stops what is downstream of its asset, in the same run."""

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from qad_assets.definitions import defs
from qad_assets.demo.release import DemoRelease
from qad_assets.science.io.parquet_store import read_table, write_table_atomic

pytestmark = pytest.mark.slow


@pytest.fixture
def release(small_demo: DemoRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("QAD_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("QAD_ARCHIVE", str(small_demo.root))
    return "demo_main_dark_26064"


def test_a_failed_blocking_check_stops_downstream_assets(release: str, tmp_path: Path) -> None:
    job = defs.resolve_job_def("qad_spectra")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("spectra_partitions", [release])
        raw = job.execute_in_process(
            instance=instance, partition_key=release, asset_selection=[dg.AssetKey("raw_spectra")]
        )
        assert raw.success
        # The ledger now claims one more kept quasar than raw_spectra holds: normalized_spectra's
        # blocking row-count check must fail and spectral_features must not run.
        ledger_file = tmp_path / "storage" / "raw_spectra" / "demo" / "ledger" / f"{release}.parquet"
        ledger = read_table(ledger_file)
        extra = ledger.slice(0, 1).set_column(3, "status", pa.array(["kept"])).set_column(4, "reason", pa.array([""]))
        write_table_atomic(pa.concat_tables([ledger, extra.cast(ledger.schema)]), ledger_file)

        rest = job.execute_in_process(
            instance=instance,
            partition_key=release,
            asset_selection=[dg.AssetKey("normalized_spectra"), dg.AssetKey("spectral_features")],
            raise_on_error=False,
        )
        assert not rest.success
        evaluations = {e.check_name: e.passed for e in rest.get_asset_check_evaluations()}
        assert evaluations["matches_raw_spectra"] is False
        assert evaluations["finite_values"] is True
        materialized = {e.asset_key.to_user_string() for e in rest.get_asset_materialization_events()}
        assert materialized == {"normalized_spectra"}
        assert instance.get_materialized_partitions(dg.AssetKey("spectral_features")) == set()
