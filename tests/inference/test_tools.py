"""The tool executors (inference/tools.py): bash in its own process group with no stdin, killed
whole at its timeout; output capped with a visible marker; file tools confined to the working
directory."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from inference.tool_calls import ToolCall
from inference.tools import Toolbox, ToolLimits, ToolOutcome


def run(toolbox: Toolbox, name: str, **arguments) -> ToolOutcome:
    return asyncio.run(toolbox.run(ToolCall.new(name, arguments)))


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture
def toolbox(tmp_path) -> Toolbox:
    return Toolbox(
        tmp_path,
        ["bash", "read_file", "write_file"],
        limits=ToolLimits(command_timeout_s=1.0, max_output_bytes=400),
    )


def test_bash_runs_in_the_workdir_with_its_exit_code(toolbox, tmp_path):
    (tmp_path / "notes.txt").write_text("ship it\n")
    out = run(toolbox, "bash", command="pwd; cat notes.txt; exit 3")
    assert out.output == f"{tmp_path.resolve()}\nship it\n"
    assert out.exit_code == 3 and not out.timed_out and out.denied is None
    assert out.model_text() == f"{tmp_path.resolve()}\nship it\n[exit code 3]"
    assert run(toolbox, "bash", command="echo ok").model_text() == "ok"


def test_stdin_is_closed(toolbox):
    out = run(toolbox, "bash", command="read line; echo read=$?; cat; echo cat=$?")
    assert out.output == "read=1\ncat=0\n"  # EOF at once: nothing waits for input


def test_a_hanging_command_is_killed_with_its_group_at_the_timeout(toolbox):
    out = run(toolbox, "bash", command="sleep 30 & echo $!; sleep 30")
    assert out.timed_out and out.exit_code is None
    assert out.model_text().endswith("[timed out: killed]")
    assert gone(int(out.output.split()[0]))  # the background child went with the group


def test_what_a_command_leaves_running_is_killed_when_it_exits(toolbox):
    out = run(toolbox, "bash", command="sleep 30 & echo $!")
    assert out.exit_code == 0 and not out.timed_out
    assert gone(int(out.output.split()[0]))


def test_long_output_keeps_head_and_tail_around_a_marker(toolbox):
    out = run(toolbox, "bash", command="seq 1 20000")
    assert out.truncated_bytes == len("".join(f"{i}\n" for i in range(1, 20001))) - 400
    head, tail = out.output.split(f"\n[… {out.truncated_bytes} bytes truncated …]\n")
    assert head.startswith("1\n2\n3\n") and tail.endswith("19999\n20000\n")
    assert len(head.encode()) + len(tail.encode()) == 400


def test_a_denied_command_does_not_run(toolbox, tmp_path):
    (tmp_path / "keep").write_text("x")
    out = run(toolbox, "bash", command="rm -rf ../" + tmp_path.name)
    assert out.denied == "delete_outside_workdir" and out.exit_code is None
    assert out.model_text().endswith("deletes the working directory itself")
    assert (tmp_path / "keep").exists()


def test_file_tools_stay_in_the_workdir(toolbox, tmp_path):
    assert run(toolbox, "write_file", path="a/b.txt", content="hello").exit_code == 0
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert run(toolbox, "read_file", path="a/b.txt").output == "hello"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    for path in ("../" + outside.name, str(outside), "~/node0-tool-test.txt"):
        refused = run(toolbox, "write_file", path=path, content="no")
        assert refused.denied == "outside_workdir", path
        assert run(toolbox, "read_file", path=path).denied == "outside_workdir"
    assert not outside.exists()
    os.symlink(tmp_path.parent, tmp_path / "up")
    assert run(toolbox, "write_file", path="up/x.txt", content="no").denied == "outside_workdir"


def test_read_file_truncates_and_reports_missing_files(toolbox, tmp_path):
    (tmp_path / "big.txt").write_text("x" * 1000)
    out = run(toolbox, "read_file", path="big.txt")
    assert out.output == "x" * 400 + "\n[… 600 bytes truncated …]" and out.truncated_bytes == 600
    missing = run(toolbox, "read_file", path="nope.txt")
    assert missing.exit_code == 1 and "cannot read nope.txt" in missing.output


def test_bad_arguments_and_unoffered_tools(tmp_path):
    toolbox = Toolbox(tmp_path, ["bash"])
    assert run(toolbox, "bash", cmd="ls").exit_code == 2
    assert "no tool named 'write_file'" in run(toolbox, "write_file", path="x").output
    with pytest.raises(ValueError, match="unknown tools"):
        Toolbox(tmp_path, ["python"])
