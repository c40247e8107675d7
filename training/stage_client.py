"""gRPC client for the training calls of one stage (OpenTrainingJob, Forward, Backward,
OptimizerStep). Tensors stream in chunks; every call is bounded by a timeout."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import torch

from lora.config import AveragingSettings, LoraSettings, OptimizerSettings
from proto import node0_pb2, node0_pb2_grpc
from proto.channels import channel_options
from proto.tensor_chunks import TensorAssembler, split_tensor
from security.active import call_signer
from security.credentials import Role
from security.grpc_auth import secure_channel


class StageTrainClient:
    def __init__(
        self,
        endpoint: str,
        *,
        job_id: str,
        start: int,
        end: int,
        timeout: float = 300.0,
        max_bytes: int = 512 * 1024 * 1024,
        trainer_id: str = "",
        peer_id: str = "",
    ):
        self.endpoint = endpoint
        self.peer_id = peer_id
        self.job_id, self.start, self.end = job_id, start, end
        self.trainer_id = trainer_id
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._channel = secure_channel(
            grpc.insecure_channel(endpoint, options=channel_options(64 << 20)),
            call_signer(Role.TRAINER),
        )
        self._stub = node0_pb2_grpc.StageStub(self._channel)

    def open_job(
        self,
        *,
        trainable: str = "all",
        optimizer: OptimizerSettings | None = None,
        model: str = "",
        lora: LoraSettings | None = None,
        replicas: int = 1,
        averaging: AveragingSettings | None = None,
        checkpoint_every: int = 0,
    ) -> node0_pb2.TrainingJobResponse:
        """Open (or rejoin) the job; ``None`` settings: the defaults of their model (the stage
        creates no adapter without ``lora``)."""
        return self._stub.OpenTrainingJob(
            node0_pb2.TrainingJobRequest(
                job_id=self.job_id,
                start=self.start,
                end=self.end,
                trainable=trainable,
                optimizer_json=(optimizer or OptimizerSettings()).model_dump_json(),
                model=model,
                trainer_id=self.trainer_id,
                lora_json=lora.model_dump_json() if lora is not None else "",
                replicas=replicas,
                averaging_json=(averaging or AveragingSettings()).model_dump_json(),
                checkpoint_every=checkpoint_every,
            ),
            timeout=self.timeout,
        )

    def _messages(
        self,
        microbatch_id: str,
        tensors: dict[str, torch.Tensor],
        loss_scale: float,
        evaluate: bool = False,
        **dpo,
    ) -> Iterator[node0_pb2.TrainMessage]:
        yield node0_pb2.TrainMessage(
            header=node0_pb2.TrainHeader(
                job_id=self.job_id,
                microbatch_id=microbatch_id,
                start=self.start,
                end=self.end,
                loss_scale=loss_scale,
                evaluate=evaluate,
                **dpo,
            )
        )
        for name, tensor in tensors.items():
            for chunk in split_tensor(name, tensor):
                yield node0_pb2.TrainMessage(chunk=chunk)

    def _collect(self, responses) -> tuple[dict[str, torch.Tensor], node0_pb2.TrainMessage]:
        assembler, last = TensorAssembler(self.max_bytes), None
        for message in responses:
            last = message
            if message.HasField("chunk"):
                assembler.add(message.chunk)
        return assembler.tensors(), last

    def forward(
        self,
        microbatch_id: str,
        tensors: dict[str, torch.Tensor],
        loss_scale: float = 1.0,
        *,
        evaluate: bool = False,
        sequence_logprobs: bool = False,
        reference: bool = False,
        reference_adapter: str = "",
    ) -> tuple[torch.Tensor | None, float, int]:
        """Returns (output hidden states | None, loss_sum, loss_tokens).

        ``evaluate``: no gradient, nothing kept on the stage (held-out loss).
        ``sequence_logprobs`` (DPO): the last stage's output is each row's summed log-prob of
        its labelled tokens ``(batch,)``; ``reference`` (with ``evaluate``): computed with
        adapters off, or with ``reference_adapter`` alone."""
        dpo = dict(
            sequence_logprobs=sequence_logprobs,
            reference=reference,
            reference_adapter=reference_adapter,
        )
        out, last = self._collect(
            self._stub.Forward(
                self._messages(microbatch_id, tensors, loss_scale, evaluate, **dpo),
                timeout=self.timeout,
            )
        )
        return out.get("output"), last.loss_sum, last.loss_tokens

    def backward(self, microbatch_id: str, grad: torch.Tensor | None) -> torch.Tensor | None:
        tensors = {"grad": grad} if grad is not None else {}
        out, _ = self._collect(
            self._stub.Backward(self._messages(microbatch_id, tensors, 1.0), timeout=self.timeout)
        )
        return out.get("grad")

    def optimizer_step(
        self, step: int, *, samples: float = 1.0, discard: bool = False, checkpoint: bool = False
    ) -> node0_pb2.OptimizerStepResponse:
        return self._stub.OptimizerStep(
            node0_pb2.OptimizerStepRequest(
                job_id=self.job_id,
                start=self.start,
                end=self.end,
                step=step,
                samples=samples,
                discard=discard,
                checkpoint=checkpoint,
                trainer_id=self.trainer_id,
            ),
            timeout=self.timeout,
        )

    def close(self) -> None:
        self._channel.close()
