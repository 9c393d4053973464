"""GLUE tasks: specifications, data loading and metrics."""

from pelt.tasks.glue import TaskSpec, get_task, list_tasks, load_task_data
from pelt.tasks.metrics import compute_metrics

__all__ = ["TaskSpec", "compute_metrics", "get_task", "list_tasks", "load_task_data"]
