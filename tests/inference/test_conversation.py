"""The conversation engine: turn logic without a model (scripted stages), then on a real swarm."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import torch

from base.errors import PeerFailureError, RequestError
from inference.conversation import ConversationEngine, GenerationSettings, fit_window
from inference.rag_context import ContextScope
from inference.transcript import SessionTranscript
from proto import node0_pb2


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You are a polecat."}


# --- window fitting (pure) ---------------------------------------------------------------------


def test_fit_window_drops_oldest_exchanges_first_and_keeps_the_system_message():
    history = [SYSTEM, user("a"), assistant("b"), user("c"), assistant("d"), user("e")]
    fits = lambda messages: len(messages) <= 4  # noqa: E731
    assert fit_window(history, fits) == [SYSTEM, user("c"), assistant("d"), user("e")]
    assert fit_window(history, lambda m: len(m) <= 2) == [SYSTEM, user("e")]
    assert fit_window(history[1:], lambda m: True) == history[1:]


def test_fit_window_keeps_the_last_message_even_when_it_alone_does_not_fit():
    assert fit_window([SYSTEM, user("a"), assistant("b"), user("c")], lambda m: False) == [
        SYSTEM,
        user("c"),
    ]
    assert fit_window([user("a"), user("b")], lambda m: False) == [user("b")]


# --- the engine on scripted stages -------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from models.tiny import build_tokenizer

    return build_tokenizer()


class ScriptedStages:
    """Stands in for the swarm: every prompt is answered with ``reply``, then ``filler``.

    A step that feeds exactly the token it last returned, at the next position, continues the
    answer; any other step is a new prompt. ``fail_on`` makes the n-th prompt's second step fail
    the way a stage lost with no replica does; ``delay`` slows every step.
    """

    def __init__(self, reply: list[int], filler: int = 5, fail_on=(), delay: float = 0.0):
        self.reply, self.filler, self.fail_on, self.delay = reply, filler, set(fail_on), delay
        self.sessions: list[FakeSession] = []
        self.prompts = 0

    def new_session(self, max_length: int, adapters: tuple[str, ...]) -> FakeSession:
        self.sessions.append(FakeSession(self, max_length, adapters))
        return self.sessions[-1]


class FakeSession:
    def __init__(self, stages: ScriptedStages, max_length: int, adapters: tuple[str, ...]):
        self.stages, self.max_length, self.adapters = stages, max_length, adapters
        self.token_ids: list[int] = []
        self.fed = 0  # positions fed (prefill + decode)
        self.opened = self.closed = False
        self._next: tuple[int, int] | None = None  # (position, token) of a continuation
        self._answer = 0

    async def open(self):
        self.opened = True

    async def close(self):
        self.closed = True

    async def step(self, token_ids, position, *, sampling, return_logits=False):
        assert self.opened and not self.closed
        await asyncio.sleep(self.stages.delay)
        if self._next != (position, token_ids[0]) or len(token_ids) != 1:
            self.stages.prompts += 1
            self._answer = 0
        elif self.stages.prompts in self.stages.fail_on:
            raise PeerFailureError("layers [2, 4) failed and no other live replica could take over")
        self.token_ids = self.token_ids[:position] + list(token_ids)
        self.fed += len(token_ids)
        script = self.stages.reply
        token = script[self._answer] if self._answer < len(script) else self.stages.filler
        self._answer += 1
        self._next = (position + len(token_ids), token)
        return node0_pb2.StepResponse(token=token)


def make_engine(tokenizer, stages: ScriptedStages, max_length: int = 256, rag=None):
    return ConversationEngine(
        stages.new_session,
        tokenizer,
        prompt_format="completion",
        max_length=max_length,
        eos_token_ids=frozenset({tokenizer.eos_token_id}),
        rag=rag,
    )


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def run(coro):
    return asyncio.run(coro)


def test_prepare_keeps_the_longest_recent_history_that_leaves_room_for_the_answer(tokenizer):
    engine = make_engine(tokenizer, ScriptedStages([]), max_length=128)
    turn = [SYSTEM]
    for i in range(6):
        turn += [user(f"The mayor plans the work {i}."), assistant("Use bd create.")]
    turn.append(user("What next?"))
    prepared = engine.prepare(turn, max_new_tokens=8)
    kept = prepared.messages
    assert 3 < len(kept) < len(turn)  # the oldest exchanges were dropped, not all of them
    assert kept == [SYSTEM, *turn[len(turn) - len(kept) + 1 :]]
    assert prepared.prompt_ids == engine.encode(kept)
    assert len(prepared.prompt_ids) + 8 < 128
    one_more = [SYSTEM, *turn[len(turn) - len(kept) - 1 :]]  # the next exchange back
    assert len(engine.encode(one_more)) + 8 >= 128


def test_stop_sequence_ends_the_answer_and_is_neither_returned_nor_kept(tokenizer):
    stages = ScriptedStages(ids(tokenizer, "Use bd create now. END more text"))
    engine = make_engine(tokenizer, stages)
    settings = GenerationSettings.create(max_new_tokens=40, stop=["END"])

    async def turn():
        async with engine.conversation(system=SYSTEM["content"]) as conversation:
            chunks: list[str] = []
            result = await conversation.send(
                "How do I file a bead?", settings, on_text=chunks.append
            )
            return conversation.messages, chunks, result

    messages, chunks, result = run(turn())
    assert result.finish_reason == "stop"
    assert result.text == "Use bd create now. " == "".join(chunks)
    assert messages[-1] == assistant("Use bd create now. ")


def test_eos_ends_the_answer_unless_ignored(tokenizer):
    eos = tokenizer.eos_token_id
    engine = make_engine(tokenizer, ScriptedStages([*ids(tokenizer, "Paris"), eos, 40, 41]))
    ended = run(engine.complete([user("capital?")], GenerationSettings(max_new_tokens=10)))
    assert ended.finish_reason == "eos" and ended.token_ids[-1] == eos
    assert ended.text == "Paris" and ended.completion_tokens == len(ids(tokenizer, "Paris")) + 1
    fixed = run(
        engine.complete([user("capital?")], GenerationSettings(max_new_tokens=10, ignore_eos=True))
    )
    assert fixed.finish_reason == "length" and fixed.completion_tokens == 10


def test_stateful_turns_send_only_new_tokens_and_equal_the_stateless_path(tokenizer):
    stages = ScriptedStages(ids(tokenizer, "Use bd create."))
    engine = make_engine(tokenizer, stages)
    settings = GenerationSettings(max_new_tokens=12)

    async def stateful():
        async with engine.conversation(system=SYSTEM["content"]) as conversation:
            first = await conversation.send("The mayor plans", settings)
            second = await conversation.send("What next?", settings)
            return first, second, conversation.messages

    first, second, history = run(stateful())
    (session,) = stages.sessions
    assert second.reused_tokens > 0
    assert session.fed == first.prompt_tokens + second.prompt_tokens - second.reused_tokens + (
        first.completion_tokens - 1 + second.completion_tokens - 1
    )
    assert history == [
        SYSTEM,
        user("The mayor plans"),
        assistant(first.text),
        user("What next?"),
        assistant(second.text),
    ]
    again = run(engine.complete(history[:-1], settings))  # what an HTTP request would carry
    assert again.prompt_ids == second.prompt_ids and again.token_ids == second.token_ids
    assert again.reused_tokens == 0 and stages.sessions[-1].closed


def test_failed_turn_is_counted_keeps_history_and_reopens_the_session(tokenizer):
    stages = ScriptedStages(ids(tokenizer, "Use bd create."), fail_on={2})
    engine = make_engine(tokenizer, stages)
    transcript = SessionTranscript(rig="gastown", role="polecat")

    settings = GenerationSettings(max_new_tokens=8)

    async def session():
        async with engine.conversation(transcript=transcript) as conversation:
            await conversation.send("one", settings)
            with pytest.raises(PeerFailureError, match="no other live replica"):
                await conversation.send("two", settings)
            third = await conversation.send("three", settings)
            return third, conversation.messages

    third, history = run(session())
    assert [m["content"] for m in history if m["role"] == "user"] == ["one", "three"]
    assert len(stages.sessions) == 2 and all(s.closed for s in stages.sessions)
    assert third.reused_tokens == 0  # the fresh session got the whole prompt
    assert transcript.errors == 1
    assert [t["speaker"] for t in transcript.turns] == [
        "user",
        "assistant",
        "user",
        "user",
        "assistant",
    ]


def test_prompt_longer_than_the_window_is_a_request_error_and_the_session_goes_on(tokenizer):
    engine = make_engine(tokenizer, ScriptedStages(ids(tokenizer, "ok")), max_length=32)

    async def session():
        async with engine.conversation() as conversation:
            with pytest.raises(RequestError, match="the context window is 32"):
                await conversation.send("The mayor plans the work. " * 10)
            return await conversation.send("hi", GenerationSettings(max_new_tokens=4))

    assert run(session()).text.startswith("ok")


def test_stream_yields_chunks_then_the_result(tokenizer):
    engine = make_engine(tokenizer, ScriptedStages(ids(tokenizer, "Use bd create now.")))

    async def stream():
        async with engine.conversation() as conversation:
            async with conversation.stream("hi", GenerationSettings(max_new_tokens=6)) as s:
                chunks = [chunk async for chunk in s]
            return chunks, s.result, conversation.messages

    chunks, result, history = run(stream())
    assert len(chunks) > 1 and "".join(chunks) == result.text
    assert result.finish_reason == "length" and history[-1] == assistant(result.text)


def test_closing_a_stream_early_cancels_the_turn_and_the_conversation_goes_on(tokenizer):
    stages = ScriptedStages(ids(tokenizer, "Use bd create now."), delay=0.01)
    engine = make_engine(tokenizer, stages)

    async def hang_up():
        async with engine.conversation() as conversation:
            stream = conversation.stream("hi", GenerationSettings(max_new_tokens=50))
            async for _chunk in stream:
                break
            await stream.aclose()  # the client hung up
            with pytest.raises(RuntimeError, match="has not finished"):
                _ = stream.result
            closed = stages.sessions[0].closed
            after = await conversation.send("again", GenerationSettings(max_new_tokens=3))
            return closed, after, conversation.messages

    closed, after, history = run(hang_up())
    assert closed and len(stages.sessions) == 2
    assert history == [user("again"), assistant(after.text)]


def test_conversations_run_concurrently_on_one_engine_and_turns_of_one_are_serialised(tokenizer):
    stages = ScriptedStages(ids(tokenizer, "Use bd create."), delay=0.002)
    engine = make_engine(tokenizer, stages)
    settings = GenerationSettings(max_new_tokens=6)

    async def many():
        a = engine.conversation(adapters=["code-review"])
        b = engine.conversation(adapters=("git-workflow",))
        await asyncio.gather(a.open(), b.open())
        results = await asyncio.gather(
            a.send("one", settings), b.send("two", settings), a.send("three", settings)
        )
        await asyncio.gather(a.close(), b.close())
        return a.messages, b.messages, results

    a_history, b_history, results = run(many())
    assert sorted(s.adapters for s in stages.sessions) == [("code-review",), ("git-workflow",)]
    assert [m["role"] for m in a_history] == ["user", "assistant"] * 2
    assert [m["content"] for m in a_history[::2]] == ["one", "three"]
    assert b_history == [user("two"), assistant(results[1].text)]


class StubRag:
    """A RAG store that always retrieves one block."""

    BLOCK = (
        "<<<BEGIN NODE0 CONTEXT rig=gastown role=polecat>>>\n[1] beads: x\n<<<END NODE0 CONTEXT>>>"
    )

    def __init__(self):
        self.calls: list[tuple[str, ContextScope]] = []

    def assemble(self, prompt, scope, count_tokens):
        from rag import AssembledPrompt
        from rag.context import ContextBlock

        self.calls.append((prompt, scope))
        block = ContextBlock(self.BLOCK, (), count_tokens(self.BLOCK), 512, 1)
        return AssembledPrompt(block.prepend_to(prompt), block)


def test_context_goes_before_the_new_user_message_and_the_transcript_keeps_the_prompt(tokenizer):
    rag = StubRag()
    engine = make_engine(tokenizer, ScriptedStages(ids(tokenizer, "ok")), rag=rag)
    scope = ContextScope(rig="gastown", role="polecat")
    transcript = SessionTranscript(rig="gastown", role="polecat")
    settings = GenerationSettings(max_new_tokens=3)

    async def session():
        async with engine.conversation(
            system="sys", scope=scope, transcript=transcript
        ) as conversation:
            first = await conversation.send("Your hook has gt-1.", settings)
            await conversation.send("Done?", settings)
            return first, conversation.messages

    first, history = run(session())
    assert rag.calls == [("Your hook has gt-1.", scope), ("Done?", scope)]
    assert first.context.text == StubRag.BLOCK
    assert first.messages[-1] == user(f"{StubRag.BLOCK}\n\nYour hook has gt-1.")
    assert history[1] == first.messages[-1] and history[3]["content"].endswith("\n\nDone?")
    assert transcript.turns[1] == {"speaker": "user", "text": "Your hook has gt-1."}
    plain = run(engine.complete([user("no scope")], settings))  # no scope: no retrieval
    assert plain.context is None and len(rag.calls) == 2


def test_real_store_context_is_the_rag_prompt_within_the_budget(tokenizer, sample_store):
    from inference.rag_context import RagContext
    from rag import assemble_prompt, load_rag_config
    from rag.context import BEGIN_MARKER
    from rag.retrieval import RetrievalSettings

    config = load_rag_config()
    engine = make_engine(tokenizer, ScriptedStages([]), rag=RagContext(sample_store, config))
    prompt = "How should a polecat mark the bead on its hook as done?"
    scope = ContextScope(rig="gastown", role="polecat", budget_tokens=400)
    prepared = engine.prepare([user(prompt)], max_new_tokens=8, scope=scope)
    expected = assemble_prompt(
        prompt,
        store=sample_store,
        rig="gastown",
        role="polecat",
        budget_tokens=400,
        count_tokens=engine.count_tokens,
        settings=RetrievalSettings.from_config(config),
        min_entry_tokens=config.min_entry_tokens,
    )
    assert prepared.messages == [user(expected.text)]
    assert expected.text.startswith(BEGIN_MARKER) and expected.text.endswith(f"\n\n{prompt}")
    assert 0 < prepared.context.tokens <= 400 and prepared.context.documents


def test_transcript_is_saved_only_when_something_was_said(tokenizer, tmp_path):
    engine = make_engine(tokenizer, ScriptedStages(ids(tokenizer, "ok")))
    path = tmp_path / "transcripts" / "gastown.jsonl"

    async def session(prompts):
        transcript = SessionTranscript(rig="gastown", role="crew")
        async with engine.conversation(system="sys", transcript=transcript) as conversation:
            for prompt in prompts:
                await conversation.send(prompt, GenerationSettings(max_new_tokens=2))
        return conversation.save_transcript(path, outcome="failure")

    assert run(session([])) is None and not path.exists()
    record = run(session(["hello"]))
    assert record["outcome"] == "failure"
    assert [t["speaker"] for t in record["turns"]] == ["system", "user", "assistant"]
    assert json.loads(path.read_text()) == record


def test_bad_settings_and_messages_are_request_errors(tokenizer):
    with pytest.raises(RequestError, match="temperature"):
        GenerationSettings.create(temperature=-1)
    with pytest.raises(RequestError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    assert GenerationSettings.create(stop="END").stop == ("END",)  # one string, one sequence
    engine = make_engine(tokenizer, ScriptedStages([]))
    for messages in ([], [{"role": "tool", "content": "x"}], [{"role": "user"}]):
        with pytest.raises(RequestError):
            engine.prepare(messages, max_new_tokens=4)
    with pytest.raises(RequestError, match="chat template"):
        ConversationEngine(
            ScriptedStages([]).new_session, tokenizer, prompt_format="chat", max_length=64
        ).prepare([user("x")], max_new_tokens=4)


def test_a_raw_prompt_is_tokenized_as_is_and_generated_like_a_turn(tokenizer):
    stages = ScriptedStages(ids(tokenizer, "Use bd create."))
    engine = make_engine(tokenizer, stages)
    settings = GenerationSettings(max_new_tokens=4)
    text = "The mayor plans"
    prepared = engine.prepare_prompt(text)
    assert prepared.prompt_ids == tokenizer(text).input_ids and prepared.messages == []
    assert engine.prepare_prompt(prepared.prompt_ids).prompt_ids == prepared.prompt_ids
    result = run(engine.complete_prepared(prepared, settings, adapters=("a",)))
    assert result.prompt_ids == prepared.prompt_ids and result.completion_tokens == 4
    assert len(result.token_times) == 4 and result.token_times == sorted(result.token_times)
    assert stages.sessions[-1].adapters == ("a",) and stages.sessions[-1].closed

    async def stream():
        async with engine.stream_prepared(prepared, settings) as s:
            chunks = [chunk async for chunk in s]
        return chunks, s.result

    chunks, streamed = run(stream())
    assert "".join(chunks) == streamed.text == result.text
    for bad in ("", [], [len(tokenizer)], [-1]):
        with pytest.raises(RequestError):
            engine.prepare_prompt(bad)


def test_a_raw_prompt_gets_context_from_the_store_it_names(tokenizer):
    rag = StubRag()
    engine = make_engine(tokenizer, ScriptedStages([]))  # no store of its own
    scope = ContextScope(rig="gastown", role="polecat")
    prepared = engine.prepare_prompt("Done?", scope=scope, rag=rag)
    assert prepared.prompt_ids == tokenizer(f"{StubRag.BLOCK}\n\nDone?").input_ids
    assert prepared.context.text == StubRag.BLOCK and rag.calls == [("Done?", scope)]
    assert engine.prepare_prompt("Done?", scope=scope).context is None  # no store: no retrieval
    turn = engine.prepare([user("Done?")], max_new_tokens=2, scope=scope, rag=rag)
    assert turn.messages == [user(f"{StubRag.BLOCK}\n\nDone?")]
    with pytest.raises(RequestError, match="text prompt"):
        engine.prepare_prompt([1, 2], scope=scope, rag=rag)


# --- a real swarm: the engine's two paths = node0-inference = transformers ---------------------

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPTS = ["The mayor plans", "Use bd create"]


@pytest.mark.integration
def test_engine_paths_equal_node0_inference_and_single_process_transformers(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from transformers import AutoModelForCausalLM

    from inference import agent_client
    from inference.swarm_client import SwarmClient
    from tests.fixtures import local_swarm

    settings = GenerationSettings(max_new_tokens=8)
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT) as state:
        client = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            engine = ConversationEngine.connect(client)

            async def both_paths():
                async with engine.conversation() as conversation:
                    stateful = [await conversation.send(p, settings) for p in PROMPTS]
                stateless, messages = [], []
                for prompt in PROMPTS:
                    messages.append(user(prompt))
                    stateless.append(await engine.complete(messages, settings))
                    messages.append(assistant(stateless[-1].text))
                return stateful, stateless

            stateful, stateless = asyncio.run(both_paths())
        finally:
            client.close()
        capsys.readouterr()
        monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{p}\n" for p in PROMPTS)))
        code = agent_client.main(
            [
                "--model",
                str(tiny_model_dir),
                "--initial-peers",
                *state.initial_peers,
                "--max-new-tokens",
                "8",
                "--json",
                "--transcript",
                "off",
            ]
        )
    assert code == 0
    answers, text = [], ""
    for event in map(json.loads, capsys.readouterr().out.splitlines()):
        if event["type"] == "token":
            text += event["text"]
        elif event["type"] == "done":
            answers.append((text, event["prompt_tokens"], event["completion_tokens"]))
            text = ""
    assert stateful[1].reused_tokens > 0 and stateless[1].reused_tokens == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    eos = sorted(engine.eos_token_ids)
    for a, b, cli in zip(stateful, stateless, answers, strict=True):
        assert a.prompt_ids == b.prompt_ids and a.token_ids == b.token_ids
        assert (a.text, a.prompt_tokens, a.completion_tokens) == cli
        with torch.inference_mode():
            reference = model.generate(
                torch.tensor([a.prompt_ids]),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=0,
            )[0, a.prompt_tokens :].tolist()
        assert a.token_ids == reference
