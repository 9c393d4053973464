"""One backbone, many tasks: every input row computed with its own task's adapter and head, in one pass."""

from pelt.multitask.model import MultiTaskModel, MultiTaskOutput, TaskInfo, task_names

__all__ = ["MultiTaskModel", "MultiTaskOutput", "TaskInfo", "task_names"]
