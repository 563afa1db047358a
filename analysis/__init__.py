"""mpo analysis: metrics, tables, figures and reports from per-example results (no torch, no Ray)."""

from analysis.build import build_report
from analysis.loading import Group, ModelInfo, ResultSet, RunFolderError, load_results
from analysis.report import FORMATS, make_report
from analysis.stats import Estimate, wilson_interval

__all__ = [
    "FORMATS",
    "Estimate",
    "Group",
    "ModelInfo",
    "ResultSet",
    "RunFolderError",
    "build_report",
    "load_results",
    "make_report",
    "wilson_interval",
]
