"""Greedy tokens and first-step logits from a live swarm, in a process of their own.

Usage: python -m tests.programs.swarm_outputs MODEL OUT.json PEER... (prompts and adapter
sets as JSON on stdin). A test process that has run many gRPC tests forks its DHT child badly
(it once hung); this keeps the DHT client out of the test process.
"""

from __future__ import annotations

import asyncio
import json
import sys

import base  # noqa: F401  (gRPC fork handlers off)
from inference.swarm_client import SwarmClient


def main() -> int:
    model, out, peers = sys.argv[1], sys.argv[2], sys.argv[3:]
    request = json.loads(sys.stdin.read())
    client = SwarmClient(model, peers)
    try:
        client.wait_for_route()
        tokenizer = client.load_tokenizer()

        async def generate(ids, adapters):
            result = await client.generate_once(
                tokenizer,
                ids,
                max_new_tokens=request["max_new_tokens"],
                return_first_logits=True,
                adapters=tuple(adapters),
            )
            return {"tokens": result.token_ids, "logits": result.first_logits.tolist()}

        results = {
            ",".join(a): [asyncio.run(generate(ids, a)) for ids in request["prompts"]]
            for a in request["adapter_sets"]
        }
    finally:
        client.close()
    with open(out, "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
