"""One eval task end to end through the shared 3-stage SmolLM2 swarm: the ``notes`` adapter
(trained in the session's fixture to answer "What do the notes say?" with ``cat notes.txt``)
runs the command in the task's sandbox, reads its output, and answers from it; the task's
scorer sees the answer, the run directory has the transcript with the call and its output."""

from __future__ import annotations

import json

import pytest

from evaluation.evaluate import run_eval
from evaluation.task import EVAL_DIR, load_suite
from tests.fixtures import NOTES, NOTES_QUESTION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_task_through_the_swarm_with_a_tool_call(smollm2_swarm, tmp_path):
    (tmp_path / "fixtures").symlink_to(EVAL_DIR / "fixtures")
    task = {"id": "read-notes", "category": "convention_adherence", "prompt": NOTES_QUESTION,
            "fixture": {"files": {"notes.txt": f"{NOTES[1]}\n"}},
            "scorer": {"kind": "answer_contains", "words": [NOTES[1]]}}  # fmt: skip
    (tmp_path / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    (tmp_path / "suite.yaml").write_text(
        "name: swarm-test\ntasks: [tasks.jsonl]\nweights: {convention_adherence: 1}\n"
        "tools: [bash]\nsystem: ''\nlimits: {max_steps: 4, max_new_tokens: 48}\n"
    )  # the adapter was trained without a system message, with only bash offered
    suite = load_suite(tmp_path / "suite.yaml")
    lines: list[str] = []
    run = run_eval(suite, suite.tasks, model="smollm2-135m", adapters=("notes",),
                   initial_peers=smollm2_swarm.initial_peers, runs_dir=tmp_path / "runs",
                   progress=lines.append)  # fmt: skip
    (result,) = run.results
    assert result.passed and result.tool_calls == 1 and result.stop_reason == "answer"
    assert lines[0].startswith("task 1/1 convention_adherence: read-notes")
    transcript = run.path / "transcripts" / "read-notes.jsonl"
    (record,) = [json.loads(x) for x in transcript.read_text().splitlines()]
    turns = record["turns"]
    assert [t["speaker"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[1]["tool_calls"][0]["arguments"] == {"command": "cat notes.txt"}
    assert turns[2]["text"] == NOTES[1] and turns[2]["exit_code"] == 0  # it ran, in the sandbox
    assert turns[3]["text"] == f"The notes say: {NOTES[1]}."  # the model read the output
    assert run.scores["categories"]["convention_adherence"]["passed"] == 1
    assert run.scores["adapters"] == ["notes"] and run.scores["backend"] == "swarm"
