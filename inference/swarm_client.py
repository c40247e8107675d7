"""A client's view of the swarm: a client-mode DHT peer, the model's tokenizer, sessions.

The initial peers come from ``--initial-peers`` or, for a local swarm, from the state file that
``node0 swarm up`` writes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from inference.generation import GenerationResult, generate
from inference.pipeline_session import PipelineSession
from inference.routing import plan_route
from inference.sampler import SamplingParams
from models.catalog import node0_home, resolve_model_dir
from node.dht import start_dht
from node.dht_records import StageRecord, fetch_records
from node.errors import SwarmError

log = logging.getLogger(__name__)

GREEDY = SamplingParams()
ROUTE_WAIT_S = 5.0  # how long a client waits for records to appear before naming what's missing


def default_swarm_file() -> Path:
    return Path(os.environ.get("NODE0_SWARM_FILE", node0_home() / "swarm" / "current.json"))


def initial_peers_from(swarm_file: Path | None = None) -> list[str]:
    path = swarm_file or default_swarm_file()
    if not path.is_file():
        raise SwarmError(f"no --initial-peers given and no local swarm state at {path}",
                         hint="start one with `node0 swarm up` or pass --initial-peers")
    peers = json.loads(path.read_text()).get("initial_peers") or []
    if not peers:
        raise SwarmError(f"{path} lists no initial peers")
    return peers


class SwarmClient:
    def __init__(self, model: str, initial_peers: list[str]):
        self.model = model
        self.model_dir = resolve_model_dir(model)
        self.dht = start_dht(initial_peers, client_mode=True)

    def records(self) -> list[StageRecord]:
        return fetch_records(self.dht, self.model)

    def wait_for_route(self, timeout: float = ROUTE_WAIT_S) -> list[StageRecord]:
        """Plan a route, giving fresh announcements up to ``timeout`` seconds to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return plan_route(self.records(), self.model)
            except SwarmError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

    def session(self, *, max_length: int, adapters: tuple[str, ...] = (),
                step_timeout: float = 30.0) -> PipelineSession:
        return PipelineSession(self.records, self.model, max_length=max_length,
                               adapters=adapters, step_timeout=step_timeout)

    async def generate_once(self, tokenizer, prompt_ids: list[int], *, max_new_tokens: int,
                            sampling: SamplingParams = GREEDY, max_length: int | None = None,
                            return_first_logits: bool = False, on_session_token=None,
                            step_timeout: float = 30.0,
                            adapters: tuple[str, ...] = ()) -> GenerationResult:
        """One generation in a fresh session (no EOS stop), closed afterwards.

        ``on_session_token(session)`` is called after every streamed chunk (tests use it to
        inspect or disturb the route mid-generation).
        """
        session = self.session(max_length=max_length or len(prompt_ids) + max_new_tokens + 1,
                               adapters=adapters, step_timeout=step_timeout)
        await session.open()
        try:
            return await generate(
                session, tokenizer, prompt_ids, max_new_tokens=max_new_tokens,
                sampling=sampling, return_first_logits=return_first_logits,
                on_text=(lambda _text: on_session_token(session)) if on_session_token else None)
        finally:
            await session.close()

    def close(self) -> None:
        self.dht.shutdown()
