"""``node0-inference --tools bash`` end to end over the shared 3-stage SmolLM2 swarm: a task
adapter trained in the session's fixture (``tool_adapters``, single-process PEFT) to read the
notes with ``cat notes.txt`` and report them is served by the swarm; the call really runs in
the working directory, its output goes back to the model, whose answer depends on it, and the
--json events and the transcript show every step."""

from __future__ import annotations

import json

import pytest

from tests.fixtures import NOTES, NOTES_QUESTION, run_cli

# the session's tool adapters are trained before the shared swarm starts (2-20 s a step)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
ADAPTER = "notes"
QUESTION = NOTES_QUESTION


@pytest.fixture(scope="module")
def swarm(smollm2_swarm):
    return smollm2_swarm


def test_node0_inference_runs_bash_and_answers_from_its_output(swarm, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(f"{NOTES[1]}\n")  # only here: the command ran in the workdir
    transcript = tmp_path / "transcript.jsonl"
    run = run_cli(
        ["inference.agent_client", "--model", MODEL, "--initial-peers", *swarm.initial_peers,
         "--adapters", ADAPTER, "--tools", "bash", "--workdir", str(work), "--json",
         "--max-new-tokens", "48", "--max-steps", "4", "--transcript", str(transcript)],
        stdin=f"{QUESTION}\n",
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "node0 inference --tools" in run.stderr and "sha256=" in run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    calls = [e for e in events if e["type"] == "tool_call"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert [(c["name"], c["arguments"]) for c in calls] == [("bash", {"command": "cat notes.txt"})]
    (result,) = results
    assert result["id"] == calls[0]["id"] and result["output"] == f"{NOTES[1]}\n"
    assert result["exit_code"] == 0 and result["denied"] is None
    answer = "".join(e["text"] for e in events if e["type"] == "token")
    assert answer == f"The notes say: {NOTES[1]}."  # the model read the command's output
    done = events[-1]
    assert done["type"] == "done" and done["stop_reason"] == "answer"
    assert (done["steps"], done["tool_calls"], done["denied"]) == (2, 1, 0)
    assert done["reused_tokens"] > 0  # step 2 reused step 1's prompt in the stages' caches

    (record,) = [json.loads(line) for line in transcript.read_text().splitlines()]
    turns = record["turns"]
    assert [t["speaker"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[1]["tool_calls"][0]["id"] == calls[0]["id"]
    assert turns[2]["text"] == NOTES[1] and turns[2]["exit_code"] == 0
    assert turns[3]["text"] == answer and turns[3]["stop_reason"] == "answer"
    assert record["outcome"] == "success"
