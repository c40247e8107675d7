"""The agent tool loop (inference/tool_loop.py) with scripted model replies: a call runs, its
output is in the next prompt, the next reply answers; limits end runaway loops and say so;
refusals go back to the model and are counted; ToolAgent keeps history and transcript."""

from __future__ import annotations

import asyncio
import json

from inference.tool_agent import ToolAgent
from inference.tool_calls import FORMATS, ToolCall
from inference.tool_loop import (
    LoopLimits,
    TextEvent,
    ToolCallEvent,
    ToolResultEvent,
    run_tool_loop,
)
from inference.tools import Toolbox, ToolLimits
from inference.transcript import SessionTranscript
from tests.fixtures import ScriptedModel, bash_call

FMT = FORMATS["hermes"]
ASK = [{"role": "user", "content": "What do the notes say?"}]


def loop(model, toolbox, messages=ASK, **limits):
    events = []
    result = asyncio.run(
        run_tool_loop(
            model, messages, toolbox, FMT, limits=LoopLimits(**limits), on_event=events.append
        )
    )
    return result, events


def tool_text(prompt: list[dict]) -> str:
    """The last user turn of a rendered prompt: the tool results."""
    assert prompt[-1]["role"] == "user"
    return prompt[-1]["content"]


def test_a_call_runs_and_its_output_is_in_the_next_prompt(tmp_path):
    (tmp_path / "notes.txt").write_text("deploy on friday\n")
    model = ScriptedModel(["Let me look.\n" + bash_call("cat notes.txt"), "They say: deploy."])
    result, events = loop(model, Toolbox(tmp_path, ["bash"]))

    assert result.stop_reason == "answer" and result.answer == "They say: deploy."
    assert result.steps == 2 and len(result.calls) == 1 and result.denied == 0
    first, second = model.prompts
    assert first[0]["role"] == "system" and '"name": "bash"' in first[0]["content"]
    assert first[1:] == ASK
    assert tool_text(second) == "<tool_response>\ndeploy on friday\n</tool_response>"
    assert "<tool_call>" in second[-2]["content"] and "cat notes.txt" in second[-2]["content"]

    text = "".join(e.text for e in events if isinstance(e, TextEvent))
    assert text == "Let me look.\nThey say: deploy."  # the call's syntax is not shown as text
    call_event, result_event = [e for e in events if not isinstance(e, TextEvent)]
    assert isinstance(call_event, ToolCallEvent) and isinstance(result_event, ToolResultEvent)
    assert call_event.to_json() == {
        "type": "tool_call",
        "step": 1,
        "id": call_event.call.id,
        "name": "bash",
        "arguments": {"command": "cat notes.txt"},
    }
    assert result_event.to_json()["output"] == "deploy on friday\n"
    assert result_event.to_json()["exit_code"] == 0 and result_event.call.id == call_event.call.id
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant"]


def test_a_runaway_loop_stops_at_the_step_limit(tmp_path):
    model = ScriptedModel([bash_call(f"echo {i}") for i in range(10)])
    result, _ = loop(model, Toolbox(tmp_path, ["bash"]), max_steps=3)
    assert result.stop_reason == "max_steps" and result.answer is None
    assert result.steps == 3 and len(result.calls) == 3 and len(model.prompts) == 3


def test_the_time_limit_cancels_a_slow_reply(tmp_path):
    async def slow(messages):
        await asyncio.sleep(30)
        return "never"

    model = ScriptedModel([bash_call("echo quick"), slow])
    result, _ = loop(model, Toolbox(tmp_path, ["bash"]), time_limit_s=0.5)
    assert result.stop_reason == "time_limit" and result.answer is None
    assert len(result.calls) == 1 and result.steps == 2


def test_the_time_limit_kills_a_command(tmp_path):
    toolbox = Toolbox(tmp_path, ["bash"], limits=ToolLimits(command_timeout_s=60))
    model = ScriptedModel([bash_call("sleep 30"), "unreached"])
    result, _ = loop(model, toolbox, time_limit_s=0.5)
    assert result.stop_reason == "time_limit" and len(model.prompts) == 1


def test_a_denied_command_is_refused_with_the_reason_shown_to_the_model(tmp_path):
    model = ScriptedModel(
        [bash_call("sudo apt-get install x"), bash_call("pkill -f server"), "I may not."]
    )
    result, events = loop(model, Toolbox(tmp_path, ["bash"]))
    assert result.stop_reason == "answer" and result.denied == 2
    assert result.denials == {"sudo": 1, "broad_kill": 1}
    assert "refused by guardrail sudo: `sudo` runs as another user" in tool_text(model.prompts[1])
    assert "refused by guardrail broad_kill" in tool_text(model.prompts[2])
    denied = [e.to_json()["denied"] for e in events if isinstance(e, ToolResultEvent)]
    assert denied == ["sudo", "broad_kill"]


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path):
    toolbox = Toolbox(tmp_path, ["bash"], limits=ToolLimits(command_timeout_s=0.5))
    model = ScriptedModel([bash_call("echo started; sleep 30"), "It hung."])
    result, _ = loop(model, toolbox)
    ((_, outcome),) = result.calls
    assert outcome.timed_out and outcome.exit_code is None
    assert tool_text(model.prompts[1]) == (
        "<tool_response>\nstarted\n[timed out: killed]\n</tool_response>"
    )


def test_long_output_reaches_the_model_with_the_truncation_marker(tmp_path):
    toolbox = Toolbox(tmp_path, ["bash"], limits=ToolLimits(max_output_bytes=256))
    model = ScriptedModel([bash_call("seq 1 5000"), "Many numbers."])
    loop(model, toolbox)
    assert "bytes truncated …]" in tool_text(model.prompts[1])
    assert tool_text(model.prompts[1]).count("\n") < 200


def test_stdin_is_closed_for_tools(tmp_path):
    model = ScriptedModel([bash_call("cat; echo eof=$?"), "Done."])
    result, _ = loop(model, Toolbox(tmp_path, ["bash"]))
    assert result.calls[0][1].output == "eof=0\n"


def test_a_file_write_outside_the_workdir_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    call = ToolCall.new("write_file", {"path": "../escape.txt", "content": "x"})
    model = ScriptedModel([FMT.render_call(call), "Could not."])
    result, _ = loop(model, Toolbox(work, ["bash", "write_file"]))
    assert result.denials == {"outside_workdir": 1}
    assert "outside the working directory" in tool_text(model.prompts[1])
    assert not (tmp_path / "escape.txt").exists()


def test_a_tool_that_was_not_offered_is_not_a_call(tmp_path):
    call = ToolCall.new("write_file", {"path": "x", "content": "x"})
    model = ScriptedModel([FMT.render_call(call)])
    result, _ = loop(model, Toolbox(tmp_path, ["bash"]))
    assert result.stop_reason == "answer" and not result.calls and not (tmp_path / "x").exists()
    assert "not an offered tool" in result.parse_errors[0]


def test_the_agent_keeps_history_and_records_calls_in_the_transcript(tmp_path):
    (tmp_path / "notes.txt").write_text("fix the parser\n")
    transcript = SessionTranscript(rig="local", role="crew")
    model = ScriptedModel([bash_call("cat notes.txt"), "Fix the parser.", "You are welcome."])
    agent = ToolAgent(
        model, Toolbox(tmp_path, ["bash"]), FMT, system="Be brief.", transcript=transcript
    )
    first = asyncio.run(agent.ask("What do the notes say?"))
    second = asyncio.run(agent.ask("Thanks"))
    assert (first.answer, second.answer) == ("Fix the parser.", "You are welcome.")
    assert model.prompts[2][0]["content"].startswith("Be brief.\n\n# Tools")
    assert "fix the parser" in model.prompts[2][-3]["content"]  # earlier tool traffic is kept

    record = transcript.append_to(tmp_path / "t.jsonl")
    turns = record["turns"]
    assert [t["speaker"] for t in turns] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant",
    ]  # fmt: skip
    call = turns[2]["tool_calls"][0]
    assert call["name"] == "bash" and call["arguments"] == {"command": "cat notes.txt"}
    assert "<tool_call>" in turns[2]["text"]
    assert turns[3] == {
        "speaker": "tool",
        "text": "fix the parser",
        "call_id": call["id"],
        "name": "bash",
        "exit_code": 0,
        "denied": None,
        "timed_out": False,
    }
    assert turns[4]["stop_reason"] == "answer" and turns[6]["stop_reason"] == "answer"
    assert record["outcome"] == "success"
    # the corpus collector's reader takes the extended turns as they are
    from gastown.transcripts import read_transcripts

    read = read_transcripts(tmp_path, "t.jsonl")
    assert not read.problems and read.transcripts[0].turns[3].speaker == "tool"
    assert json.loads((tmp_path / "t.jsonl").read_text())["turns"] == turns
