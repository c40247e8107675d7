"""Concurrent sessions share every stage's batches, and none of them can tell.

A real 4-daemon SmolLM2 swarm (layers 10-20 on two replicas) serves 8 sessions at once, with
different prompts (one long enough to be prefilled in several chunks), lengths and task-adapter
sets (none, review, workflow, both). Each session's greedy tokens equal the same session run
alone, and its first-step logits are within 1e-4 of single-process transformers/PEFT. Sessions
join and leave mid-batch, one is abandoned by its client mid-step, a replica is killed while it
serves a batch and a prompt past the context window is refused: the others' tokens do not
change.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from base.errors import RequestError
from inference.swarm_client import SwarmClient
from node.local_swarm import peer_id_of
from tests.fixtures import chat_prompt_ids, kill_group, local_swarm, make_adapter

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
SPLIT = [
    ("s0", [(0, 10)]),
    ("s1a", [(10, 20)]),
    ("s1b", [(10, 20)]),
    ("s2", [(20, 30)]),
]
ADAPTER_SETS = [(), ("review",), ("workflow",), ("review", "workflow")]
QUESTIONS = [
    "What is a bead?",
    "Write a haiku about merge conflicts.",
    "Explain in three sentences how a hash map handles collisions, and when it resizes.",
    "Name two prime numbers.",
    "How do I rebase a feature branch onto main without losing my work?",
    "Translate 'see you tomorrow' into French.",
    "What does the mayor of a Gas Town do all day?",
    "Why do tests flake?",
]
LONG_CONTEXT = " ".join(
    f"Note {i}: the witness checks polecat {i % 7} and files bead gt-{100 + i} when it stalls."
    for i in range(24)
)  # about 600 tokens: several prefill chunks of 128
NEW_TOKENS = [12, 8, 10, 6, 12, 8, 10, 6]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    questions = list(QUESTIONS)
    questions[2] = LONG_CONTEXT + "\n\n" + questions[2]
    return chat_prompt_ids(tokenizer, questions)


@pytest.fixture(scope="module")
def adapters(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    paths = {"review": root / "review", "workflow": root / "workflow"}
    for seed, (name, path) in enumerate(paths.items(), start=1):
        make_adapter(smollm2_dir, name, seed, path, scale=0.02)
    return paths


@pytest.fixture(scope="module")
def swarm(smollm2_dir, adapters, tmp_path_factory):
    with local_swarm(
        tmp_path_factory.mktemp("batched"),
        MODEL,
        SPLIT,
        adapters={k: str(v) for k, v in adapters.items()},
        torch_threads=1,
    ) as state:
        yield state


@pytest.fixture(scope="module")
def client(swarm):
    c = SwarmClient(MODEL, swarm.initial_peers)
    c.wait_for_route()
    yield c
    c.close()


def sets_of(i: int) -> tuple[str, ...]:
    return ADAPTER_SETS[i % len(ADAPTER_SETS)]


async def one(client, tokenizer, i, prompts, **kwargs):
    return await client.generate_once(
        tokenizer,
        prompts[i],
        max_new_tokens=NEW_TOKENS[i],
        adapters=sets_of(i),
        return_first_logits=True,
        step_timeout=60.0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def alone(client, tokenizer, prompts):
    """Each session run by itself (a batch of one), one after another."""

    async def run():
        return [await one(client, tokenizer, i, prompts) for i in range(len(prompts))]

    return asyncio.run(run())


@torch.inference_mode()
def peft_first_logits(model_dir, adapters, prompts) -> list[torch.Tensor]:
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        adapters["review"],
        adapter_name="review",
    )
    model.load_adapter(adapters["workflow"], adapter_name="workflow")
    model.eval()
    out = []
    for i, ids in enumerate(prompts):
        x = torch.tensor([ids])
        if sets_of(i):
            model.base_model.set_adapter(list(sets_of(i)))
            out.append(model(x).logits[0, -1])
        else:
            with model.disable_adapter():
                out.append(model(x).logits[0, -1])
    return out


def test_eight_concurrent_sessions_equal_each_alone_and_peft(
    client, tokenizer, prompts, alone, smollm2_dir, adapters
):
    assert len(prompts[2]) > 2 * 128  # the long one is prefilled in several chunks
    assert len({tuple(r.token_ids) for r in alone[:4]}) == 4  # the adapter sets differ

    async def run():
        return await asyncio.gather(
            *(one(client, tokenizer, i, prompts) for i in range(len(prompts)))
        )

    together = asyncio.run(run())
    time.sleep(1.5)  # a heartbeat carries the scheduler's figures
    peaks = [r.peak_batch_size for r in client.records()]
    assert max(peaks) > 1, peaks  # the stages really batched
    reference = peft_first_logits(smollm2_dir, adapters, prompts)
    worst = 0.0
    for i, (batched, single, expected) in enumerate(zip(together, alone, reference, strict=True)):
        assert batched.token_ids == single.token_ids, (i, sets_of(i))
        worst = max(worst, (batched.first_logits - expected).abs().max().item())
    assert worst < 1e-4, worst


def test_joining_leaving_abandoned_killed_and_oversized_do_not_disturb_the_others(
    client, tokenizer, prompts, alone, swarm, smollm2_dir
):
    killed = {}

    def kill_a_serving_replica(session):
        """At the 4th new token of session 0: SIGKILL the replica of [10, 20) it is using."""
        if killed or len(session.token_ids) < len(prompts[0]) + 4:
            return
        endpoint = session.hops[1].record.endpoint
        by_peer_id = {peer_id_of(p): p for p in swarm.peers}
        record = next(r for r in client.records() if r.endpoint == endpoint)
        kill_group(by_peer_id[record.peer_id].pid)
        killed["endpoint"] = endpoint

    async def late(i, delay):
        await asyncio.sleep(delay)  # joins while the others are mid-batch
        return await one(client, tokenizer, i, prompts)

    async def abandoned():
        task = asyncio.create_task(one(client, tokenizer, 5, prompts))
        await asyncio.sleep(1.0)
        task.cancel()  # the client walks away mid-step
        with pytest.raises(asyncio.CancelledError):
            await task

    async def oversized():
        context = AutoConfig.from_pretrained(smollm2_dir).max_position_embeddings
        too_long = (prompts[3] * (context // len(prompts[3]) + 2))[: context + 10]
        with pytest.raises(RequestError):
            await client.generate_once(tokenizer, too_long, max_new_tokens=4, step_timeout=60.0)

    async def run():
        return await asyncio.gather(
            one(client, tokenizer, 0, prompts, on_session_token=kill_a_serving_replica),
            late(1, 0.5),
            late(2, 1.5),
            one(client, tokenizer, 3, prompts),
            late(4, 3.0),
            abandoned(),
            oversized(),
            late(7, 2.0),
        )

    results = asyncio.run(run())
    assert killed, "the replica kill never happened"
    for i in (0, 1, 2, 3, 4, 7):
        assert results[i].token_ids == alone[i].token_ids, i
