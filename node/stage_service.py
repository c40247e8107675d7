"""The gRPC service of a daemon: Info, OpenSession, Step (bidirectional stream), CloseSession.

Handlers validate every message (tensor dtype/shape/bytes, positions, limits) and refuse a bad
request through :func:`pipeline_stages.errors.abort_call`: a status code and, in the trailing
metadata, the machine-readable :class:`base.refusals.Reason` clients branch on — so one bad
client never disturbs the daemon. Messages larger than ``max_message_bytes`` are refused by
gRPC itself with RESOURCE_EXHAUSTED (no reason).
"""

from __future__ import annotations

import logging
from concurrent import futures
from importlib import metadata

import grpc

from base.precision import dtype_name
from base.sampler import SamplingParams
from lora.config import AveragingSettings, LoraSettings, OptimizerSettings
from pipeline_stages.compute_thread import pin_to_one_thread
from pipeline_stages.errors import BadJobSettings, InvalidInput, abort_call
from pipeline_stages.executor import StageExecutor
from pipeline_stages.training import JobSettings
from proto import node0_pb2, node0_pb2_grpc
from proto.tensor_chunks import TensorAssembler, split_tensor
from proto.tensor_codec import decode, encode

log = logging.getLogger(__name__)


def _sampling(request: node0_pb2.StepRequest) -> SamplingParams | None:
    if not request.sample:
        return None
    s = request.sampling
    try:  # proto3 has no "unset": top_p 0 means the default (1, off)
        return SamplingParams(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p or 1.0, seed=s.seed
        )
    except ValueError as exc:
        raise InvalidInput(f"bad sampling parameters: {exc}") from exc


class StageService(node0_pb2_grpc.StageServicer):
    def __init__(
        self,
        executor: StageExecutor,
        *,
        peer_id: str,
        max_message_bytes: int,
        max_training_bytes: int = 512 * 1024 * 1024,
    ):
        self.executor = executor
        self.peer_id = peer_id
        self.max_message_bytes = max_message_bytes
        self.max_training_bytes = max_training_bytes

    def Info(self, request, context):  # noqa: N802 (gRPC method name)
        config = self.executor.config
        stats = self.executor.stats()
        return node0_pb2.InfoResponse(
            node0_version=metadata.version("node0"),
            peer_id=self.peer_id,
            stages=[
                node0_pb2.StageInfo(
                    model=self.executor.model_name,
                    start=start,
                    end=end,
                    num_layers=config.num_hidden_layers,
                    hidden_size=config.hidden_size,
                    vocab_size=config.vocab_size,
                    max_position_embeddings=config.max_position_embeddings,
                    dtype=dtype_name(self.executor.dtype),
                    device=str(self.executor.device),
                    accepts=self.executor.accepts,
                )
                for start, end in sorted(self.executor.stages)
            ],
            active_sessions=stats["active_sessions"],
            max_sessions=self.executor.sessions.max_sessions,
            reserved_cache_tokens=stats["reserved_cache_tokens"],
            max_cache_tokens=self.executor.sessions.max_cache_tokens,
            max_message_bytes=self.max_message_bytes,
            batch_size=stats["batch_size"],
            peak_batch_size=stats["peak_batch_size"],
            queue_depth=stats["queue_depth"],
            step_ms=stats["step_ms"],
            tokens_per_s=stats["tokens_per_s"],
        )

    def OpenSession(self, request, context):  # noqa: N802
        try:
            session = self.executor.open_session(
                request.model,
                request.start,
                request.end,
                request.max_length,
                tuple(request.adapters),
            )
        except Exception as exc:
            abort_call(context, exc, "OpenSession")
        log.info(
            "session %s opened on [%d, %d)", session.session_id[:8], request.start, request.end
        )
        return node0_pb2.OpenSessionResponse(session_id=session.session_id)

    def Step(self, request_iterator, context):  # noqa: N802
        session_id = None
        for request in request_iterator:
            try:
                if session_id is None:
                    session_id = request.session_id
                elif request.session_id != session_id:
                    raise InvalidInput("one Step stream serves one session")
                result = self.executor.step(
                    request.session_id,
                    request.position,
                    decode(request.input),
                    sampling=_sampling(request),
                    return_logits=request.return_logits,
                )
            except Exception as exc:
                abort_call(context, exc, "Step")
            response = node0_pb2.StepResponse(cache_length=result.cache_length)
            if result.output is not None:
                response.output.CopyFrom(encode(result.output))
            if result.token is not None:
                response.token = result.token
            if result.logits is not None:
                response.logits.CopyFrom(encode(result.logits))
            yield response

    def CloseSession(self, request, context):  # noqa: N802
        closed = self.executor.sessions.close(request.session_id)
        return node0_pb2.CloseSessionResponse(closed=closed)

    # -- training ------------------------------------------------------------------------

    def OpenTrainingJob(self, request, context):  # noqa: N802
        try:
            settings = _job_settings(request)
            job = self.executor.open_training_job(
                request.job_id,
                request.start,
                request.end,
                settings,
                model=request.model or None,
                trainer_id=request.trainer_id,
            )
        except Exception as exc:
            abort_call(context, exc, "OpenTrainingJob")
        lora = job.settings.lora
        return node0_pb2.TrainingJobResponse(
            trainable_parameters=sum(p.numel() for p in job.params),
            step=job.guard.applied,
            resumed_from=job.resumed_from,
            fingerprint=lora.fingerprint() if lora else "",
        )

    def _receive(self, request_iterator):
        header, assembler = None, TensorAssembler(self.max_training_bytes)
        for message in request_iterator:
            if header is None and message.HasField("header"):
                header = message.header
            if message.HasField("chunk"):
                assembler.add(message.chunk)
        if header is None:
            raise InvalidInput("training call without a header")
        job = self.executor.training_job(header.job_id, header.start, header.end)
        return header, job, assembler.tensors()

    def Forward(self, request_iterator, context):  # noqa: N802
        try:
            header, job, tensors = self._receive(request_iterator)
            result = self.executor.train_forward(
                job,
                header.microbatch_id,
                tensors,
                header.loss_scale or 1.0,
                evaluate=header.evaluate,
                sequence_logprobs=header.sequence_logprobs,
                reference=header.reference,
                reference_adapter=header.reference_adapter,
            )
        except Exception as exc:
            abort_call(context, exc, "Forward")
        if "output" in result:
            for chunk in split_tensor("output", result["output"]):
                yield node0_pb2.TrainMessage(chunk=chunk)
        else:
            yield node0_pb2.TrainMessage(
                loss_sum=result["loss_sum"], loss_tokens=result["loss_tokens"]
            )

    def Backward(self, request_iterator, context):  # noqa: N802
        try:
            header, job, tensors = self._receive(request_iterator)
            grad = self.executor.train_backward(job, header.microbatch_id, tensors.get("grad"))
        except Exception as exc:
            abort_call(context, exc, "Backward")
        if grad is None:
            yield node0_pb2.TrainMessage()
            return
        for chunk in split_tensor("grad", grad):
            yield node0_pb2.TrainMessage(chunk=chunk)

    def OptimizerStep(self, request, context):  # noqa: N802
        try:
            job = self.executor.training_job(
                request.job_id, request.start, request.end, request.trainer_id
            )
            report = self.executor.optimizer_step(
                job,
                samples=request.samples or 1.0,
                discard=request.discard,
                checkpoint=request.checkpoint,
                trainer_step=request.step,
            )
        except Exception as exc:
            abort_call(context, exc, "OptimizerStep")
        guard = job.guard
        if report is None:  # discarded
            return node0_pb2.OptimizerStepResponse(
                applied=False,
                reason="discarded",
                step=guard.applied,
                skipped=guard.skipped,
                group_size=1,
            )
        outcome, averaging = report.outcome, report.averaging
        return node0_pb2.OptimizerStepResponse(
            applied=outcome.applied,
            reason=outcome.reason,
            grad_norm=outcome.grad_norm,
            step=outcome.applied_total,
            skipped=outcome.skipped_total,
            group_size=averaging.group_size if averaging else 1,
            averaging=_describe(averaging, report.diloco),
            checkpoint_path=str(report.checkpoint or ""),
        )


def _job_settings(request: node0_pb2.TrainingJobRequest) -> JobSettings:
    """The job's settings from the request: the settings models' JSON, validated by pydantic
    (an empty field: that model's defaults, defined once in :mod:`lora.config`)."""
    try:
        lora = LoraSettings.model_validate_json(request.lora_json) if request.lora_json else None
        optimizer = OptimizerSettings.model_validate_json(request.optimizer_json or "{}")
        averaging = AveragingSettings.model_validate_json(request.averaging_json or "{}")
    except ValueError as exc:
        raise BadJobSettings(f"bad LoRA/optimizer/averaging settings: {exc}") from exc
    settings = JobSettings(
        trainable=request.trainable or "all",
        optimizer=optimizer,
        lora=lora,
        replicas=max(1, request.replicas),
        averaging=averaging,
        checkpoint_every=max(0, request.checkpoint_every),
    )
    settings.adapter  # noqa: B018 (validates the trainable string)
    return settings


def _describe(report, diloco: str = "") -> str:
    """One phrase for the trainer's progress line: what the averaging round did (DiLoCo: which
    local step, or the outer step's round)."""
    if report is None:
        return f"diloco {diloco}: local, no averaging" if diloco else "local (no replicas)"
    if diloco:
        return f"diloco {diloco}: " + _describe(report)
    if report.averaged:
        text = f"averaged with {report.group_size - 1} replica(s) in {report.seconds:.1f}s"
    else:
        text = f"local: no averaging group ({report.error or 'timeout'})"
    if report.partial_detected:
        text += f", partial round redone ({report.attempts} attempts)"
    if report.resynced:
        text += ", state resynced from the replica furthest along"
    elif report.diverged:
        text += f", {report.diverged} replica(s) resynced to ours"
    if not report.consistent:
        text += ", REPLICAS MAY DISAGREE until the next shared round"
    return text


def start_grpc_server(
    service: StageService,
    host: str,
    port: int,
    *,
    max_workers: int,
    extra_servicers=(),
    interceptors=(),
) -> tuple[grpc.Server, int]:
    """Start the server; returns it and the bound port (``port=0`` picks a free one).

    ``interceptors``: server interceptors every call passes first (a private swarm's credential
    check, :class:`security.grpc_auth.CredentialInterceptor`).

    ``extra_servicers``: objects whose ``add_to_server(server)`` registers another service
    (e.g. ``checkpoint_gather.weights_service.WeightsService``) on the same port.
    """
    limit = service.max_message_bytes
    server = grpc.server(
        # handlers decode, validate and wait; the compute runs on the daemon's compute thread
        futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="grpc", initializer=pin_to_one_thread
        ),
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    node0_pb2_grpc.add_StageServicer_to_server(service, server)
    for servicer in extra_servicers:
        servicer.add_to_server(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {host}:{port}")
    server.start()
    return server, bound
