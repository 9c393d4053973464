"""GLUE and SuperGLUE tasks: specifications, data loading, split protocols, formats and metrics."""

from pelt.tasks.data import PROTOCOLS, load_splits, load_task_data, protocol_splits
from pelt.tasks.metrics import compute_metrics
from pelt.tasks.spec import TaskSpec, get_task, list_tasks, protocol_defaults

__all__ = ["PROTOCOLS", "TaskSpec", "compute_metrics", "get_task", "list_tasks", "load_splits", "load_task_data",
           "protocol_defaults", "protocol_splits"]
