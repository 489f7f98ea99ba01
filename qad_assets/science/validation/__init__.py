"""Validation: baselines, injected anomalies, detection metrics, the release harness and its report."""

from qad_assets.science.validation.baselines import IsolationForestBaseline, PcaBaseline
from qad_assets.science.validation.evaluation import detection_metrics, metrics_report
from qad_assets.science.validation.harness import validate_release
from qad_assets.science.validation.injection import inject, injection_set
from qad_assets.science.validation.report import write_report

__all__ = [
    "IsolationForestBaseline",
    "PcaBaseline",
    "detection_metrics",
    "inject",
    "injection_set",
    "metrics_report",
    "validate_release",
    "write_report",
]
