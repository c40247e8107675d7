"""Which replicas of a stage are alive, at which step, and still training.

hivemind matches an averaging group by time: replicas that call within one matchmaking window
meet. Two trainers drift apart (one step's compute can lag by more than the window under load),
and a matchmaking attempt can also fail while both replicas look. A replica that found no group
therefore asks, before it gives up on a round: is a partner still *due* at this step, i.e.
alive (its heartbeat record has not expired), at the same step (it has not applied this step
without us), and either looking for a group right now or trained within ``idle_timeout``
seconds (its trainer is still feeding it)? If one is, the round is tried again. A partner that
died drops out within ``3 x heartbeat`` seconds, one whose trainer abandoned the step (a
discard, e.g. its route broke) at once, one whose trainer vanished within ``idle_timeout``.

The step is the number rounds are matched on: the optimizer steps applied, or in DiLoCo mode
the outer steps passed (:meth:`lora.averaging.StageGradientAverager.set_step`), so a replica in
its local steps is due at the outer step a partner already reached.

Each replica publishes ``[step, active_at, looking]`` under ``<prefix>.presence`` (subkey: its
averager's peer id) every ``heartbeat`` seconds from a background thread, and at once when its
step changes or its trainer abandons the step. The looking flag rides the next beat: a partner
asks only after a whole matchmaking window without a group (seconds longer than a beat), and a
replica that looks is also one that trained lately, so publishing the flag at once bought
nothing but two DHT stores per round (a round that finds its group at once ends before the
beat).
"""

from __future__ import annotations

import threading

from hivemind.utils.timed_storage import get_dht_time

from lora.dht_calls import bounded_get, bounded_store


class ReplicaPresence:
    def __init__(self, dht, prefix: str, peer: str, *, heartbeat: float = 2.0, step: int = 0):
        self.dht = dht
        self.key = f"{prefix}.presence"
        self.peer = peer
        self.heartbeat = heartbeat
        self.step = step
        self.active_at = get_dht_time()
        self.looking = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"presence-{prefix[-24:]}", daemon=True
        )
        self._thread.start()

    # -- what this replica says ----------------------------------------------------------------

    def note_activity(self) -> None:
        """The trainer just fed this replica (a forward or backward call)."""
        self.active_at = get_dht_time()

    def note_idle(self) -> None:
        """The trainer abandoned its step here (discard): partners need not wait for us."""
        self.active_at = 0.0
        self._wake.set()

    def set_step(self, step: int) -> None:
        self.step = int(step)
        self._wake.set()

    def set_looking(self, looking: bool) -> None:
        self.looking = looking
        self.active_at = get_dht_time()  # published with the next beat (see the module doc)

    def _publish(self) -> None:
        if self.looking:
            self.active_at = get_dht_time()
        bounded_store(
            self.dht,
            self.key,
            [self.step, self.active_at, self.looking],
            expiration_time=get_dht_time() + 3 * self.heartbeat,
            subkey=self.peer,
            timeout=max(self.heartbeat, 1.0),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._publish()
            except Exception:  # a DHT shutting down under us: the next beat tries again
                pass
            self._wake.wait(self.heartbeat)

    def stop(self) -> None:
        """Stop beating and withdraw the record, so partners stop waiting for us at once."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2 * self.heartbeat)
        try:
            bounded_store(
                self.dht,
                self.key,
                None,
                subkey=self.peer,
                timeout=1.0,
                expiration_time=get_dht_time() + 3 * self.heartbeat,
            )
        except Exception:  # the DHT is already down: the record expires by itself
            pass

    # -- what the others say -------------------------------------------------------------------

    def due_partners(self, step: int, idle_timeout: float) -> list[str]:
        """Live replicas (not us) still at ``step`` that look for a group or trained lately."""
        now = get_dht_time()
        return sorted(
            peer
            for peer, (their_step, active_at, looking) in self.partners().items()
            if their_step == step and (looking or now - active_at < idle_timeout)
        )

    def partners(self) -> dict[str, tuple[int, float, bool]]:
        """Every live replica but us: peer id → (step, active_at, looking)."""
        found = bounded_get(self.dht, self.key, latest=True, timeout=max(3 * self.heartbeat, 3.0))
        if found is None or not isinstance(found.value, dict):
            return {}
        out = {}
        for peer, entry in found.value.items():
            record = entry.value
            if peer == self.peer or not isinstance(record, list | tuple) or len(record) != 3:
                continue
            try:
                out[str(peer)] = (int(record[0]), float(record[1]), bool(record[2]))
            except (TypeError, ValueError):
                continue
        return out
