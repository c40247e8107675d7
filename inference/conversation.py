"""The conversation engine: the turn logic under every front end.

``node0-inference``, ``node0 demo``, the benchmarks and the HTTP API are thin layers over two
objects, in the split vLLM's OpenAI server has over its engine client and llama.cpp's server
over its slots:

- :class:`ConversationEngine`, one per swarm connection: the tokenizer and the one prompt
  formatter (``dataload.prompt_format``), the context window, the model's EOS ids, the RAG
  store. Stateless :meth:`~ConversationEngine.complete` answers a whole message list in a fresh
  pipeline session (an HTTP request that carries the conversation).
- :class:`Conversation`, one per session: its history, its pipeline session (the stages'
  KV-caches, with failover), adapters, retrieval scope and transcript. :meth:`~Conversation.send`
  adds a user turn and its answer to the history; only the new tokens go to the stages.

A turn: retrieved context goes in front of the last user message (when the conversation has a
scope and the engine a store), the oldest exchanges are dropped until prompt + answer fit the
window (never the system message), the messages are rendered and tokenized, and the answer is
generated with the sampling parameters, stop sequences, length limit and EOS ids of the turn.
Results come back whole or as a :class:`~inference.turn_stream.TurnStream` of text chunks;
every failure is a :class:`~base.errors.Node0Error`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from base.errors import Node0Error, RequestError
from base.sampler import SamplingParams
from dataload.prompt_format import ROLES, PromptMode, encode_prompt, render
from inference.generation import generate
from inference.rag_context import ContextScope, RagContext
from inference.tool_calls import FORMATS, ToolCallFormat, format_for
from inference.transcript import SessionTranscript
from inference.turn_stream import TurnStream

if TYPE_CHECKING:
    from base.dht_records import StageRecord
    from inference.pipeline_session import PipelineSession
    from inference.swarm_client import SwarmClient

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": …}
OnText = Callable[[str], None] | None


def fit_window(messages: Sequence[Message], fits: Callable[[list[Message]], bool]) -> list[Message]:
    """Drop the oldest exchanges (never the system message) until ``fits(messages)`` holds.

    An exchange is a user message and the answer after it. The last message always stays, even
    when it alone does not fit (generation then refuses the prompt, naming its length).
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = list(messages[len(system) :])
    while len(rest) > 1 and not fits(system + rest):
        rest = rest[2:] if len(rest) > 2 else rest[1:]
    return system + rest


@dataclass(frozen=True)
class GenerationSettings:
    """How one answer is generated.

    Attributes:
        max_new_tokens: the answer's length limit in tokens (at least 1).
        sampling: how each token is chosen (greedy by default), seeded per position.
        stop: the answer ends before the first of these strings, which is not returned (one
            string is one stop sequence).
        ignore_eos: generate past the model's end-of-sequence tokens (fixed-length benchmarks
            and parity checks).
    """

    max_new_tokens: int = 256
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        if not all(isinstance(s, str) for s in self.stop):
            raise RequestError(f"stop sequences must be strings, got {self.stop!r}")

    @classmethod
    def create(
        cls,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: str | Sequence[str] = (),
        ignore_eos: bool = False,
    ) -> GenerationSettings:
        """Settings from plain values (a CLI's flags, an HTTP request's fields).

        Raises:
            RequestError: a value out of range.
        """
        try:
            sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        return cls(max_new_tokens, sampling, stop, ignore_eos)


@dataclass(frozen=True)
class PreparedTurn:
    """A turn ready to generate.

    Attributes:
        messages: what the prompt renders: window-fitted, with the retrieved context in front
            of the last user message (empty for a raw prompt, see
            :meth:`ConversationEngine.prepare_prompt`).
        prompt_ids: the rendered prompt's token ids.
        context: the :class:`rag.ContextBlock` placed in the prompt (None: no retrieval).
    """

    messages: list[Message]
    prompt_ids: list[int]
    context: Any = None


@dataclass(frozen=True)
class TurnResult:
    """One answer, with what it was an answer to.

    Attributes:
        text: the answer (without a stop sequence that ended it).
        token_ids: the generated tokens (an EOS that ended the answer included).
        finish_reason: "eos", "stop", "length" (``max_new_tokens``) or "context" (the window
            is full).
        prompt_ids: the prompt's token ids.
        reused_tokens: prompt tokens the stages had cached from the previous turn.
        time_to_first_token: seconds from the first step sent to the first token back.
        elapsed: seconds of the whole generation.
        messages: the messages the prompt rendered (see :class:`PreparedTurn`).
        context: the retrieved context block placed in the prompt (None: no retrieval).
        token_times: per generated token, seconds from the first step sent to its arrival
            (inter-token latencies are their differences).
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_ids: list[int]
    reused_tokens: int
    time_to_first_token: float
    elapsed: float
    messages: list[Message]
    context: Any = None
    token_times: list[float] = field(default_factory=list, repr=False)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


DEFAULT_SETTINGS = GenerationSettings()


class ConversationEngine:
    """Turn logic over one swarm connection, shared by every conversation of a front end.

    Holds what is the same for every conversation; conversations (one per session) hold their
    own pipeline session and history, and any number of them run concurrently on one engine.
    Use :meth:`connect` to build one on a :class:`~inference.swarm_client.SwarmClient`.

    Args:
        new_session: ``new_session(max_length, adapters)`` builds an unopened pipeline session.
        tokenizer: the model's tokenizer.
        prompt_format: "chat" (the tokenizer's chat template) or "completion".
        max_length: every conversation's context window (prompt + answer, in tokens).
        eos_token_ids: tokens that end an answer.
        rag: retrieved context for the turns of conversations with a scope (None: RAG off).
        tool_format: the model's tool-call syntax (None: the ``hermes`` one).
    """

    def __init__(
        self,
        new_session: Callable[[int, tuple[str, ...]], PipelineSession],
        tokenizer,
        *,
        prompt_format: PromptMode,
        max_length: int,
        eos_token_ids: frozenset[int] = frozenset(),
        rag: RagContext | None = None,
        tool_format: ToolCallFormat | None = None,
    ) -> None:
        if prompt_format not in ("chat", "completion"):
            raise RequestError(f"unknown prompt format {prompt_format!r}; use chat or completion")
        self._new_session = new_session
        self.tokenizer = tokenizer
        self.prompt_format: PromptMode = prompt_format
        self.max_length = max_length
        self.eos_token_ids = frozenset(eos_token_ids)
        self.rag = rag
        self.tool_format: ToolCallFormat = tool_format or FORMATS["hermes"]
        self._lock = threading.Lock()  # a fast tokenizer must not be used by two threads at once

    @classmethod
    def connect(
        cls,
        client: SwarmClient,
        *,
        prompt_format: PromptMode | None = None,
        max_length: int | None = None,
        step_timeout: float = 30.0,
        rag: RagContext | None = None,
        on_hop_step: Callable[[int, StageRecord, int, float], None] | None = None,
    ) -> ConversationEngine:
        """The engine of a swarm connection.

        Loads the tokenizer, takes the prompt format from the model's catalog entry unless
        given (chat for instruct models, else completion), waits for a route (so a missing
        stage fails here, naming its layers), and reads the context window (``max_length``
        may only shorten it) and EOS ids from the checkpoint.

        Args:
            client: the swarm connection; the engine does not close it.
            prompt_format: "chat" or "completion" (None: the catalog's).
            max_length: context window of each conversation (None: the model's).
            step_timeout: seconds a stage may take per step before failover.
            rag: the RAG store turns retrieve from (None: RAG off); not closed by the engine.
            on_hop_step: called after each hop of a pipeline session answers a step (see
                :class:`~inference.pipeline_session.PipelineSession`).
        """
        from models.catalog import CATALOG
        from models.registry import family_of

        tokenizer = client.load_tokenizer()
        spec = CATALOG.get(client.model)
        mode = prompt_format or (spec.prompt_format if spec else "completion")
        client.wait_for_route()
        config = _model_config(client.model_dir)
        window = int(config.max_position_embeddings)
        return cls(
            lambda length, adapters: client.session(
                max_length=length,
                adapters=adapters,
                step_timeout=step_timeout,
                on_hop_step=on_hop_step,
            ),
            tokenizer,
            prompt_format=mode,
            max_length=min(max_length or window, window),
            eos_token_ids=_eos_token_ids(client.model_dir, tokenizer),
            rag=rag,
            tool_format=format_for(family_of(config).name),
        )

    # --- the prompt of a turn (blocking: tokenizer and retrieval) -----------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees it inside a prompt (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, messages: Sequence[Message], prefix: str = "") -> list[int]:
        """Token ids of the prompt that asks for the next assistant message (which starts
        with ``prefix``, e.g. the opening of a tool call that the answer must be)."""
        text = render(messages, mode=self.prompt_format, tokenizer=self.tokenizer)
        return encode_prompt(text + prefix, self.tokenizer, mode=self.prompt_format)

    def fit(
        self, messages: Sequence[Message], max_new_tokens: int, prefix: str = ""
    ) -> list[Message]:
        """``messages`` without the oldest exchanges that leave no room for the answer."""
        return fit_window(
            messages, lambda m: len(self.encode(m, prefix)) + max_new_tokens < self.max_length
        )

    def augment(self, prompt: str, scope: ContextScope, rag: RagContext | None = None):
        """The :class:`rag.AssembledPrompt` of a user turn (the plain prompt with RAG off).

        ``rag``: the store to retrieve from (None: the engine's).
        """
        from rag import AssembledPrompt

        rag = rag if rag is not None else self.rag
        if rag is None:
            return AssembledPrompt(prompt, None)
        return rag.assemble(prompt, scope, self.count_tokens)

    def prepare(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int,
        scope: ContextScope | None = None,
        prefix: str = "",
        rag: RagContext | None = None,
    ) -> PreparedTurn:
        """Retrieve context for the last user message (with a scope), fit the window, encode.

        ``prefix`` is the start of the answer, put in the prompt (the answer's text does not
        repeat it). ``rag``: the store to retrieve from (None: the engine's); a server with
        several stores names one per request.

        Raises:
            RequestError: no messages, a malformed message, or a chat template missing.
        """
        messages = [_checked(m) for m in messages]
        if not messages:
            raise RequestError("a turn needs at least one message")
        rag = rag if rag is not None else self.rag
        with self._lock:
            context = None
            last = messages[-1]
            if scope is not None and rag is not None and last["role"] == "user":
                assembled = self.augment(last["content"], scope, rag)
                messages[-1] = {**last, "content": assembled.text}
                context = assembled.context
            turn = self.fit(messages, max_new_tokens, prefix)
            return PreparedTurn(turn, self.encode(turn, prefix), context)

    async def _prepare(
        self,
        messages: Sequence[Message],
        max_new_tokens: int,
        scope: ContextScope | None,
        prefix: str = "",
    ) -> PreparedTurn:
        # off the event loop: retrieval embeds the query, long prompts take a while to tokenize
        return await asyncio.to_thread(
            self.prepare, messages, max_new_tokens=max_new_tokens, scope=scope, prefix=prefix
        )

    def prepare_prompt(
        self,
        prompt: str | Sequence[int],
        *,
        scope: ContextScope | None = None,
        rag: RagContext | None = None,
    ) -> PreparedTurn:
        """A raw prompt ready to generate: no chat template, no window fitting.

        Text is tokenized as it is (with the tokenizer's own special tokens, e.g. a BOS, as a
        base model saw its training text); token ids are taken as they are. With a scope and a
        store (``rag``, else the engine's), the retrieved context block goes in front of the
        text. The length is not checked here: generation refuses a prompt that fills the
        window.

        Raises:
            RequestError: an empty prompt, token ids outside the vocabulary, or a scope with
                token ids (retrieval needs the text).
        """
        rag = rag if rag is not None else self.rag
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError("the prompt is empty")
            with self._lock:
                context = None
                if scope is not None and rag is not None:
                    assembled = self.augment(prompt, scope, rag)
                    prompt, context = assembled.text, assembled.context
                ids = encode_prompt(prompt, self.tokenizer, mode="completion")
            return PreparedTurn([], ids, context)
        ids = list(prompt)
        if not ids:
            raise RequestError("the prompt is empty")
        vocabulary = len(self.tokenizer)
        if not all(isinstance(i, int) and 0 <= i < vocabulary for i in ids):
            raise RequestError(f"prompt token ids must be integers in [0, {vocabulary})")
        if scope is not None and rag is not None:
            raise RequestError("retrieved context needs a text prompt, not token ids")
        return PreparedTurn([], ids)

    # --- conversations ------------------------------------------------------------------------

    def conversation(
        self,
        *,
        system: str | None = None,
        adapters: Sequence[str] = (),
        scope: ContextScope | None = None,
        transcript: SessionTranscript | None = None,
    ) -> Conversation:
        """A new conversation (its pipeline session opens on :meth:`Conversation.open`)."""
        return Conversation(
            self, system=system, adapters=tuple(adapters), scope=scope, transcript=transcript
        )

    async def complete(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings = DEFAULT_SETTINGS,
        *,
        adapters: Sequence[str] = (),
        scope: ContextScope | None = None,
        on_text: OnText = None,
        prefix: str = "",
    ) -> TurnResult:
        """The answer to ``messages`` in a fresh pipeline session, closed afterwards.

        ``on_text(chunk)`` gets the answer's text as it becomes final. ``prefix`` is put in
        the prompt as the answer's start (see :meth:`prepare`).
        """
        prepared = await self._prepare(messages, settings.max_new_tokens, scope, prefix)
        return await self.complete_prepared(prepared, settings, adapters=adapters, on_text=on_text)

    async def complete_prepared(
        self,
        prepared: PreparedTurn,
        settings: GenerationSettings = DEFAULT_SETTINGS,
        *,
        adapters: Sequence[str] = (),
        on_text: OnText = None,
    ) -> TurnResult:
        """The answer to a prepared prompt (:meth:`prepare`, :meth:`prepare_prompt`) in a fresh
        pipeline session, closed afterwards (also when the call is cancelled)."""
        async with self.conversation(adapters=adapters) as conversation:
            return await conversation._generate(prepared, settings, on_text)

    def stream_prepared(
        self,
        prepared: PreparedTurn,
        settings: GenerationSettings = DEFAULT_SETTINGS,
        *,
        adapters: Sequence[str] = (),
    ) -> TurnStream:
        """:meth:`complete_prepared` as a stream of text chunks, then the result."""
        return TurnStream(
            lambda on_text: self.complete_prepared(
                prepared, settings, adapters=adapters, on_text=on_text
            )
        )

    def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings = DEFAULT_SETTINGS,
        *,
        adapters: Sequence[str] = (),
        scope: ContextScope | None = None,
        prefix: str = "",
    ) -> TurnStream:
        """:meth:`complete` as a stream of text chunks, then the result."""
        return TurnStream(
            lambda on_text: self.complete(
                messages, settings, adapters=adapters, scope=scope, on_text=on_text, prefix=prefix
            )
        )


class Conversation:
    """One session: history, pipeline session, adapters, retrieval scope and transcript.

    Turns run one at a time (a second caller waits for the first). A turn that fails or is
    cancelled leaves the history as it was and discards the pipeline session, which may be
    half-way through a step; the next turn opens a fresh one (on a new route if a stage died)
    and sends its whole prompt again.

    Use as ``async with engine.conversation(...) as conversation:``, or :meth:`open` and
    :meth:`close`.
    """

    def __init__(
        self,
        engine: ConversationEngine,
        *,
        system: str | None = None,
        adapters: tuple[str, ...] = (),
        scope: ContextScope | None = None,
        transcript: SessionTranscript | None = None,
    ) -> None:
        self.engine = engine
        self.adapters = adapters
        self.scope = scope
        self.transcript = transcript
        self._messages: list[Message] = []
        if system:
            self._messages.append({"role": "system", "content": system})
            if transcript is not None:
                transcript.add("system", system)
        self._opening_turns = len(transcript.turns) if transcript is not None else 0
        self._session: PipelineSession | None = None
        self._lock = asyncio.Lock()

    @property
    def messages(self) -> list[Message]:
        """The history: system message, then user and assistant messages as the model saw
        them (retrieved context included, exchanges dropped from the window left out)."""
        return [dict(m) for m in self._messages]

    async def open(self) -> None:
        """Open the pipeline session now (the first turn would otherwise), so that an unknown
        adapter or a dead stage fails before a front end reads its first prompt."""
        async with self._lock:
            await self._open()

    async def close(self) -> None:
        """Close the pipeline session (the stages free its caches); the history stays."""
        await self._discard_session()

    async def __aenter__(self) -> Conversation:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(
        self,
        prompt: str,
        settings: GenerationSettings = DEFAULT_SETTINGS,
        *,
        on_text: OnText = None,
    ) -> TurnResult:
        """Answer ``prompt`` as the next user turn; the answer joins the history.

        ``on_text(chunk)`` gets the answer's text as it becomes final. The transcript records
        the prompt as given (without retrieved context), the answer, and failed turns.
        """
        async with self._lock:
            if self.transcript is not None:
                self.transcript.add("user", prompt)
            try:
                result = await self._turn(
                    [*self._messages, {"role": "user", "content": prompt}], settings, on_text
                )
            except Node0Error:
                if self.transcript is not None:
                    self.transcript.errors += 1
                raise
            self._messages = [*result.messages, {"role": "assistant", "content": result.text}]
            if self.transcript is not None:
                self.transcript.add("assistant", result.text)
            return result

    def stream(self, prompt: str, settings: GenerationSettings = DEFAULT_SETTINGS) -> TurnStream:
        """:meth:`send` as a stream of text chunks, then the result."""
        return TurnStream(lambda on_text: self.send(prompt, settings, on_text=on_text))

    async def respond(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings = DEFAULT_SETTINGS,
        *,
        on_text: OnText = None,
    ) -> TurnResult:
        """The answer to a whole message list, leaving the history alone.

        Uses this conversation's session, so whatever prefix of the prompt its stages still
        cache is not sent again (a server can keep conversations as slots for requests that
        carry the whole conversation).
        """
        async with self._lock:
            return await self._turn(messages, settings, on_text)

    def save_transcript(self, path: Path, *, outcome: str | None = None) -> dict | None:
        """Append the transcript to ``path`` if anything was said after the system message;
        returns the record written (None: nothing to write)."""
        if self.transcript is None or len(self.transcript.turns) <= self._opening_turns:
            return None
        return self.transcript.append_to(path, outcome=outcome)

    async def _turn(
        self, messages: Sequence[Message], settings: GenerationSettings, on_text: OnText
    ) -> TurnResult:
        prepared = await self.engine._prepare(messages, settings.max_new_tokens, self.scope)
        return await self._generate(prepared, settings, on_text)

    async def _generate(
        self, prepared: PreparedTurn, settings: GenerationSettings, on_text: OnText
    ) -> TurnResult:
        session = await self._open()
        try:
            with _rpc_errors():
                result = await generate(
                    session,
                    self.engine.tokenizer,
                    prepared.prompt_ids,
                    max_new_tokens=settings.max_new_tokens,
                    sampling=settings.sampling,
                    stop=settings.stop,
                    eos_token_ids=frozenset() if settings.ignore_eos else self.engine.eos_token_ids,
                    on_text=on_text,
                )
        except BaseException:
            await self._discard_session()
            raise
        return TurnResult(
            text=result.text,
            token_ids=result.token_ids,
            finish_reason=result.finish_reason,
            prompt_ids=prepared.prompt_ids,
            reused_tokens=result.reused_tokens,
            time_to_first_token=result.time_to_first_token,
            elapsed=result.elapsed,
            messages=prepared.messages,
            context=prepared.context,
            token_times=result.token_times,
        )

    async def _open(self) -> PipelineSession:
        if self._session is None:
            session = self.engine._new_session(self.engine.max_length, self.adapters)
            try:
                with _rpc_errors():
                    await session.open()
            except BaseException:
                await session.close()
                raise
            self._session = session
        return self._session

    async def _discard_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _checked(message: Message) -> Message:
    """A copy of a well-formed message (checked before the window is fitted around it)."""
    if (
        not isinstance(message, dict)
        or message.get("role") not in ROLES
        or not isinstance(message.get("content"), str)
    ):
        raise RequestError(
            f"bad message {message!r}: role must be one of {ROLES} and content a string"
        )
    return dict(message)


@contextmanager
def _rpc_errors() -> Iterator[None]:
    """A gRPC error that reaches the engine (not one a replica switch absorbs) is the
    request's."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise RequestError(f"{exc.code().name}: {exc.details()}") from exc


def default_transcript_path(rig: str) -> Path:
    """Where a session's transcript goes unless told: ``$NODE0_HOME/transcripts/<rig>.jsonl``."""
    from base.paths import node0_home

    return node0_home() / "transcripts" / f"{rig}.jsonl"


def _model_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _eos_token_ids(model_dir: Path, tokenizer) -> frozenset[int]:
    """The tokenizer's EOS and the checkpoint's generation-config EOS ids."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass
    return frozenset(ids)
