from proto import node0_pb2 as _node0_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullWeightsRequest(_message.Message):
    __slots__ = ("model", "start", "end", "base", "adapters", "chunk_bytes", "tied_head_digest_only")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIED_HEAD_DIGEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: int
    end: int
    base: bool
    adapters: _containers.RepeatedScalarFieldContainer[str]
    chunk_bytes: int
    tied_head_digest_only: bool
    def __init__(self, model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., base: _Optional[bool] = ..., adapters: _Optional[_Iterable[str]] = ..., chunk_bytes: _Optional[int] = ..., tied_head_digest_only: _Optional[bool] = ...) -> None: ...

class WeightEntry(_message.Message):
    __slots__ = ("name", "adapter", "key", "dtype", "shape", "sha256", "digest_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    adapter: str
    key: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    sha256: str
    digest_only: bool
    def __init__(self, name: _Optional[str] = ..., adapter: _Optional[str] = ..., key: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., sha256: _Optional[str] = ..., digest_only: _Optional[bool] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "settings_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings_json: str
    def __init__(self, name: _Optional[str] = ..., settings_json: _Optional[str] = ...) -> None: ...

class WeightsHeader(_message.Message):
    __slots__ = ("model", "start", "end", "num_layers", "peer_id", "node0_version", "config_json", "tensors", "adapters", "total_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE0_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: int
    end: int
    num_layers: int
    peer_id: str
    node0_version: str
    config_json: str
    tensors: _containers.RepeatedCompositeFieldContainer[WeightEntry]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    total_bytes: int
    def __init__(self, model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., num_layers: _Optional[int] = ..., peer_id: _Optional[str] = ..., node0_version: _Optional[str] = ..., config_json: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[WeightEntry, _Mapping]]] = ..., adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class WeightsTrailer(_message.Message):
    __slots__ = ("tensors", "bytes")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tensors: int
    bytes: int
    def __init__(self, tensors: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class WeightsMessage(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: WeightsHeader
    chunk: _node0_pb2.TensorChunk
    trailer: WeightsTrailer
    def __init__(self, header: _Optional[_Union[WeightsHeader, _Mapping]] = ..., chunk: _Optional[_Union[_node0_pb2.TensorChunk, _Mapping]] = ..., trailer: _Optional[_Union[WeightsTrailer, _Mapping]] = ...) -> None: ...
