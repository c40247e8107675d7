from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("payload", "reply_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    reply_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., reply_bytes: _Optional[int] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("payload", "max_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    max_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageInfo(_message.Message):
    __slots__ = ("model", "start", "end", "num_layers", "hidden_size", "vocab_size", "max_position_embeddings", "dtype", "device", "accepts")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: int
    end: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    dtype: str
    device: str
    accepts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_position_embeddings: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., accepts: _Optional[_Iterable[str]] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("node0_version", "peer_id", "stages", "active_sessions", "max_sessions", "reserved_cache_tokens", "max_cache_tokens", "max_message_bytes", "batch_size", "queue_depth", "step_ms", "tokens_per_s", "peak_batch_size")
    NODE0_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    node0_version: str
    peer_id: str
    stages: _containers.RepeatedCompositeFieldContainer[StageInfo]
    active_sessions: int
    max_sessions: int
    reserved_cache_tokens: int
    max_cache_tokens: int
    max_message_bytes: int
    batch_size: float
    queue_depth: int
    step_ms: float
    tokens_per_s: float
    peak_batch_size: int
    def __init__(self, node0_version: _Optional[str] = ..., peer_id: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageInfo, _Mapping]]] = ..., active_sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., reserved_cache_tokens: _Optional[int] = ..., max_cache_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., batch_size: _Optional[float] = ..., queue_depth: _Optional[int] = ..., step_ms: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., peak_batch_size: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("model", "start", "end", "max_length", "adapters")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: int
    end: int
    max_length: int
    adapters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., max_length: _Optional[int] = ..., adapters: _Optional[_Iterable[str]] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "position", "input", "sample", "sampling", "return_logits")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGITS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    input: Tensor
    sample: bool
    sampling: SamplingParams
    return_logits: bool
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., sample: _Optional[bool] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., return_logits: _Optional[bool] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("output", "token", "logits", "cache_length")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    token: int
    logits: Tensor
    cache_length: int
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., token: _Optional[int] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., cache_length: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: bool
    def __init__(self, closed: _Optional[bool] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TrainHeader(_message.Message):
    __slots__ = ("job_id", "microbatch_id", "start", "end", "loss_scale", "evaluate", "sequence_logprobs", "reference", "reference_adapter")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MICROBATCH_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LOSS_SCALE_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    microbatch_id: str
    start: int
    end: int
    loss_scale: float
    evaluate: bool
    sequence_logprobs: bool
    reference: bool
    reference_adapter: str
    def __init__(self, job_id: _Optional[str] = ..., microbatch_id: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., loss_scale: _Optional[float] = ..., evaluate: _Optional[bool] = ..., sequence_logprobs: _Optional[bool] = ..., reference: _Optional[bool] = ..., reference_adapter: _Optional[str] = ...) -> None: ...

class TrainMessage(_message.Message):
    __slots__ = ("header", "chunk", "loss_sum", "loss_tokens")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    LOSS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    header: TrainHeader
    chunk: TensorChunk
    loss_sum: float
    loss_tokens: int
    def __init__(self, header: _Optional[_Union[TrainHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ..., loss_sum: _Optional[float] = ..., loss_tokens: _Optional[int] = ...) -> None: ...

class TrainingJobRequest(_message.Message):
    __slots__ = ("job_id", "start", "end", "trainable", "model", "trainer_id", "lora_json", "replicas", "averaging_json", "checkpoint_every", "optimizer_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    LORA_JSON_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    AVERAGING_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    start: int
    end: int
    trainable: str
    model: str
    trainer_id: str
    lora_json: str
    replicas: int
    averaging_json: str
    checkpoint_every: int
    optimizer_json: str
    def __init__(self, job_id: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., trainable: _Optional[str] = ..., model: _Optional[str] = ..., trainer_id: _Optional[str] = ..., lora_json: _Optional[str] = ..., replicas: _Optional[int] = ..., averaging_json: _Optional[str] = ..., checkpoint_every: _Optional[int] = ..., optimizer_json: _Optional[str] = ...) -> None: ...

class TrainingJobResponse(_message.Message):
    __slots__ = ("trainable_parameters", "step", "resumed_from", "fingerprint")
    TRAINABLE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    trainable_parameters: int
    step: int
    resumed_from: str
    fingerprint: str
    def __init__(self, trainable_parameters: _Optional[int] = ..., step: _Optional[int] = ..., resumed_from: _Optional[str] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class OptimizerStepRequest(_message.Message):
    __slots__ = ("job_id", "start", "end", "step", "samples", "discard", "checkpoint", "trainer_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DISCARD_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    start: int
    end: int
    step: int
    samples: float
    discard: bool
    checkpoint: bool
    trainer_id: str
    def __init__(self, job_id: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., step: _Optional[int] = ..., samples: _Optional[float] = ..., discard: _Optional[bool] = ..., checkpoint: _Optional[bool] = ..., trainer_id: _Optional[str] = ...) -> None: ...

class OptimizerStepResponse(_message.Message):
    __slots__ = ("applied", "reason", "grad_norm", "step", "skipped", "group_size", "averaging", "checkpoint_path")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    AVERAGING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PATH_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    reason: str
    grad_norm: float
    step: int
    skipped: int
    group_size: int
    averaging: str
    checkpoint_path: str
    def __init__(self, applied: _Optional[bool] = ..., reason: _Optional[str] = ..., grad_norm: _Optional[float] = ..., step: _Optional[int] = ..., skipped: _Optional[int] = ..., group_size: _Optional[int] = ..., averaging: _Optional[str] = ..., checkpoint_path: _Optional[str] = ...) -> None: ...
