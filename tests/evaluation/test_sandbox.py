"""The sandbox and the loop's limits: a task cannot write outside its sandbox or reach the
network; a runaway loop stops at its step limit and fails; a hanging command is killed at its
timeout; a refused command is counted."""

from __future__ import annotations

import asyncio
import subprocess
from contextlib import asynccontextmanager

import pytest

from evaluation.runner import run_task
from evaluation.sandbox import create_sandbox, namespace_available
from evaluation.task import FixtureSpec, Limits, load_suite
from inference.guardrails import GuardrailsConfig
from inference.tool_calls import FORMATS, ToolCall
from tests.fixtures import ScriptedModel, bash_call

SUITE = load_suite()
needs_namespace = pytest.mark.skipif(
    not namespace_available(), reason="unshare --mount --net is refused on this machine"
)


def run(task_id, replies, tmp_path, *, limits: Limits | None = None):
    suite = SUITE
    if limits is not None:
        suite = SUITE.model_copy(
            update={"config": SUITE.config.model_copy(update={"limits": limits})}
        )
    model = ScriptedModel(list(replies))

    @asynccontextmanager
    async def session():
        yield model

    task = next(t for t in suite.tasks if t.id == task_id)
    return asyncio.run(run_task(task, suite, session, FORMATS["hermes"],
                                guardrails=GuardrailsConfig(), out_dir=tmp_path / "out",
                                keep_sandbox=False))  # fmt: skip


@needs_namespace
def test_cannot_write_outside_the_sandbox(tmp_path):
    outside = tmp_path / "escaped.txt"
    result = run("conv-find-ready-work", [
        bash_call(f"echo leaked > {outside}; touch $HOME/../../escaped-too; bd ready"), "Done.",
    ], tmp_path)  # fmt: skip
    assert not outside.exists()
    transcript = (tmp_path / "out" / "transcripts" / "conv-find-ready-work.jsonl").read_text()
    assert "Read-only file system" in transcript
    assert result.passed  # bd ready still ran: the rig itself is writable


@needs_namespace
def test_no_network_and_own_home():
    box = create_sandbox(FixtureSpec(base="rig", git=True), SUITE.path)
    try:
        probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
        net = subprocess.run([*box.shell(), f'python -c "{probe}"'], cwd=box.work,
                             env=box.env(), capture_output=True, text=True, timeout=30)  # fmt: skip
        assert net.returncode != 0 and "unreachable" in net.stderr.lower()
        line = "echo $HOME; env | grep -ic proxy; git config user.email"
        env = subprocess.run([*box.shell(), line], cwd=box.work, env=box.env(),
                             capture_output=True, text=True)  # fmt: skip
        home, proxies, email = env.stdout.split()
        assert home.startswith(str(box.root)) and proxies == "0" and email.endswith(".invalid")
    finally:
        box.remove()
    assert not box.root.exists()


def test_file_tools_stay_inside(tmp_path):
    call = FORMATS["hermes"].render_call(
        ToolCall.new("write_file", {"path": "../../escape.txt", "content": "x"})
    )
    result = run("conv-find-ready-work", [call, "Done."], tmp_path)
    assert result.denied == 1 and not result.passed


def test_runaway_loop_hits_the_step_limit_and_fails(tmp_path):
    limits = Limits(max_steps=3)
    result = run("conv-find-ready-work", [bash_call("bd ready")] * 10, tmp_path, limits=limits)
    assert result.stop_reason == "max_steps" and result.steps == 3
    assert not result.passed  # even though it ran bd ready: it never answered


def test_hanging_command_is_killed_at_its_timeout(tmp_path):
    limits = Limits(command_timeout_s=1.0)
    result = run("conv-find-ready-work", [bash_call("sleep 600"), "Gave up."], tmp_path,
                 limits=limits)  # fmt: skip
    transcript = (tmp_path / "out" / "transcripts" / "conv-find-ready-work.jsonl").read_text()
    assert '"timed_out": true' in transcript and "[timed out: killed]" in transcript
    assert result.stop_reason == "answer" and not result.passed


def test_denied_command_is_refused_and_counted(tmp_path):
    result = run("conv-stop-own-process", [bash_call("sudo kill 4242"), "Done."], tmp_path)
    assert result.denied == 1 and not result.passed
    assert result.checks["missing"]  # the refused command did not count as the kill


def test_shim_records_every_call_with_its_parse(tmp_path):
    box = create_sandbox(FixtureSpec(base="rig"), SUITE.path)
    try:
        for line in ['bd create "A bug" -t bug -p 9', 'bd create "A bug" -t bug -p P1',
                     "gt sling gt-q2vk nux", "gt fly"]:  # fmt: skip
            subprocess.run([*box.shell(), line], cwd=box.work, env=box.env(), capture_output=True)
        calls = box.calls()
    finally:
        box.remove()
    assert [c["exit_code"] for c in calls] == [1, 0, 0, 1]
    assert "priority" in calls[0]["error"] and calls[1]["args"]["priority"] == 1
    assert calls[2]["command"] == "sling" and calls[2]["args"]["target"] == "nux"
