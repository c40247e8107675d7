"""``node0-inference --tools`` without a swarm: flag and policy errors fail before connecting,
the startup lines name the policy, and the turn protocol's output for tool-loop events."""

from __future__ import annotations

import json
from types import SimpleNamespace

from base.errors import ExitCode
from inference import agent_client
from inference.guardrails import DEFAULT_GUARDRAILS
from inference.tool_calls import ToolCall
from inference.tool_loop import LoopResult, TextEvent, ToolCallEvent, ToolResultEvent
from inference.tools import ToolOutcome

NO_SWARM = ["--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/QmNoSuchPeer", "--transcript", "off"]


def cli(capsys, *args: str) -> tuple[int, str]:
    """``node0-inference`` in this process: its exit code and stderr."""
    try:
        code = agent_client.main([*args, *NO_SWARM])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def test_unknown_tool_is_a_usage_error(capsys):
    code, err = cli(capsys, "--tools", "bash,python")
    assert code == ExitCode.USAGE and "unknown tools ['python']" in err


def test_a_bad_policy_or_flag_fails_before_connecting(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("deny: [everything]\n")
    code, err = cli(capsys, "--tools", "bash", "--guardrails", str(policy))
    assert code == ExitCode.CONFIG and str(policy) in err and "deny" in err
    code, err = cli(capsys, "--tools", "bash", "--workdir", str(tmp_path / "no"))
    assert code == ExitCode.USAGE and "is not a directory" in err
    code, err = cli(capsys, "--tools", "bash", "--max-steps", "0")
    assert code == ExitCode.USAGE and "--max-steps must be positive" in err


def test_startup_lines_name_the_policy_and_limits(tmp_path, capsys):
    args = agent_client.build_parser().parse_args(
        ["--tools", "bash,write_file", "--workdir", str(tmp_path), "--max-steps", "3"]
    )
    toolbox, limits = agent_client._tool_setup(args)
    err = capsys.readouterr().err
    assert f"config: {DEFAULT_GUARDRAILS}  sha256=" in err
    assert f"tools: bash, write_file in {tmp_path.resolve()}" in err
    assert "deny broad_kill, force_push, delete_outside_workdir, sudo" in err
    assert "limits: 3 steps and 600 s per prompt, 60 s per command" in err
    assert limits.max_steps == 3 and toolbox.names == {"bash", "write_file"}


def scripted_run():
    call = ToolCall("call_1", "bash", json.dumps({"command": "sudo ls"}))
    outcome = ToolOutcome("refused by guardrail sudo: no", exit_code=None, denied="sudo")
    reply = SimpleNamespace(
        text="x", finish_reason="eos", token_ids=[1, 2], prompt_tokens=40, reused_tokens=0,
        time_to_first_token=0.01,
    )  # fmt: skip
    events = [
        TextEvent(1, "Let me check."),
        ToolCallEvent(1, call),
        ToolResultEvent(1, call, outcome),
        TextEvent(2, "I may not."),
    ]
    result = LoopResult("answer", "I may not.", [], 2, [(call, outcome)], [reply, reply])
    return events, result


def test_json_events_for_calls_results_and_done(capsys):
    out = agent_client.Output(as_json=True)
    events, result = scripted_run()
    for event in events:
        out.event(event)
    out.loop_done(result)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in lines] == ["token", "tool_call", "tool_result", "token", "done"]
    assert lines[1] == {
        "type": "tool_call",
        "step": 1,
        "id": "call_1",
        "name": "bash",
        "arguments": {"command": "sudo ls"},
    }
    assert lines[2]["denied"] == "sudo" and lines[2]["exit_code"] is None
    done = lines[-1]
    assert done["stop_reason"] == "answer" and done["finish_reason"] == "eos"
    assert (done["steps"], done["tool_calls"], done["denied"]) == (2, 1, 1)
    assert done["completion_tokens"] == 4 and done["prompt_tokens"] == 40


def test_plain_output_keeps_stdout_for_text(capsys):
    out = agent_client.Output(as_json=False)
    events, result = scripted_run()
    for event in events:
        out.event(event)
    out.loop_done(result)
    captured = capsys.readouterr()
    assert captured.out == "Let me check.\nI may not.\n"  # one newline ends the turn
    assert "[tool] bash" in captured.err and "refused (sudo)" in captured.err
