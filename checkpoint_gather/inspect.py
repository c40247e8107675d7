"""``node0 inspect``: what a checkpoint (HF directory or GGUF file) declares, holds and lacks.

Reads metadata only (config.json, safetensors headers, GGUF key/values and tensor infos), never
tensor data. The report has the declared architecture and model type, the shapes, whether the
embeddings are tied, the tokenizer, provenance records, the result of the architecture check a
stage runs before loading, and a quality score: 100 minus a penalty per finding in
:data:`PENALTIES`, each finding listed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from base.errors import CheckpointError
from models import LM_HEAD, check_architecture, families, family_for_gguf, index_checkpoint

PROVENANCE_FILES = ("node0_asset.json", "node0_export.json", "node0_stamp.json", "manifest.json")

# finding -> points taken off the score
PENALTIES: dict[str, int] = {
    "architecture": 40,  # declared architecture contradicts the tensors (will not load)
    "tokenizer": 20,  # no tokenizer shipped
    "tokenizer_vocab": 10,  # tokenizer does not fit the model's vocabulary
    "metadata": 10,  # required <arch>.* GGUF keys absent
    "generation_config": 10,  # no generation_config.json
    "provenance": 10,  # no record of where it came from
    "chat_template": 5,  # no chat template (instruct models need it)
}


@dataclass
class InspectReport:
    """Everything ``node0 inspect`` says about one checkpoint."""

    path: str
    format: str  # "huggingface" or "gguf"
    architecture: str | None = None
    model_type: str | None = None
    shapes: dict[str, Any] = field(default_factory=dict)
    tied_embeddings: bool | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    generation_config: bool | None = None
    chat_template: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    architecture_check: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    score: int = 100

    def find(self, kind: str, message: str) -> None:
        self.findings.append({"kind": kind, "message": message, "penalty": PENALTIES[kind]})
        self.score = max(0, 100 - sum(f["penalty"] for f in self.findings))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        s = self.shapes
        lines = [
            f"{self.path} ({self.format})",
            f"  architecture: {self.architecture}   model_type: {self.model_type}",
            f"  shapes: {s.get('layers')} layers, hidden {s.get('hidden')}, intermediate "
            f"{s.get('intermediate')}, heads {s.get('heads')} (kv {s.get('kv_heads')}, head_dim "
            f"{s.get('head_dim')}), vocab {s.get('vocab')}, context {s.get('context')}",
            f"  tied embeddings: {self.tied_embeddings}",
            f"  tokenizer: {'present' if self.tokenizer.get('present') else 'MISSING'} "
            + json.dumps({k: v for k, v in self.tokenizer.items() if k != "present"}),
            f"  generation config: {self.generation_config}   chat template: {self.chat_template}",
            f"  provenance: {', '.join(self.provenance) or 'none'}",
            "  architecture check: "
            + (
                "ok"
                if self.architecture_check.get("ok")
                else "FAILED: " + self.architecture_check.get("message", "")
            ),
            f"  quality score: {self.score}/100",
        ]
        lines += [f"    -{f['penalty']}: {f['message']}" for f in self.findings]
        return "\n".join(lines)


def inspect_checkpoint(path: str | Path) -> InspectReport:
    """Inspect an HF checkpoint directory or a ``.gguf`` file."""
    path = Path(path)
    is_job_output = (path / "manifest.json").is_file() and not (path / "config.json").is_file()
    if path.is_dir() and is_job_output:
        inside = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        raise CheckpointError(
            f"{path} is an export job's output ({', '.join(inside)})",
            hint=f"inspect one of the checkpoints in it, e.g. node0 inspect {path / 'hf'}",
        )
    if path.is_dir():
        return _inspect_hf(path)
    if path.is_file() and _is_gguf(path):
        return _inspect_gguf(path)
    raise CheckpointError(f"{path} is neither a Hugging Face checkpoint directory nor a GGUF file")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def _shapes(cfg: dict[str, Any]) -> dict[str, Any]:
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    return {
        "layers": cfg.get("num_hidden_layers"),
        "hidden": hidden,
        "intermediate": cfg.get("intermediate_size"),
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": cfg.get("head_dim") or (hidden // heads if hidden and heads else None),
        "vocab": cfg.get("vocab_size"),
        "context": cfg.get("max_position_embeddings"),
    }


def _hf_tokenizer(path: Path) -> dict[str, Any]:
    from checkpoint_gather.hf_export import tokenizer_files

    files = [p.name for p in tokenizer_files(path)]
    info: dict[str, Any] = {
        "present": any(n in files for n in ("tokenizer.json", "tokenizer.model", "vocab.json")),
        "files": files,
    }
    if "tokenizer.json" in files:
        from tokenizers import Tokenizer

        info["vocab"] = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(
            with_added_tokens=True
        )
    return info


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def _inspect_hf(path: Path) -> InspectReport:
    from transformers import AutoConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    raw = json.loads(config_file.read_text())
    report = InspectReport(path=str(path), format="huggingface")
    report.architecture = ",".join(raw.get("architectures") or []) or None
    report.model_type = raw.get("model_type")
    report.shapes = _shapes(raw)
    index = index_checkpoint(path)
    report.tied_embeddings = bool(raw.get("tie_word_embeddings", False))
    report.shapes["tensors"] = len(index.shapes)
    report.shapes["lm_head_tensor"] = LM_HEAD in index.shapes
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        check_architecture(config, index)
        report.architecture_check = {"ok": True}
    except CheckpointError as exc:
        report.architecture_check = {"ok": False, "message": str(exc)}
    except Exception as exc:  # an unknown model_type makes AutoConfig itself fail
        report.architecture_check = {"ok": False, "message": f"config.json does not parse: {exc}"}
    if not report.architecture_check["ok"]:
        report.find("architecture", "declared architecture/config contradicts the tensors")
    report.tokenizer = _hf_tokenizer(path)
    report.generation_config = (path / "generation_config.json").is_file()
    report.chat_template = _has_chat_template(path)
    report.provenance = {
        name: json.loads((path / name).read_text())
        for name in PROVENANCE_FILES
        if (path / name).is_file()
    }
    for record in report.provenance.values():
        record.pop("tensors", None)  # per-tensor digests: in the file, too long for a report
    _common_findings(report)
    if not report.generation_config:
        report.find("generation_config", "no generation_config.json")
    return report


def _common_findings(report: InspectReport) -> None:
    if not report.tokenizer.get("present"):
        report.find("tokenizer", "no tokenizer")
    elif (
        report.tokenizer.get("vocab")
        and report.shapes.get("vocab")
        and report.tokenizer["vocab"] > report.shapes["vocab"]
    ):
        report.find(
            "tokenizer_vocab",
            f"tokenizer has {report.tokenizer['vocab']} tokens, the model {report.shapes['vocab']}",
        )
    if not report.provenance:
        report.find("provenance", "no provenance record")
    if not report.chat_template:
        report.find("chat_template", "no chat template")


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _inspect_gguf(path: Path) -> InspectReport:
    from gguf import GGUFReader

    from checkpoint_gather.gguf_export import PROVENANCE_KEY

    reader = GGUFReader(str(path))
    report = InspectReport(path=str(path), format="gguf")
    arch = _field_value(reader, "general.architecture")
    report.model_type = arch
    family = family_for_gguf(arch)
    report.architecture = family.architecture if family else arch
    cfg: dict[str, Any] = {}
    absent = []
    for meta in family.gguf.metadata if family else ():
        value = _field_value(reader, f"{arch}.{meta.key}")
        if value is None:
            absent.append(f"{arch}.{meta.key}")
        else:
            cfg[meta.hf_name] = value
    if "vocab_size" not in cfg and "tokenizer.ggml.tokens" in reader.fields:
        cfg["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
        absent = [a for a in absent if not a.endswith(".vocab_size")]
    report.shapes = _shapes(cfg)
    tensors = {
        t.name: (tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name)
        for t in reader.tensors
    }
    report.shapes["tensors"] = len(tensors)
    report.shapes["tensor_types"] = sorted({kind for _, kind in tensors.values()})
    report.tied_embeddings = "output.weight" not in tensors
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    report.tokenizer = {
        "present": "tokenizer.ggml.model" in reader.fields and tokens is not None,
        "model": _field_value(reader, "tokenizer.ggml.model"),
        "pre": _field_value(reader, "tokenizer.ggml.pre"),
        "vocab": len(tokens.data) if tokens is not None else None,
    }
    report.chat_template = "tokenizer.chat_template" in reader.fields
    general = {
        k: _field_value(reader, k)
        for k in ("general.name", "general.license", "general.organization", "general.file_type")
        if k in reader.fields
    }
    if PROVENANCE_KEY in reader.fields:
        report.provenance[PROVENANCE_KEY] = json.loads(_field_value(reader, PROVENANCE_KEY))
    elif "general.name" in general or "general.organization" in general:
        report.provenance["general"] = general
    report.architecture_check = _check_gguf(family, arch, cfg, tensors, report.tied_embeddings)
    if not report.architecture_check["ok"]:
        report.find(
            "architecture",
            f"tensors or metadata contradict a llama.cpp {family.display_name}"
            if family
            else f"no supported family has GGUF architecture {arch!r}",
        )
    if absent:
        report.find("metadata", f"required metadata absent: {absent}")
    _common_findings(report)
    if (
        report.tokenizer.get("vocab")
        and report.shapes.get("vocab")
        and report.tokenizer["vocab"] != report.shapes["vocab"]
        and not any(f["kind"] == "tokenizer_vocab" for f in report.findings)
    ):
        report.find(
            "tokenizer_vocab",
            f"tokenizer lists {report.tokenizer['vocab']} tokens, "
            f"the model has {report.shapes['vocab']}",
        )
    return report


def _check_gguf(
    family, arch: str | None, cfg: dict[str, Any], tensors: dict[str, tuple], tied: bool
) -> dict[str, Any]:
    """The GGUF counterpart of the safetensors architecture check (``family`` from
    ``general.architecture``; None when no registered family writes it)."""
    if family is None:
        known = ", ".join(repr(f.gguf.arch) for f in families())
        return {
            "ok": False,
            "message": f"general.architecture is {arch!r}; node0 reads {known} only",
        }
    unknown = []
    hf_shapes = {}
    for name, (shape, _) in tensors.items():
        try:
            hf_shapes[family.gguf.gguf_to_hf_name(name)] = shape
        except KeyError:
            unknown.append(name)
    if unknown:
        return {
            "ok": False,
            "message": f"tensors that are not {family.display_name}'s: {unknown[:5]}",
        }
    needed = {
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    }
    if not needed <= set(cfg):
        return {"ok": False, "message": f"metadata lacks {sorted(needed - set(cfg))}"}
    config = SimpleNamespace(**{"num_key_value_heads": cfg["num_attention_heads"], **cfg})
    expected = family.expected_shapes(
        config, range(cfg["num_hidden_layers"]), first=True, last=True
    )
    if tied:
        expected.pop(LM_HEAD)
    missing = sorted(set(expected) - set(hf_shapes))
    extra = sorted(set(hf_shapes) - set(expected))
    if missing or extra:
        return {
            "ok": False,
            "message": f"{len(missing)} tensors missing (e.g. {missing[:2]}), "
            f"{len(extra)} beyond block_count (e.g. {extra[:2]})",
        }
    wrong = [(n, hf_shapes[n], s) for n, s in expected.items() if tuple(hf_shapes[n]) != s]
    if wrong:
        name, got, want = wrong[0]
        return {"ok": False, "message": f"{name}: shape {list(got)}, metadata implies {list(want)}"}
    return {"ok": True}
