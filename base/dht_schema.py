"""The validators every DHT peer of node0 installs: owner signatures and the stage-record schema.

hivemind checks records with the validators a peer installed, when it is asked to store one and
when a ``get`` returns one. node0 installs two on every peer (:func:`base.dht.start_dht`):

- hivemind's ``RSASignatureValidator``: a record whose key or subkey carries
  ``[owner:<RSA public key>]`` must be signed by that key, over key, subkey, value and expiry.
  Stage records carry their owner's marker in the subkey, so only the owner writes, refreshes or
  overwrites its own record; a replayed old one loses to the newer expiry.
- hivemind's ``SchemaValidator`` over :data:`STAGES_KEY`: every subkey must carry an owner
  marker and every value must be a :class:`base.dht_records.StageRecord` with the exact types
  (no conversions), and the key can only hold such a dictionary (a plain value stored over it —
  the one way hivemind lets a peer drop someone else's subkeys — is refused).

hivemind 1.1.12's ``SchemaValidator`` takes a pydantic **v1** model (``pydantic.v1``) with strict
types; node0's records are pydantic v2. :func:`v1_schema_of` derives the v1 model from the v2
one field by field, so a field added to ``StageRecord`` is covered without touching this file
(a type it cannot map fails at import, loudly, rather than going unchecked).

Every peer must install the same signature validator: a peer without it cannot read a signed
value (hivemind leaves the signature suffix on, the value does not decode and its ``get``
waits until the timeout).
"""

from __future__ import annotations

import functools
import hashlib
import re
import types
import typing
from typing import Any, Literal

import multihash
import pydantic.v1 as v1
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey
from pydantic import BaseModel

from base.dht_records import STAGES_KEY, StageRecord

OWNER_RE = rb"\[owner:ssh-rsa [A-Za-z0-9+/=]+\]"
"""An owner marker as hivemind writes it (an RSA public key in OpenSSH form)."""

_SCALARS: dict[Any, Any] = {
    str: v1.StrictStr,
    int: v1.StrictInt,
    float: v1.StrictFloat,
    bool: v1.StrictBool,
}


def _strict(annotation: Any, where: str) -> Any:
    """The strict pydantic-v1 type for a pydantic-v2 field annotation."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return annotation
    if origin is list:
        return list[_strict(args[0], where)]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple[_strict(args[0], where), ...]
    if origin is dict:
        return dict[_strict(args[0], where), _strict(args[1], where)]
    if origin in (typing.Union, types.UnionType):
        members = [_strict(a, where) for a in args if a is not type(None)]
        strict = typing.Union[tuple(members)] if len(members) > 1 else members[0]  # noqa: UP007
        return typing.Optional[strict] if type(None) in args else strict  # noqa: UP007, UP045
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return v1_schema_of(annotation)
    raise TypeError(
        f"{where}: no strict DHT schema type for {annotation!r}; extend base/dht_schema.py"
    )


def v1_schema_of(model: type[BaseModel]) -> type[v1.BaseModel]:
    """A strict pydantic-v1 model with ``model``'s fields, defaults and ``extra=forbid``."""

    class Config:
        extra = v1.Extra.forbid

    fields = {}
    for name, info in model.model_fields.items():
        strict = _strict(info.annotation, f"{model.__name__}.{name}")
        default = ... if info.is_required() else info.get_default(call_default_factory=True)
        fields[name] = (strict, default)
    return v1.create_model(f"{model.__name__}V1", __config__=Config, **fields)


OwnedSubkey = v1.constr(strict=True, regex=r"^.*" + OWNER_RE.decode() + r"$")
"""A stage record's subkey: anything, ending with its owner's marker."""


def stages_schema() -> type[v1.BaseModel]:
    """The v1 model ``SchemaValidator`` checks :data:`STAGES_KEY` with."""
    record = v1_schema_of(StageRecord)
    return v1.create_model("StagesKeySchema", **{STAGES_KEY: (dict[OwnedSubkey, record], None)})


def node0_validators(private_key: RSAPrivateKey) -> list[RecordValidatorBase]:
    """The record validators of a node0 DHT peer that signs its records with ``private_key``."""
    return [RSASignatureValidator(private_key), SchemaValidator(stages_schema())]


def owner_marker(private_key: RSAPrivateKey) -> str:
    """``[owner:<public key>]``: what a subkey carries to be writable by ``private_key`` alone."""
    marker = RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(
        b"_key_", private_key.get_public_key().to_bytes()
    )
    return marker.decode()


def libp2p_identity(private_key: RSAPrivateKey) -> bytes:
    """``private_key`` as a libp2p identity (what ``p2pd -id`` reads): its peer id is
    :func:`peer_id_of_owner` of the key's owner marker."""
    return crypto_pb2.PrivateKey(
        key_type=crypto_pb2.KeyType.RSA, data=private_key.to_bytes()
    ).SerializeToString()


_MARKER_RE = re.compile(r"\[owner:(ssh-rsa [A-Za-z0-9+/=]+)\]$")


@functools.lru_cache(maxsize=4096)
def peer_id_of_owner(subkey: str) -> str | None:
    """The libp2p peer id (base58) of the RSA key in ``subkey``'s trailing owner marker.

    libp2p derives an RSA peer's id as the sha2-256 multihash of its public key (DER
    SubjectPublicKeyInfo in a ``crypto_pb2.PublicKey``), as hivemind's ``PeerID.from_identity``
    does. None when the subkey carries no marker or the key does not parse.
    """
    match = _MARKER_RE.search(subkey)
    if match is None:
        return None
    try:
        public_key = serialization.load_ssh_public_key(match.group(1).encode())
    except ValueError:
        return None
    if not isinstance(public_key, rsa.RSAPublicKey):
        return None
    encoded = crypto_pb2.PublicKey(
        key_type=crypto_pb2.RSA,
        data=public_key.public_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
    ).SerializeToString()
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return PeerID(digest).to_base58()
