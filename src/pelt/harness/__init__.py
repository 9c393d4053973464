"""The experiment harness: grids of runs, learning-rate selection on validation, reports and figures."""

from pelt.harness.grid import LOW_RESOURCE_EPOCHS, GridSettings, RunSpec, expand_grid, read_records
from pelt.harness.report import latest_records, select_best, select_per_method, write_report
from pelt.harness.sweep import RESULTS_NAME, run_grid

__all__ = ["LOW_RESOURCE_EPOCHS", "RESULTS_NAME", "GridSettings", "RunSpec", "expand_grid", "latest_records",
           "read_records", "run_grid", "select_best", "select_per_method", "write_report"]
