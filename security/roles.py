"""Who may call what: the one table of RPCs per role.

Calls are named by their full gRPC method (``/node0.v1.Stage/OpenSession``). A method not in
:data:`ALLOWED` is refused to every role but ``host`` — so an RPC added later is closed to
clients, trainers and gatherers until someone lists it here (deny unless listed). ``OPEN`` is
served without a credential:

- ``Info`` is the health check (``node0 swarm status``, readiness probes, the tests' session
  counts). It carries what a stage record in the DHT carries (layer ranges, load, limits), no
  model data, and costs no compute; leaving it open lets an operator see that a daemon is up
  even with a broken credential, while everything that reads data, computes or trains is
  checked.
"""

from __future__ import annotations

from security.credentials import Role

STAGE = "/node0.v1.Stage/"
WEIGHTS = "/node0.v1.StageWeights/"

OPEN = frozenset({STAGE + "Info"})

_INFERENCE = frozenset({STAGE + "OpenSession", STAGE + "Step", STAGE + "CloseSession"})
_TRAINING = frozenset(
    {STAGE + "OpenTrainingJob", STAGE + "Forward", STAGE + "Backward", STAGE + "OptimizerStep"}
)
_GATHER = frozenset({WEIGHTS + "PullWeights"})

ALLOWED: dict[Role, frozenset[str]] = {
    Role.CLIENT: _INFERENCE,
    Role.TRAINER: _INFERENCE | _TRAINING,
    Role.GATHERER: _GATHER,
}
"""RPCs per role; ``host`` may call every method (it is a daemon of the swarm). ``Network/Probe``
(link measurement between daemons, node/net_probe.py) is listed for no role: hosts only."""

DHT_WRITERS = frozenset({Role.HOST})
"""Roles that may announce stage records (the others read the DHT only)."""

AVERAGING = frozenset({Role.HOST})
"""Roles admitted to hivemind averaging groups (join group, aggregate part, download state)."""


def may_call(role: Role, method: str) -> bool:
    """Whether ``role`` may call the full gRPC ``method``."""
    if method in OPEN or role == Role.HOST:
        return True
    return method in ALLOWED.get(role, frozenset())
