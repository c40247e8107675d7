"""Every gRPC call carries a credential and a fresh proof; the daemon checks both, then the role.

Client side (:class:`CallSigner`): each call's metadata holds

- ``node0-credential``: the signed credential (:meth:`SignedCredential.wire`);
- ``node0-proof``: ``<unix time>:<signature>``, the peer key's RSA signature over
  ``node0-call/1|<swarm id>|<credential id>|<time>``. A proof is re-signed every
  ``PROOF_REUSE_S`` (an RSA signature costs ~1-2 ms here; calls in between reuse it).

Server side (:class:`CredentialInterceptor`, installed where the server is built): a call to a
method outside :data:`security.roles.OPEN` is refused unless the credential verifies against the
swarm authority (``bad_credential``: forged, altered, another swarm's), is current
(``credential_expired``), not revoked (``credential_revoked``), the proof is the key's and at
most ``PROOF_WINDOW_S`` old (``bad_credential``), and the role may call the method
(``role_forbids``). Refusals are UNAUTHENTICATED or PERMISSION_DENIED with the reason in the
``node0-reason`` trailer (:mod:`base.refusals`), and one log line on the daemon naming the
method, the reason and who called. A Step stream is checked once, when it opens: a decode step
pays nothing.

What it does not do: the transport stays plain TCP, so an on-path attacker can read activations
and replay a captured proof within its window. Mutual TLS with authority-issued certificates
would close both (shared notes: +56 us per 8 KB step); it is not built yet.
"""

from __future__ import annotations

import base64
import logging
import threading
import time

import grpc

from base.refusals import METADATA_KEY, Reason
from security.credentials import CredentialFile, CredentialRefused, Role
from security.roles import OPEN, may_call
from security.trust import SwarmTrust

log = logging.getLogger(__name__)

CREDENTIAL_KEY = "node0-credential"
PROOF_KEY = "node0-proof"
PROOF_REUSE_S = 30.0
PROOF_WINDOW_S = 120.0


def _proof_message(swarm_id: str, credential_id: str, stamp: int) -> bytes:
    return f"node0-call/1|{swarm_id}|{credential_id}|{stamp}".encode()


class CallSigner:
    """The metadata a peer holding ``credential`` attaches to each call."""

    def __init__(self, credential: CredentialFile):
        self.credential = credential
        self._wire = credential.signed.wire()
        self._key = credential.rsa_private_key()
        self._lock = threading.Lock()
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._signed_at = float("-inf")

    def metadata(self) -> tuple[tuple[str, str], ...]:
        now = time.time()
        if now - self._signed_at < PROOF_REUSE_S:
            return self._metadata
        with self._lock:
            if now - self._signed_at >= PROOF_REUSE_S:
                cred = self.credential.credential
                stamp = int(now)
                signature = self._key.sign(_proof_message(cred.swarm_id, cred.credential_id, stamp))
                self._metadata = (
                    (CREDENTIAL_KEY, self._wire),
                    (PROOF_KEY, f"{stamp}:{signature.decode()}"),
                )
                self._signed_at = now
        return self._metadata


class CallRefused(Exception):
    def __init__(self, reason: Reason, message: str, who: str = "anonymous"):
        super().__init__(message)
        self.reason = reason
        self.who = who


class CallVerifier:
    """Checks one call's metadata: credential, proof, role."""

    def __init__(self, trust: SwarmTrust):
        self.trust = trust
        self._proofs: dict[tuple[str, str], float] = {}  # verified proofs -> their stamp

    def check(self, method: str, metadata) -> Role | None:
        """The caller's role (None for an open method); raises :class:`CallRefused`."""
        if method in OPEN:
            return None
        wire = proof = None
        for key, value in metadata or ():
            if key == CREDENTIAL_KEY:
                wire = value
            elif key == PROOF_KEY:
                proof = value
        if not wire or not proof:
            raise CallRefused(Reason.NO_CREDENTIAL, f"{method} needs a swarm credential")
        try:
            credential, signed = self.trust.check(wire)
        except CredentialRefused as exc:
            raise CallRefused(exc.reason, str(exc)) from exc
        who = f"{credential.name} ({credential.role}, {credential.credential_id})"
        now = time.time()
        stamp = self._proofs.get((wire, proof))
        if stamp is None:
            try:
                stamp_text, signature = proof.split(":", 1)
                stamp = int(stamp_text)
            except ValueError as exc:
                raise CallRefused(Reason.BAD_CREDENTIAL, "malformed proof", who) from exc
            message = _proof_message(credential.swarm_id, credential.credential_id, stamp)
            if not signed.peer_public_key().verify(message, signature.encode()):
                raise CallRefused(
                    Reason.BAD_CREDENTIAL, "proof not signed by the credential's key", who
                )
            if len(self._proofs) > 4096:
                self._proofs.clear()
            self._proofs[(wire, proof)] = stamp
        if abs(now - stamp) > PROOF_WINDOW_S:
            raise CallRefused(
                Reason.BAD_CREDENTIAL, f"stale proof ({now - stamp:.0f} s old; clocks?)", who
            )
        if not may_call(credential.role, method):
            raise CallRefused(
                Reason.ROLE_FORBIDS,
                f"role {credential.role} may not call {method.rsplit('/', 1)[-1]}",
                who,
            )
        return credential.role


def _refusing_handler(handler: grpc.RpcMethodHandler, refusal: CallRefused):
    def refuse(_request_or_iterator, context):
        context.set_trailing_metadata(((METADATA_KEY, refusal.reason.value),))
        context.abort(refusal.reason.status, f"{refusal.reason.value}: {refusal}")

    kwargs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class CredentialInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a credential the role table admits; logs each refusal."""

    def __init__(self, trust: SwarmTrust):
        self.verifier = CallVerifier(trust)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        try:
            self.verifier.check(method, handler_call_details.invocation_metadata)
        except CallRefused as refusal:
            log.warning(
                "refused %s from %s: %s (%s)", method, refusal.who, refusal.reason.value, refusal
            )
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            return _refusing_handler(handler, refusal)
        return continuation(handler_call_details)


# -- client side ----------------------------------------------------------------------------------


class _Details:
    """A ClientCallDetails with our metadata added (grpc's namedtuple-like contract)."""

    def __init__(self, details, metadata):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


def _with_metadata(details, signer: CallSigner):
    return _Details(details, tuple(details.metadata or ()) + signer.metadata())


class SyncClientAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, signer: CallSigner):
        self.signer = signer

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_with_metadata(details, self.signer), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_with_metadata(details, self.signer), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(_with_metadata(details, self.signer), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(_with_metadata(details, self.signer), request_iterator)


def _aio_details(details, signer: CallSigner):
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        tuple(details.metadata or ()) + signer.metadata(),
        details.credentials,
        details.wait_for_ready,
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, signer):
        self.signer = signer

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_aio_details(details, self.signer), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, signer):
        self.signer = signer

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_aio_details(details, self.signer), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, signer):
        self.signer = signer

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_aio_details(details, self.signer), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, signer):
        self.signer = signer

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(_aio_details(details, self.signer), request_iterator)


def aio_interceptors(signer: CallSigner | None) -> list:
    """Interceptors for ``grpc.aio`` channels (none without a credential)."""
    if signer is None:
        return []
    return [
        cls(signer) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]


def secure_channel(channel: grpc.Channel, signer: CallSigner | None) -> grpc.Channel:
    """A sync channel whose calls carry ``signer``'s metadata (``channel`` itself without one)."""
    if signer is None:
        return channel
    return grpc.intercept_channel(channel, SyncClientAuth(signer))


def token_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
