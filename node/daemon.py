"""The daemon behind ``node0 serve``: load stages, serve gRPC, announce in the DHT, leave cleanly.

Lifecycle: load every hosted stage (fail closed on any checkpoint problem) → start the gRPC
server → join the DHT → announce each stage and keep announcing every ``announce_period``
(heartbeat, also evicting idle sessions; a thread measures the link throughput against the
other daemons, :mod:`node.net_probe`, and the heartbeat carries the newest figure) → on
SIGTERM/SIGINT: announce ``offline``, stop accepting requests and give in-flight streams a
grace period, leave the DHT, exit 0.

With ``stages: auto`` the daemon joins the DHT first and claims a span (:mod:`node.rebalance`,
policy in :mod:`node.placement`) before it loads it; afterwards the heartbeat also asks whether
to move, and a move drains the old span (offline, then its sessions closed: clients fail over
and replay), loads the new one and announces it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from importlib import metadata
from pathlib import Path

import torch

from base.banner import print_banner, status
from base.dht import start_dht, visible_maddrs
from base.dht_records import StageRecord, announce, fetch_records
from base.errors import SwarmError
from base.paths import converted_weights_dir
from base.precision import accepted_inputs, check_fits, resolve_device, torch_dtype
from checkpoint_gather.weights_service import WeightsService
from lora.stage_adapters import adapters as stage_adapters
from models.catalog import resolve_model_dir
from node.adapter_service import AdapterService
from node.config import DaemonConfig, StageSpec
from node.main_thread import MainThreadCalls
from node.net_probe import NetworkMeter, NetworkService, probe_cap
from node.placement import Move
from node.rebalance import KeepAnnouncing, Placer, blocks_for_budget
from node.span_bench import SpanThroughput, measure_span
from node.stage_service import StageService, start_grpc_server
from pipeline_stages.compute_thread import pin_to_one_thread
from pipeline_stages.executor import StageExecutor
from pipeline_stages.loader import load_config, load_stage, stage_bytes
from pipeline_stages.passing_thread import on_passing_thread
from pipeline_stages.runtime_adapters import install_stage
from pipeline_stages.sessions import SessionManager
from provenance import atomic_write
from security.access import PeerAccess, install
from security.grpc_auth import CallSigner

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
ANNOUNCE_TIMEOUT_S = 10.0


def load_task_adapter(stages, name: str, path: Path) -> None:
    """Attach adapter ``name`` to every hosted stage with that stage's layers of ``path``."""
    from lora import attach_adapter
    from lora.peft_import import read_peft_adapter
    from lora.stage_adapters import load_adapter_state_dict

    settings, state = read_peft_adapter(path)
    for stage in stages:
        attach_adapter(stage, name, settings)
        with torch.no_grad():
            load_adapter_state_dict(stage, name, state)


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        config_path: str | None = None,
        config_sha256: str | None = None,
    ):
        self.config = config
        self.config_path = config_path
        self.config_sha256 = config_sha256
        self.stop_event = threading.Event()
        self.dht = None
        self.main_calls = MainThreadCalls()
        self.server = None
        self.port: int | None = None
        self.placer: Placer | None = None
        self.throughput: dict[tuple[int, int], SpanThroughput] = {}
        self.network: NetworkMeter | None = None
        self.model_dir: Path | None = None

    def _endpoint(self) -> str:
        return f"{self.config.announce_host or self.config.host}:{self.port or 0}"

    def _claim_record(self, span: tuple[int, int], state: str) -> StageRecord:
        """A record for a span this daemon claims or gives up (not loaded yet: no figures)."""
        cfg = self.config
        return StageRecord(
            model=cfg.model,
            start=span[0],
            end=span[1],
            num_layers=self.placer.num_layers,
            endpoint=self._endpoint(),
            peer_id=str(self.dht.peer_id),
            state=state,
            node0_version=metadata.version("node0"),
            dtype=cfg.dtype,
            device=cfg.device,
            accepts=accepted_inputs(cfg.dtype, cfg.accept_input_dtypes),
        )

    def _measure(self, span: tuple[int, int], stage) -> None:
        if not self.config.placement.measure_throughput:
            return
        try:
            self.throughput[span] = measure_span(stage)
        except Exception:  # the figures are advice for routing: never a reason not to serve
            log.warning("measuring layers [%d, %d) failed", *span, exc_info=True)

    def _records(self, executor: StageExecutor, state: str = "online") -> list[StageRecord]:
        stats = executor.stats()
        host = self.config.announce_host or self.config.host
        measured = self.throughput
        return [
            StageRecord(
                model=self.config.model,
                start=start,
                end=end,
                num_layers=executor.config.num_hidden_layers,
                endpoint=f"{host}:{self.port}",
                peer_id=str(self.dht.peer_id),
                state=state,
                load=stats["active_sessions"] / executor.sessions.max_sessions,
                batch_size=round(stats["batch_size"], 2),
                peak_batch_size=stats["peak_batch_size"],
                queue_depth=stats["queue_depth"],
                step_ms=round(stats["step_ms"], 2),
                tokens_per_s=round(stats["tokens_per_s"], 1),
                # loaded from the config and attached by training jobs alike
                adapters=sorted(stage_adapters(executor.stages[(start, end)])),
                node0_version=metadata.version("node0"),
                dtype=self.config.dtype,
                device=str(executor.device),
                accepts=executor.accepts,
                decode_tokens_per_s=measured.get(
                    (start, end), SpanThroughput()
                ).decode_tokens_per_s,
                forward_samples_per_s=measured.get(
                    (start, end), SpanThroughput()
                ).forward_samples_per_s,
                backward_samples_per_s=measured.get(
                    (start, end), SpanThroughput()
                ).backward_samples_per_s,
                bench_tokens=measured.get((start, end), SpanThroughput()).bench_tokens,
                **self._network_fields(),
                hidden_size=executor.config.hidden_size,
            )
            for start, end in sorted(executor.stages)
        ]

    def _network_fields(self) -> dict:
        """``network_mbps`` and ``network_source``: the operator's figure, else the measured
        one, else none yet."""
        declared = self.config.placement.network_mbps
        if declared:
            return {"network_mbps": float(declared), "network_source": "declared"}
        if self.network is not None and self.network.mbps is not None:
            return {"network_mbps": round(self.network.mbps, 1), "network_source": "measured"}
        return {"network_mbps": 0.0, "network_source": ""}

    def _network_banner(self) -> str:
        p = self.config.placement
        if p.network_mbps:
            return f"network: declared {p.network_mbps:g} Mbit/s"
        if p.measure_network:
            return f"network: measured against peers every {p.network_probe_period:g} s"
        return "network: not measured"

    def _probe_targets(self) -> list[str]:
        """Endpoints of the other online daemons of the model: what the network is measured
        against."""
        mine = str(self.dht.peer_id)
        records = fetch_records(self.dht, self.config.model)
        return sorted({r.endpoint for r in records if r.peer_id != mine and r.state == "online"})

    def _start_network_meter(self, access: PeerAccess) -> None:
        p = self.config.placement
        if p.network_mbps or not p.measure_network:
            return
        signer = None if access.open else CallSigner(access.credential)
        self.network = NetworkMeter(
            self._probe_targets,
            signer,
            period_s=p.network_probe_period,
            retry_s=min(p.network_probe_period, self.config.announce_period),
        ).start()

    def run(self) -> int:
        cfg = self.config
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        # this thread on one OpenMP thread from now on: the scheduler's computes
        # (pipeline_stages.compute_thread)
        pin_to_one_thread()
        model_dir = self.model_dir = resolve_model_dir(cfg.model)
        device = resolve_device(cfg.device, cfg.dtype)  # fails closed before anything loads
        dtype = torch_dtype(cfg.dtype)
        # fails closed: no credential and no explicit insecure_open_swarm is a config error
        access = PeerAccess.for_daemon(cfg.credential, cfg.revocations, cfg.insecure_open_swarm)
        install(access)
        specs = cfg.stages
        if specs == "auto":
            specs = self._place(model_dir, dtype, access)
        weight_bytes = {
            (s.start, s.end): stage_bytes(model_dir, s.start, s.end, dtype) for s in specs
        }
        check_fits(device, sum(weight_bytes.values()), f"the weights of {len(specs)} stage(s)")
        print_banner(
            "serve",
            self.config_path,
            self.config_sha256,
            [
                f"model: {cfg.model} ({model_dir})",
                f"precision: {cfg.dtype} on {device}"
                + (", compiled decode step" if cfg.compile_decode else "")
                + "; stage weights "
                f"{sum(weight_bytes.values()) / 2**20:.1f} MiB; takes activations in "
                + ", ".join(accepted_inputs(cfg.dtype, cfg.accept_input_dtypes)),
                "stages: "
                + ", ".join(str(s) for s in specs)
                + (" (auto: placement chose them)" if cfg.stages == "auto" else ""),
                "adapters: " + (", ".join(sorted(cfg.adapters)) or "none"),
                f"grpc: {cfg.host}:{cfg.port or 'auto'}; max message {cfg.max_message_bytes} B",
                "dht: "
                + ("join " + ", ".join(cfg.initial_peers) if cfg.initial_peers else "new DHT"),
                f"sessions: max {cfg.max_sessions}, cache {cfg.max_cache_tokens} positions, "
                f"idle timeout {cfg.idle_timeout:g} s",
                f"batching: {cfg.max_batch_tokens} tokens per batch, prefill chunk "
                f"{cfg.prefill_chunk}, convoy linger {cfg.batch_linger_ms:g} ms, training at "
                f"most {cfg.training_share:.0%} of compute while sessions wait",
                f"heartbeat: every {cfg.announce_period:g} s, ttl {cfg.announce_ttl:g} s",
                self._network_banner(),
                access.describe(),
            ],
        )
        # the one-off compute on a thread that ends (pipeline_stages.passing_thread)
        stages = on_passing_thread(lambda: self._load_stages(specs, model_dir, dtype, device))
        sessions = SessionManager(
            max_sessions=cfg.max_sessions,
            max_cache_tokens=cfg.max_cache_tokens,
            idle_timeout=cfg.idle_timeout,
        )
        executor = StageExecutor(
            cfg.model,
            stages,
            sessions,
            max_batch_tokens=cfg.max_batch_tokens,
            prefill_chunk=cfg.prefill_chunk,
            training_share=cfg.training_share,
            training_piece_tokens=cfg.training_piece_tokens,
            batch_linger_ms=cfg.batch_linger_ms,
            accept_input_dtypes=tuple(cfg.accept_input_dtypes),
            compile_decode=cfg.compile_decode,
        )
        self._compile(executor)  # on the scheduler's thread

        if self.dht is None:
            self.dht = self._start_dht(access)
        maddrs = visible_maddrs(self.dht)
        executor.dht = self.dht
        executor.in_main_thread = self.main_calls.call
        executor.checkpoint_dir = cfg.state_dir / "checkpoints" if cfg.state_dir else None
        service = StageService(
            executor, peer_id=str(self.dht.peer_id), max_message_bytes=cfg.max_message_bytes
        )
        weights = WeightsService(
            executor, peer_id=str(self.dht.peer_id), max_message_bytes=cfg.max_message_bytes
        )
        # registered model versions' adapters, attached at run time (docs/registry.md)
        runtime_adapters = AdapterService(executor)
        self.server, self.port = start_grpc_server(
            service,
            cfg.host,
            cfg.port,
            max_workers=2 * cfg.max_sessions + 4,
            extra_servicers=(
                weights,
                runtime_adapters,
                NetworkService(probe_cap(cfg.max_message_bytes)),
            ),
            interceptors=access.grpc_interceptors(),
        )
        status("grpc", f"serving on {cfg.host}:{self.port}")
        announce(self.dht, self._records(executor), cfg.announce_ttl)
        self._start_network_meter(access)
        if cfg.peer_file:
            atomic_write(cfg.peer_file, "\n".join(maddrs) + "\n")
        status(
            "ready",
            f"peer {self.dht.peer_id} endpoint {cfg.host}:{self.port} "
            f"dht {maddrs[0] if maddrs else '?'}",
        )
        try:
            next_beat = time.monotonic() + cfg.announce_period
            while not self.stop_event.is_set():
                # jobs whose construction must happen on this thread (see node.main_thread)
                self.main_calls.run_pending(min(0.5, max(0.0, next_beat - time.monotonic())))
                if time.monotonic() < next_beat or self.stop_event.is_set():
                    continue
                next_beat = time.monotonic() + cfg.announce_period
                evicted = sessions.evict_idle()
                if evicted:
                    log.info("evicted %d idle session(s)", len(evicted))
                try:
                    announce(
                        self.dht,
                        self._records(executor),
                        cfg.announce_ttl,
                        timeout=ANNOUNCE_TIMEOUT_S,
                    )
                except TimeoutError:
                    log.warning("DHT heartbeat timed out; retrying next period")
                # revocations issued on another machine take effect here within one beat
                access.sync_revocations(self.dht, timeout=ANNOUNCE_TIMEOUT_S)
                if self.placer is not None and len(executor.stages) == 1:
                    self._maybe_move(executor, model_dir, dtype, device)
        finally:
            self._shutdown(executor)
        return 0

    def _start_dht(self, access):
        status("dht", "starting")
        return start_dht(
            self.config.initial_peers,
            host_maddrs=self.config.dht_host_maddrs,
            authorizer=access.dht_authorizer(),
            owner_identity=True,  # our records' peer id is our signing key's (fetch_records)
        )

    def _load_stages(self, specs, model_dir: Path, dtype, device) -> dict:
        """Load and measure each span (announced as joining meanwhile), attach the adapters."""
        cfg = self.config
        stages = {}
        claims = (
            [self._claim_record((s.start, s.end), "joining") for s in specs] if self.placer else []
        )
        with KeepAnnouncing(
            self.dht,
            claims,
            period=cfg.announce_period,
            ttl=cfg.announce_ttl,
        ):
            for spec in specs:
                status("load", f"layers {spec} from {model_dir}")
                stages[(spec.start, spec.end)] = load_stage(
                    model_dir,
                    spec.start,
                    spec.end,
                    dtype=dtype,
                    device=device,
                    converted_dir=converted_weights_dir(),
                )
                self._measure((spec.start, spec.end), stages[(spec.start, spec.end)])
        for name, path in sorted(cfg.adapters.items()):
            status("adapter", f"{name} from {path}")
            load_task_adapter(stages.values(), name, path)
        return stages

    def _place(self, model_dir: Path, dtype: torch.dtype, access) -> list[StageSpec]:
        """``stages: auto``: join the DHT, claim a span (node.rebalance), return it."""
        cfg, p = self.config, self.config.placement
        num_layers = load_config(model_dir).num_hidden_layers
        blocks = p.num_blocks or blocks_for_budget(
            model_dir, dtype, p.memory_budget_mb, cfg.max_cache_tokens
        )
        self.dht = self._start_dht(access)
        self.placer = Placer(
            self.dht,
            cfg.model,
            str(self.dht.peer_id),
            num_layers=num_layers,
            num_blocks=min(blocks, num_layers),
            config=p,
            announce_ttl=cfg.announce_ttl,
            settle=p.settle or 1.5 * cfg.announce_period,
        )
        status("place", f"holds {blocks} of {num_layers} layers; choosing a span")
        span = self.placer.claim(self._claim_record)
        if span is None:
            raise SwarmError(
                "automatic placement lost every claim to peers joining at the same time",
                hint="start the daemon again (or give it explicit stages)",
            )
        return [StageSpec(start=span[0], end=span[1])]

    def _maybe_move(self, executor: StageExecutor, model_dir: Path, dtype, device) -> None:
        (span,) = executor.stages
        try:
            move = self.placer.check(span)
        except Exception:  # a DHT hiccup must not stop serving
            log.warning("placement check failed", exc_info=True)
            return
        if move is not None:
            self.move(executor, move, model_dir, dtype, device)

    def move(self, executor: StageExecutor, move: Move, model_dir: Path, dtype, device) -> bool:
        """Serve ``move.target`` instead of ``move.current``: claim it, announce the old span
        offline, let in-flight steps finish, close its sessions and training jobs (clients
        fail over and replay, trainers reroute), load the new span with every adapter held
        before (the config's and those loaded at run time), announce it."""
        cfg = self.config
        if self.placer.claim(self._claim_record, target=move.target) is None:
            log.info("layers [%d, %d) were claimed by another peer; staying", *move.target)
            return False
        status("move", f"layers {list(move.current)} -> {list(move.target)}: {move.reason}")
        target_claim = self._claim_record(move.target, "joining")
        announce(
            self.dht,
            [*self._records(executor, state="offline"), target_claim],
            cfg.announce_ttl,
            timeout=ANNOUNCE_TIMEOUT_S,
        )
        time.sleep(cfg.placement.drain)
        closed = executor.sessions.close_stage(move.current)
        executor.close_jobs()
        log.info("closed %d session(s) on [%d, %d)", len(closed), *move.current)
        with KeepAnnouncing(
            self.dht, [target_claim], period=cfg.announce_period, ttl=cfg.announce_ttl
        ):
            executor.stages.clear()  # free the old weights before the new ones load
            self.throughput.clear()
            # the one-off compute on a thread that ends (pipeline_stages.passing_thread)
            on_passing_thread(lambda: self._load_moved(executor, move, model_dir, dtype, device))
            self._compile(executor)  # on the scheduler's thread
        announce(self.dht, self._records(executor), cfg.announce_ttl, timeout=ANNOUNCE_TIMEOUT_S)
        self.placer.moved()
        status("move", f"serving layers {list(move.target)}")
        return True

    def _load_moved(self, executor: StageExecutor, move, model_dir: Path, dtype, device) -> None:
        """Load, measure and install the span a move goes to, with its adapters."""
        cfg = self.config
        stage = load_stage(
            model_dir,
            *move.target,
            dtype=dtype,
            device=device,
            converted_dir=converted_weights_dir(),
        )
        self._measure(move.target, stage)
        for name, path in sorted(cfg.adapters.items()):  # the new span's layers of each
            load_task_adapter([stage], name, path)
        # and of each adapter loaded at run time (LoadAdapter), read again from its source
        for dropped in install_stage(executor, move.target, stage):
            status("adapter", f"dropped {dropped.name} at the move: {dropped.reason}")

    def _compile(self, executor: StageExecutor) -> None:
        """Compile the decode steps before serving (``compile_decode``), with the time each took."""
        if not executor.compile_decode:
            return
        status("compile", "decode step of " + ", ".join(f"{list(s)}" for s in executor.stages))
        for span, seconds in executor.compile_stages().items():
            if seconds is None:
                status("compile", f"layers {list(span)}: not compiled, adapters attached (eager)")
            else:
                status("compile", f"layers {list(span)}: {seconds:.1f} s")

    def _shutdown(self, executor: StageExecutor) -> None:
        status("shutdown", "announcing offline, draining requests")
        if self.network is not None:
            self.network.stop()
        try:
            announce(
                self.dht,
                self._records(executor, state="offline"),
                self.config.announce_ttl,
                timeout=ANNOUNCE_TIMEOUT_S,
            )
        except Exception:  # leaving must not fail because the DHT is already gone
            log.warning("could not announce offline", exc_info=True)
        if self.server is not None:
            self.server.stop(grace=SHUTDOWN_GRACE_S).wait()
        executor.close()  # stop the scheduler; checkpoint adapters being trained
        if self.dht is not None:
            self.dht.shutdown()
        if executor.compile_decode:
            status("shutdown", f"{executor.compiled_steps} step(s) served by the compiled decode")
        status("shutdown", "done")

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon gracefully; forked children get default handlers.

        hivemind forks its DHT process from this one. A Python-level handler inherited by that
        child would swallow the SIGTERM meant to end it (its event loop may never even run the
        handler), so the child would outlive the daemon; children are reset to the kernel
        default instead.
        """

        def _stop(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            self.stop_event.set()

        def _default_signals_in_child() -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        os.register_at_fork(after_in_child=_default_signals_in_child)
