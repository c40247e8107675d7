"""Per-stage LoRA: keys, init and forward equal to whole-model PEFT; named and stacked adapters."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from base.errors import CheckpointError, RequestError
from lora import (
    LoraSettings,
    active_adapters,
    adapter_parameters,
    adapter_state_dict,
    attach_adapter,
    deterministic_init_,
    load_adapter_state_dict,
    merge_stage_states,
    save_peft_adapter,
    use_adapters,
)
from pipeline_stages.loader import load_stage

SPANS = [(0, 2), (2, 5), (5, 6)]
SETTINGS = LoraSettings(rank=4, alpha=8, init_seed=11)


def _stages(model_dir, name="code-review", settings=SETTINGS):
    stages = [load_stage(model_dir, s, e) for s, e in SPANS]
    for stage in stages:
        attach_adapter(stage, name, settings)
    return stages


def _perturb(states: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in sorted(states.items())
    }


def _run(stages, ids):
    x = ids
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
    return x


def _ids():
    return torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(5))


def _full_peft(model_dir, name="code-review", settings=SETTINGS):
    full = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model = get_peft_model(full, settings.to_peft(), adapter_name=name)
    deterministic_init_(model, name, settings.init_seed)
    return model


def test_union_of_stage_adapters_equals_full_model_peft_adapter(tiny_model_dir):
    stages = _stages(tiny_model_dir)
    union = merge_stage_states(adapter_state_dict(s, "code-review") for s in stages)
    reference = get_peft_model_state_dict(_full_peft(tiny_model_dir), adapter_name="code-review")
    assert sorted(union) == sorted(reference)
    assert len(union) == 6 * 7 * 2  # layers x target modules x (A, B)
    for key, value in reference.items():
        assert torch.equal(union[key], value), key
    assert any(float(v.abs().sum()) > 0 for k, v in union.items() if "lora_A" in k)
    assert all(float(v.abs().sum()) == 0 for k, v in union.items() if "lora_B" in k)
    # a different seed gives a different initialisation
    other = _stages(tiny_model_dir, settings=SETTINGS.model_copy(update={"init_seed": 12}))
    key = next(k for k in union if "lora_A" in k and ".layers.0." in k)
    assert not torch.equal(adapter_state_dict(other[0], "code-review")[key], union[key])


def test_stage_forward_with_lora_equals_full_peft_model(tiny_model_dir, tmp_path):
    stages = _stages(tiny_model_dir)
    union = merge_stage_states(adapter_state_dict(s, "code-review") for s in stages)
    trained = _perturb(union, seed=1)  # B nonzero: the adapters change the output
    for stage in stages:
        load_adapter_state_dict(stage, "code-review", trained)
    out_dir = save_peft_adapter(trained, SETTINGS, tmp_path / "adapter")
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    base_logits = full(_ids()).logits.detach()
    peft_model = PeftModel.from_pretrained(full, out_dir, adapter_name="code-review").eval()
    with torch.no_grad():
        expected = peft_model(_ids()).logits
    got = _run(stages, _ids())
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_optimizer_sees_only_the_active_adapters_parameters(tiny_model_dir):
    stage = load_stage(tiny_model_dir, 2, 5)
    attach_adapter(stage, "code-review", SETTINGS)
    attach_adapter(stage, "bead-creation", SETTINGS)
    params = adapter_parameters(stage, "code-review")
    assert len(params) == 3 * 7 * 2
    ids = {id(p) for p in params}
    named = dict(stage.named_parameters())
    assert {n for n, p in named.items() if p.requires_grad} == {
        n for n, p in named.items() if id(p) in ids
    }
    assert all(".code-review." in n for n, p in named.items() if id(p) in ids)
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    hidden = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0))
    with use_adapters(stage, ["code-review"]):
        out = stage(hidden)
    out.square().mean().backward()
    assert all(p.grad is None for n, p in named.items() if id(p) not in ids)
    optimizer.step()
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert changed and changed <= {n for n, p in named.items() if id(p) in ids}
    assert any("lora_B" in n for n in changed)


def test_named_adapters_switch_stack_and_restore(tiny_model_dir):
    stage = load_stage(tiny_model_dir, 0, 6)  # the whole model as one stage
    plain = load_stage(tiny_model_dir, 0, 6)
    for name, seed in (("bead-creation", 1), ("code-review", 2)):
        attach_adapter(stage, name, SETTINGS)
        load_adapter_state_dict(stage, name, _perturb(adapter_state_dict(stage, name), seed))
    assert active_adapters(stage) == ["bead-creation"]  # the first attached is the default
    ids = _ids()
    with torch.no_grad():
        base = plain(ids)
        outs = {}
        for names in ([], ["bead-creation"], ["code-review"], ["bead-creation", "code-review"]):
            with use_adapters(stage, names):
                assert active_adapters(stage) == names
                outs[tuple(names)] = stage(ids)
    assert active_adapters(stage) == ["bead-creation"]  # restored
    torch.testing.assert_close(outs[()], base, rtol=0, atol=0)
    assert (outs[("bead-creation",)] - outs[("code-review",)]).abs().max() > 1e-2
    # stacked == whole-model PEFT with both adapters active
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference = get_peft_model(full, SETTINGS.to_peft(), adapter_name="bead-creation")
    reference.add_adapter("code-review", SETTINGS.to_peft())
    from peft.utils import set_peft_model_state_dict

    for name in ("bead-creation", "code-review"):
        state = {
            k.removeprefix("base_model.model."): v
            for k, v in adapter_state_dict(stage, name).items()
        }
        set_peft_model_state_dict(reference.base_model.model, state, adapter_name=name)
    reference.base_model.set_adapter(["bead-creation", "code-review"])
    with torch.no_grad():
        expected = reference(ids).logits
    torch.testing.assert_close(
        outs[("bead-creation", "code-review")], expected, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(RequestError, match="unknown adapter"):
        with use_adapters(stage, ["planning"]):
            pass


def test_training_adapter_stays_trainable_and_concurrent_requests_do_not_interfere(tiny_model_dir):
    stage = load_stage(tiny_model_dir, 0, 6)
    for name, seed in (("bead-creation", 1), ("code-review", 2)):
        attach_adapter(stage, name, SETTINGS)
        load_adapter_state_dict(stage, name, _perturb(adapter_state_dict(stage, name), seed))
    params = adapter_parameters(stage, "code-review")
    ids = _ids()
    with torch.no_grad():
        expected = {}
        for name in ("bead-creation", "code-review"):
            with use_adapters(stage, [name]):
                expected[name] = stage(ids)
    assert all(p.requires_grad for p in params)
    errors: list[str] = []

    def worker(name: str) -> None:
        for _ in range(8):
            with use_adapters(stage, [name]), torch.no_grad():
                out = stage(ids)
            if not torch.equal(out, expected[name]):
                errors.append(name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in expected for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(p.requires_grad for p in params)
    # a switch only selects adapters (why it is cheap): no weight is merged in or changed
    before = {name: t.clone() for name, t in stage.state_dict().items()}
    for i in range(4):
        with use_adapters(stage, [("bead-creation", "code-review")[i % 2]]):
            assert all(torch.equal(t, before[name]) for name, t in stage.state_dict().items())
    assert all(torch.equal(t, before[name]) for name, t in stage.state_dict().items())


def test_loading_a_mismatched_adapter_state_fails_closed(tiny_model_dir):
    stages = _stages(tiny_model_dir)
    union = merge_stage_states(adapter_state_dict(s, "code-review") for s in stages)
    fresh = load_stage(tiny_model_dir, 2, 5)
    attach_adapter(fresh, "code-review", SETTINGS)
    assert load_adapter_state_dict(fresh, "code-review", _perturb(union, 3)) == 42
    missing = {k: v for k, v in union.items() if ".layers.3.self_attn.q_proj." not in k}
    with pytest.raises(CheckpointError, match="missing"):
        load_adapter_state_dict(fresh, "code-review", missing)
    other_rank = _stages(tiny_model_dir, settings=LoraSettings(rank=2, alpha=8))
    with pytest.raises(CheckpointError, match="shape"):
        load_adapter_state_dict(
            fresh, "code-review", adapter_state_dict(other_rank[1], "code-review")
        )
    with pytest.raises(ValueError, match="overlap"):
        merge_stage_states([union, union])


def test_settings_validate_and_fingerprint():
    assert LoraSettings().target_modules == tuple(
        sorted(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    )
    assert LoraSettings(rank=8).fingerprint() == LoraSettings().fingerprint()
    assert LoraSettings(alpha=32).fingerprint() != LoraSettings().fingerprint()
    with pytest.raises(ValueError, match="unknown target"):
        LoraSettings(target_modules=("qkv",))
    with pytest.raises(ValueError):
        LoraSettings(rank=0)
    stage = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="bad adapter name"):
        attach_adapter(stage, "Code Review", LoraSettings())
