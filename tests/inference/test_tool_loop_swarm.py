"""``node0-inference --tools bash`` end to end over a real 3-stage SmolLM2 swarm: a task adapter
trained here (single-process PEFT) to read the notes with ``cat notes.txt`` and report them is
served by the swarm; the call really runs in the working directory, its output goes back to the
model, whose answer depends on it, and the --json events and the transcript show every step."""

from __future__ import annotations

import json

import pytest

from inference.tool_calls import FORMATS, ToolCall
from inference.tools import BASH, ToolOutcome
from tests.fixtures import (
    SMOLLM2_3STAGE,
    local_swarm,
    run_cli,
    train_tool_adapter,
    wait_for_quiet_machine,
)

# training costs 2-20 s a step on a busy 2-core machine: 30 of them before the swarm starts
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
ADAPTER = "notes"
QUESTION = "What do the notes say?"
NOTES = ["deploy on friday", "fix the parser first", "ship version two"]
STEPS = 30  # 20 steps over two notes were too few for the call's syntax


def notes_examples() -> list[tuple[list[dict], str]]:
    """Per note: the question gets ``cat notes.txt``; after the tool's result (as the loop
    shows it to the model), the answer repeats the note."""
    fmt = FORMATS["hermes"]
    call = ToolCall("call_1", "bash", json.dumps({"command": "cat notes.txt"}))
    question = [{"role": "user", "content": QUESTION}]
    examples = []
    for note in NOTES:
        result = ToolOutcome(f"{note}\n").model_text()
        history = question + [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ]
        examples += [(question, fmt.render_call(call)), (history, f"The notes say: {note}.")]
    return examples


@pytest.fixture(scope="module")
def swarm(smollm2_dir, tmp_path_factory):
    wait_for_quiet_machine()
    root = tmp_path_factory.mktemp("tool-loop")
    adapter = root / ADAPTER
    train_tool_adapter(
        smollm2_dir, ADAPTER, adapter, steps=STEPS, examples=notes_examples(), tools=[BASH]
    )
    with local_swarm(root, MODEL, SMOLLM2_3STAGE, adapters={ADAPTER: str(adapter)}) as state:
        yield state


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
