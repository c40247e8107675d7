"""The executor's use of the compiled decode step (``compile_decode``): compiled before serving
on a stage without adapters, taken for one session's decode steps and for nothing else, never
compiled on a stage with adapters attached, and a compiler failure is a DeviceError (exit 11)."""

from __future__ import annotations

import pytest
import torch

from base.errors import DeviceError, ExitCode
from lora.config import LoraSettings
from lora.stage_adapters import attach_adapter
from models.compiled_decode import CompiledDecode
from pipeline_stages.executor import StageExecutor
from pipeline_stages.loader import load_stage
from pipeline_stages.sessions import SessionManager

PLAIN, ADAPTED = (3, 6), (0, 3)


def executor_for(model_dir) -> StageExecutor:
    stages = {span: load_stage(model_dir, *span, dtype=torch.bfloat16) for span in (ADAPTED, PLAIN)}
    attach_adapter(stages[ADAPTED], "tuned", LoraSettings(rank=2))
    sessions = SessionManager(max_sessions=4, max_cache_tokens=512, idle_timeout=60)
    return StageExecutor(str(model_dir), stages, sessions, compile_decode=True)


def test_compiled_only_for_one_sessions_decode_on_a_stage_without_adapters(tiny_model_dir):
    executor = executor_for(tiny_model_dir)
    try:
        seconds = executor.compile_stages()
        assert seconds[ADAPTED] is None and seconds[PLAIN] > 0
        hidden = executor.config.hidden_size
        plain = executor.open_session(str(tiny_model_dir), *PLAIN, 64)
        adapted = executor.open_session(str(tiny_model_dir), *ADAPTED, 64)
        generator = torch.Generator().manual_seed(0)

        def states(n):
            return torch.randn((1, n, hidden), generator=generator).to(torch.bfloat16)

        executor.step(plain.session_id, 0, states(5))  # a prompt: eager
        assert executor.compiled_steps == 0
        for position in range(5, 8):  # decode steps: compiled
            executor.step(plain.session_id, position, states(1))
        assert executor.compiled_steps == 3
        executor.step(adapted.session_id, 0, torch.tensor([[1, 2, 3]]))
        executor.step(adapted.session_id, 3, torch.tensor([[4]]))  # adapters attached: eager
        assert executor.compiled_steps == 3
    finally:
        executor.close()


def test_a_compiler_failure_is_a_device_error(tiny_model_dir, monkeypatch):
    def broken(self):
        raise RuntimeError("InductorError: no working C++ compiler\nmore lines")

    monkeypatch.setattr(CompiledDecode, "warm_up", broken)
    executor = executor_for(tiny_model_dir)
    try:
        with pytest.raises(DeviceError, match=r"layers \[3, 6\) failed: RuntimeError") as caught:
            executor.compile_stages()
        assert caught.value.exit_code == ExitCode.DEVICE
    finally:
        executor.close()
