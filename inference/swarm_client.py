"""The inference client's view of the swarm: a :class:`SwarmView` with the model's tokenizer
and sessions."""

from __future__ import annotations

import logging
from collections.abc import Callable

from base.dht_records import StageRecord
from base.sampler import SamplingParams
from base.swarm_view import SwarmView
from inference.generation import GenerationResult, generate
from inference.peer_latency import RttTable
from inference.pipeline_session import PipelineSession
from models.catalog import resolve_model_dir
from security.active import dht_authorizer
from security.credentials import Role

log = logging.getLogger(__name__)

GREEDY = SamplingParams()


class SwarmClient(SwarmView):
    """A :class:`SwarmView` that also holds the model's tokenizer and opens sessions."""

    def __init__(self, model: str, initial_peers: list[str]):
        self.model_dir = resolve_model_dir(model)
        # a private swarm admits this DHT peer with the process's credential (security.active)
        super().__init__(model, initial_peers, authorizer=dht_authorizer(Role.CLIENT))
        self.rtt = RttTable()  # round trips per peer, shared by this client's sessions

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

    def session(
        self,
        *,
        max_length: int,
        adapters: tuple[str, ...] = (),
        step_timeout: float = 30.0,
        on_hop_step: Callable[[int, StageRecord, int, float], None] | None = None,
        replica_wait: float = 0.0,
    ) -> PipelineSession:
        """An unopened pipeline session (``on_hop_step``, ``replica_wait``: see
        :class:`PipelineSession`), routed with this client's measured round trips."""
        return PipelineSession(
            self.records,
            self.model,
            max_length=max_length,
            adapters=adapters,
            step_timeout=step_timeout,
            on_hop_step=on_hop_step,
            rtt=self.rtt,
            replica_wait=replica_wait,
        )

    async def generate_once(
        self,
        tokenizer,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        max_length: int | None = None,
        return_first_logits: bool = False,
        on_session_token=None,
        step_timeout: float = 30.0,
        adapters: tuple[str, ...] = (),
        replica_wait: float = 0.0,
    ) -> GenerationResult:
        """One generation in a fresh session (no EOS stop), closed afterwards.

        ``on_session_token(session)`` is called after every streamed chunk (tests use it to
        inspect or disturb the route mid-generation).
        """
        session = self.session(
            max_length=max_length or len(prompt_ids) + max_new_tokens + 1,
            adapters=adapters,
            step_timeout=step_timeout,
            replica_wait=replica_wait,
        )
        await session.open()
        try:
            return await generate(
                session,
                tokenizer,
                prompt_ids,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                return_first_logits=return_first_logits,
                on_text=(lambda _text: on_session_token(session)) if on_session_token else None,
            )
        finally:
            await session.close()
