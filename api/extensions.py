"""node0's extensions to OpenAI's request bodies: ``adapters``, ``rag`` and ``transcript``.

Clients send them as extra top-level fields (the ``openai`` client's ``extra_body``, as vLLM
takes its extra sampling parameters); every one is optional, on chat and on completions:

- ``adapters``: task adapters stacked on every stage, after the one a model id selects.
- ``rag``: ``{"store", "role", "rig", "budget_tokens"}``: retrieved context in front of the
  last user message (chat) or the prompt (completions), as ``node0-inference --rag`` puts it.
  A request names a store the server was started with (``--rag-store NAME=PATH``, ``--rag
  PATH`` for the one named ``default``), never a path: a client cannot make the server open
  anything on its filesystem.
- ``transcript``: a name; the request's messages and answer are appended as one session
  transcript (``gastown.transcript/1``) to ``<name>.jsonl`` in the server's transcript
  directory (``--transcript-dir``, default ``$NODE0_HOME/transcripts``, where
  ``node0-inference`` writes too), for ``node0 corpus build``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.errors import APIError, bad_parameter
from gastown.roles import ROLES
from gastown.transcripts import SPEAKERS
from inference.rag_context import ContextScope, RagContext
from inference.transcript import SessionTranscript

EXTENSION_FIELDS = frozenset({"adapters", "rag", "transcript"})
"""The body fields this module reads (besides OpenAI's)."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A store or transcript name: no path separators, no leading dot."""

DEFAULT_STORE = "default"
"""The name of the store given with ``--rag PATH``."""

TRANSCRIPT_ROLE = "crew"
"""A transcript's role when the request names none (``rag.role``), as ``node0-inference``."""


def check_name(name: Any, param: str, what: str) -> str:
    """``name`` if it matches :data:`NAME`, else a 400 ``invalid_value`` naming ``param``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad_parameter(
            param,
            f"{what} must be 1-128 letters, digits, '_', '.' or '-' (not starting with '.'), "
            f"got {name!r}",
        )
    return name


@dataclass(frozen=True)
class RequestExtensions:
    """One request's extensions, checked.

    Attributes:
        adapters: adapter names to stack after the model id's (not yet checked against the
            swarm: see ``Serving.adapters_of``).
        rag: the store to retrieve from (None: no retrieval).
        scope: the retrieval's rig, role and budget (None: no retrieval).
        transcript: the file the transcript is appended to (None: none is written).
        rig: the transcript's rig (the retrieval's, else the transcript name).
        role: the transcript's role (the retrieval's, else :data:`TRANSCRIPT_ROLE`).
    """

    adapters: tuple[str, ...] = ()
    rag: RagContext | None = None
    scope: ContextScope | None = None
    transcript: Path | None = None
    rig: str | None = None
    role: str = TRANSCRIPT_ROLE

    async def save_transcript(self, messages: Sequence[dict], answer: str) -> None:
        """Append the request's messages and the answer as one session (nothing without a
        ``transcript``). Messages of roles the transcript format lacks are left out."""
        if self.transcript is None:
            return
        transcript = SessionTranscript(rig=self.rig or self.transcript.stem, role=self.role)
        for message in messages:
            if message.get("role") in SPEAKERS and isinstance(message.get("content"), str):
                transcript.add(message["role"], message["content"])
        transcript.add("assistant", answer)
        await asyncio.to_thread(transcript.append_to, self.transcript)


class Extensions:
    """What the server offers requests' extensions: its named RAG stores, the transcript
    directory.

    Args:
        rag_stores: name → open store (the server closes them when it stops).
        transcript_dir: where named transcripts go (None: ``$NODE0_HOME/transcripts``).
    """

    def __init__(
        self,
        rag_stores: Mapping[str, RagContext] | None = None,
        transcript_dir: Path | None = None,
    ) -> None:
        self.rag_stores = dict(rag_stores or {})
        self.transcript_dir = transcript_dir

    def parse(self, body: dict) -> RequestExtensions:
        """The extensions of a request body (400 on a malformed one; 400 ``unknown_rag_store``
        on a store the server does not have)."""
        adapters = self._adapters(body.get("adapters"))
        rag, scope = self._rag(body.get("rag"))
        name = body.get("transcript")
        transcript = None
        if name is not None:
            from inference.conversation import default_transcript_path

            name = check_name(name, "transcript", "'transcript'")
            if self.transcript_dir is None:
                transcript = default_transcript_path(name)
            else:
                transcript = self.transcript_dir / f"{name}.jsonl"
        return RequestExtensions(
            adapters=adapters,
            rag=rag,
            scope=scope,
            transcript=transcript,
            rig=scope.rig if scope is not None else None,
            role=scope.role if scope is not None and scope.role else TRANSCRIPT_ROLE,
        )

    @staticmethod
    def _adapters(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
            raise bad_parameter("adapters", "'adapters' must be a list of adapter names")
        if len(set(value)) != len(value):
            raise bad_parameter("adapters", f"'adapters' names an adapter twice: {value}")
        return tuple(value)

    def _rag(self, value: Any) -> tuple[RagContext | None, ContextScope | None]:
        if value is None:
            return None, None
        if not isinstance(value, dict):
            raise bad_parameter("rag", "'rag' must be an object: {store, role, rig}")
        unknown = sorted(set(value) - {"store", "role", "rig", "budget_tokens"})
        if unknown:
            raise bad_parameter(
                f"rag.{unknown[0]}",
                f"unrecognized 'rag' field '{unknown[0]}' (store, role, rig, budget_tokens)",
                "unknown_parameter",
            )
        store = value.get("store", DEFAULT_STORE)
        if store not in self.rag_stores:
            offered = sorted(self.rag_stores)
            raise APIError(
                400,
                f"this server has no RAG store named {store!r}; it has {offered}"
                if offered
                else "this server has no RAG store (start it with --rag-store NAME=PATH)",
                code="unknown_rag_store",
                param="rag.store",
            )
        role = value.get("role")
        if role is not None and role not in ROLES:
            raise bad_parameter("rag.role", f"'role' must be one of {list(ROLES)}, got {role!r}")
        rig = value.get("rig")
        if rig is not None and (not isinstance(rig, str) or not rig):
            raise bad_parameter("rag.rig", "'rig' must be a rig name")
        budget = value.get("budget_tokens")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise bad_parameter("rag.budget_tokens", "'budget_tokens' must be an integer >= 1")
        return self.rag_stores[store], ContextScope(rig=rig, role=role, budget_tokens=budget)

    def close(self) -> None:
        for store in self.rag_stores.values():
            store.close()
