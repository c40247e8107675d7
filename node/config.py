"""Validated configuration of a daemon and of a local swarm preset.

YAML files in ``configs/`` only name values; these models hold the defaults, the meaning of each
field and the validation. Files are read by the one loader, ``base.config_loader``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from base.errors import ConfigError
from base.precision import DEVICE_PATTERN, DType

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSpec(_Strict):
    """A contiguous range of decoder layers ``[start, end)`` (global indices)."""

    start: int = Field(ge=0, description="first layer, inclusive")
    end: int = Field(gt=0, description="last layer + 1")

    @model_validator(mode="after")
    def _ordered(self) -> StageSpec:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


Stages = Annotated[list[StageSpec], Field(min_length=1)] | Literal["auto"]


def describe_stages(stages: Stages) -> str:
    """``[0, 10), [10, 20)`` or ``auto``."""
    return stages if isinstance(stages, str) else ", ".join(str(s) for s in stages)


class PlacementConfig(_Strict):
    """Automatic placement (``stages: auto``) and rebalancing; see docs/placement.md."""

    num_blocks: int | None = Field(
        None, ge=1, description="layers this peer holds (default: as many as memory_budget_mb fits)"
    )
    memory_budget_mb: float | None = Field(
        None,
        gt=0,
        description="MiB for weights and KV-cache (max_cache_tokens positions) of the span, in "
        "the daemon's dtype; num_blocks is derived from it when not given",
    )
    balance_quality: float = Field(
        0.75,
        gt=0,
        le=1,
        description="move for throughput only when bottleneck now / bottleneck after < this "
        "(lower: fewer moves); a span that lost its last replica is always repaired",
    )
    rebalance_period: float = Field(
        30.0, gt=0, description="seconds between checks whether this peer should move"
    )
    confirmations: int = Field(
        2, ge=1, description="consecutive checks that must agree before a move"
    )
    min_stay: float = Field(
        300.0,
        ge=0,
        description="seconds after a move during which no move for balance alone is made",
    )
    join_jitter: float = Field(
        2.0, ge=0, description="most seconds of random wait before choosing a span or moving"
    )
    settle: float | None = Field(
        None,
        gt=0,
        description="seconds between announcing a chosen span as joining and checking that no "
        "peer with a lower id chose it at the same time (default: 1.5 × announce_period)",
    )
    drain: float = Field(
        2.0, ge=0, description="seconds in-flight steps get after the old span goes offline"
    )
    measure_throughput: bool = Field(
        True, description="time decode and training steps on the loaded span and announce them"
    )
    network_mbps: float | None = Field(
        None,
        gt=0,
        description="this peer's link throughput in Mbit/s, announced for routing as declared "
        "(no measurement then); unset: measured against other daemons (node/net_probe.py)",
    )
    measure_network: bool = Field(
        True, description="measure the link throughput against other daemons and announce it"
    )
    network_probe_period: float = Field(
        300.0,
        gt=0,
        description="seconds between network measurements once one succeeded (until then: "
        "every announce_period, as the first peer of a swarm has nobody to measure against)",
    )


class DaemonConfig(_Strict):
    """What one ``node0 serve`` process hosts and how it joins the swarm."""

    model: str = Field("smollm2-135m", description="catalog name or local HF directory")
    stages: Stages = Field(
        description="layer ranges this daemon hosts, or `auto`: choose (and move) by "
        "placement (docs/placement.md)"
    )
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig, description="automatic placement and rebalancing"
    )
    host: str = Field("127.0.0.1", description="gRPC bind address")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    announce_host: str | None = Field(None, description="host announced to peers (default: host)")
    initial_peers: list[str] = Field(
        default_factory=list, description="DHT multiaddrs to join; empty starts a new DHT"
    )
    dht_host_maddrs: list[str] = Field(
        default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"], description="DHT listen multiaddrs"
    )
    announce_period: float = Field(5.0, gt=0, description="seconds between DHT heartbeats")
    announce_ttl: float = Field(15.0, gt=0, description="a record expires this long after a beat")
    max_sessions: int = Field(16, ge=1, description="concurrent inference sessions")
    max_cache_tokens: int = Field(
        65536, ge=1, description="KV-cache positions reserved across sessions"
    )
    idle_timeout: float = Field(300.0, gt=0, description="evict sessions idle this long (s)")
    max_batch_tokens: int = Field(
        256,
        ge=1,
        description="batch token budget: decode tokens plus prompt chunks one forward computes",
    )
    prefill_chunk: int = Field(
        128, ge=1, description="most positions of one prompt a batch computes (chunked prefill)"
    )
    batch_linger_ms: float = Field(
        40.0,
        ge=0,
        description="the longest a batch waits for the sessions due to step within it, so "
        "sessions stepping at the same rhythm batch together; 0 starts every batch on the "
        "first arrival",
    )
    training_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="while inference and training both wait, training's most share of the "
        "recent compute time (inference goes first; training alone takes all of it)",
    )
    training_piece_tokens: int = Field(
        512,
        ge=1,
        description="the work of one training turn, in tokens through one decoder block (a "
        "micro-batch runs in pieces: whole rows per block, LM-head chunks of the same cost), "
        "so a session waits for at most one piece",
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="largest gRPC message accepted or sent"
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    compile_decode: bool = Field(
        False,
        description="compile each stage's one-session decode step into one graph "
        "(torch.compile, inductor; needs a C++ compiler) before serving: faster batch-1 decode "
        "on CPU stages, tens of seconds more at start (docs/precision.md). CPU only",
    )
    device: str = Field(
        "cpu",
        pattern=DEVICE_PATTERN,
        description="where the stage weights and KV-caches live: cpu, cuda or cuda:N (never "
        "a silent fallback: a missing device is exit code 11)",
    )
    dtype: DType = Field(
        "float32",
        description="stage weights, KV-cache and the activations this daemon sends",
    )
    accept_input_dtypes: list[DType] = Field(
        default_factory=list,
        description="activation dtypes this stage converts although the conversion is lossy "
        "(its own dtype, and bfloat16/float16 into float32, are always taken)",
    )
    peer_file: Path | None = Field(None, description="write this daemon's DHT addresses here")
    state_dir: Path | None = Field(
        None,
        description="training checkpoints go under "
        "STATE_DIR/checkpoints/<job>/ (none: adapter jobs are not "
        "checkpointed)",
    )
    adapters: dict[str, Path] = Field(
        default_factory=dict,
        description="task adapters to serve: name -> PEFT adapter directory (whole-model keys)",
    )
    credential: Path | None = Field(
        None,
        description="this peer's swarm credential (role host, `node0 swarm invite NAME --role "
        "host`); the DHT, every gRPC call but Info and averaging then admit only credentialed "
        "peers of the same swarm. Required unless insecure_open_swarm",
    )
    revocations: Path | None = Field(
        None,
        description="the authority's signed revocation list (revoked.json), re-read every "
        "heartbeat; none: no credential is ever revoked on this peer",
    )
    insecure_open_swarm: bool = Field(
        False,
        description="serve without access control: anyone who reaches the ports may join the "
        "DHT, call every RPC and join averaging (the banner says so)",
    )

    @model_validator(mode="after")
    def _compile_on_cpu(self) -> DaemonConfig:
        if self.compile_decode and self.device != "cpu":
            raise ValueError(
                f"compile_decode is for CPU stages (measured and tested there); this daemon's "
                f"device is {self.device!r}: leave compile_decode off"
            )
        return self

    @model_validator(mode="after")
    def _chunk_fits_budget(self) -> DaemonConfig:
        if self.prefill_chunk > self.max_batch_tokens:
            raise ValueError(
                f"prefill_chunk ({self.prefill_chunk}) must not exceed max_batch_tokens "
                f"({self.max_batch_tokens})"
            )
        return self

    @model_validator(mode="after")
    def _auto_knows_its_size(self) -> DaemonConfig:
        p = self.placement
        if self.stages == "auto" and p.num_blocks is None and p.memory_budget_mb is None:
            raise ValueError(
                "stages: auto needs placement.num_blocks or placement.memory_budget_mb"
            )
        return self

    @model_validator(mode="after")
    def _ttl_covers_period(self) -> DaemonConfig:
        if self.announce_ttl <= self.announce_period:
            raise ValueError(
                "announce_ttl must exceed announce_period, or records expire between heartbeats"
            )
        return self


class SwarmPeer(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="peer name (log file name)")
    stages: Stages = Field(description="layer ranges, or `auto`")
    placement: dict = Field(
        default_factory=dict, description="PlacementConfig fields of this peer (num_blocks…)"
    )


class SwarmPreset(_Strict):
    """A local multi-process swarm: which peers host which stages."""

    model: str = "smollm2-135m"
    peers: list[SwarmPeer] = Field(min_length=1)
    daemon: dict = Field(
        default_factory=dict, description="DaemonConfig fields applied to every peer"
    )


def resolve_preset_path(name_or_path: str) -> Path:
    """A preset name from ``configs/swarm/`` or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = CONFIGS_DIR / "swarm" / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in (CONFIGS_DIR / "swarm").glob("*.yaml"))
        raise ConfigError(f"no swarm preset {name_or_path!r}; known presets: {known}")
    return candidate
