"""The shipped suite: it loads, has at least ten tasks per category, and is honest — a model
that does nothing fails every task (each scorer run on its untouched fixture)."""

from __future__ import annotations

from collections import Counter

import pytest

from base.errors import ConfigError
from evaluation.runner import attempt_of
from evaluation.sandbox import create_sandbox
from evaluation.scorers import prepare, score
from evaluation.task import CATEGORIES, load_suite, load_task_file, one_per_category

SUITE = load_suite()


def test_suite_has_ten_tasks_per_category():
    counts = Counter(t.category for t in SUITE.tasks)
    assert set(counts) == set(CATEGORIES)
    assert min(counts.values()) >= 10
    assert set(SUITE.config.weights) == set(CATEGORIES)


@pytest.mark.parametrize("task", SUITE.tasks, ids=[t.id for t in SUITE.tasks])
def test_doing_nothing_fails(task):
    box = create_sandbox(task.fixture, SUITE.path)
    try:
        prepare(task.scorer, box)
        graded = score(task.scorer, attempt_of(box, None))
    finally:
        box.remove()
    assert graded.score == 0, graded.checks
    assert graded.score < task.pass_score


def test_selection():
    assert [t.id for t in SUITE.select(["git-merge-clean", "bead-claim"])] == [
        "git-merge-clean",
        "bead-claim",
    ]
    assert {t.category for t in SUITE.select(category="planning")} == {"planning"}
    assert len(SUITE.select(limit=3)) == 3
    subset = one_per_category(SUITE.tasks)
    assert [t.category for t in subset] == list(CATEGORIES)
    with pytest.raises(ConfigError, match="unknown task"):
        SUITE.select(["no-such-task"])


def test_bad_scorer_parameter_is_named(tmp_path):
    (tmp_path / "fixtures").mkdir()
    (tmp_path / "tasks.yaml").write_text(
        "- {id: t1, category: planning, prompt: p, scorer: {kind: plan, min_bead: 3}}\n"
    )
    (tmp_path / "suite.yaml").write_text("name: s\ntasks: [tasks.yaml]\nweights: {planning: 1}\n")
    with pytest.raises(ConfigError, match="(?s)t1.*min_bead"):
        load_suite(tmp_path / "suite.yaml")
    (tmp_path / "tasks.jsonl").write_text('{"id": "Bad Id", "category": "planning"}\n')
    with pytest.raises(ConfigError, match="Bad Id"):
        load_task_file(tmp_path / "tasks.jsonl")
