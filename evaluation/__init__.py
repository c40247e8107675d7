"""The agent eval suite: tasks as data, sandboxes, scorers, the gate, paired comparison
(docs/eval.md). ``node0 eval`` is :mod:`evaluation.cli`."""

from evaluation.task import CATEGORIES, Suite, Task, load_suite

__all__ = ["CATEGORIES", "Suite", "Task", "load_suite"]
