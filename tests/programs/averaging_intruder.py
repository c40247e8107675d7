"""Calls a replica's hivemind averaging handlers directly (run as a subprocess by the tests).

It reads the swarm's addresses (``maddrs.json``) and the target replica's peer id
(``<target>.peer``) from ``--workdir``, reaches the target over libp2p — through a DHT peer
admitted with ``--credential``, or, without one, a bare libp2p peer (an outsider cannot join the
private DHT) — and tries to download its state and to join its group. What it got goes to
``intruder-<name>.json``: the number of state messages and the join answer codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

SPAN = (2, 4)


async def probe(p2p, peer: str, prefix: str) -> dict:
    from hivemind.p2p import PeerID
    from hivemind.proto import averaging_pb2
    from hivemind.utils.timed_storage import get_dht_time

    from lora.allreduce_guard import GuardedReplicaAverager

    stub = GuardedReplicaAverager.get_stub(p2p, PeerID.from_base58(peer), namespace=prefix)
    result: dict = {}
    try:
        stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
        result["download_messages"] = len([m async for m in stream])
    except Exception as exc:
        result["download_messages"] = 0
        result["download_error"] = repr(exc)
    try:
        stream = await stub.rpc_join_group(
            averaging_pb2.JoinRequest(expiration=get_dht_time() + 10, group_key="x")
        )
        result["join_codes"] = [averaging_pb2.MessageCode.Name(m.code) async for m in stream]
    except Exception as exc:
        result["join_codes"] = []
        result["join_error"] = repr(exc)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--credential", type=Path, default=None)
    args = parser.parse_args()
    from lora.averaging import averaging_prefix

    maddrs = json.loads((args.workdir / "maddrs.json").read_text())
    peer = (args.workdir / f"{args.target}.peer").read_text()
    prefix = averaging_prefix(str(args.model_dir), *SPAN, "test-run", "code-review")
    if args.credential:
        from base.dht import start_dht
        from security.averaging_gate import AveragingGate
        from security.credentials import CredentialFile
        from security.dht_authorizer import SwarmAuthorizer

        credential = CredentialFile.load(args.credential)
        dht = start_dht(maddrs, client_mode=True, authorizer=SwarmAuthorizer(credential))
        # a member announces itself as replicas do (the DHT takes it from hosts only)
        AveragingGate(credential).publish(dht, str(dht.peer_id))

        async def member() -> dict:
            return await probe(await dht.replicate_p2p(), peer, prefix)

        result = asyncio.run(member())
    else:
        from hivemind.p2p import P2P

        async def outsider() -> dict:
            p2p = await P2P.create(initial_peers=maddrs)
            try:
                return await probe(p2p, peer, prefix)
            finally:
                await p2p.shutdown()

        result = asyncio.run(outsider())
    (args.workdir / f"intruder-{args.name}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    os._exit(0)  # hivemind's children: the test kills the process group


if __name__ == "__main__":
    raise SystemExit(main())
