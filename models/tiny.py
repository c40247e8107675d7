"""Tiny random LLaMA and Qwen2 models with a real tokenizer, for unit and integration tests.

Everything is derived from a seed: a byte-level BPE tokenizer trained on a fixed text (so token
ids are stable; the Qwen2 one splits text the way Qwen2's tokenizer does) and weights from
``torch.manual_seed``. Saved like any Hugging Face checkpoint, so every code path (architecture
check, stage loading, generation) runs on it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

_TRAINING_TEXT = (
    "The mayor plans the work. A polecat implements a bead with bd and gt commands. "
    "The witness monitors the rig; the deacon keeps the town clean. "
    "Use bd create, bd ready, bd close and gt sling instead of raw shell commands. "
    "What is the capital of France? Paris is the capital of France. 0123456789 "
)


def build_tokenizer(vocab_size: int = 384, *, split: str = "gpt2"):
    """A byte-level BPE trained on a fixed text.

    ``split``: how text is cut before the merges, ``"gpt2"`` (ByteLevel's own regex) or
    ``"qwen2"`` (Qwen2's regex and NFC, as a real Qwen2 ``tokenizer.json`` has them; transformers'
    ``Qwen2Tokenizer`` applies exactly these whatever the file says).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    if split == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif split == "qwen2":
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(f"unknown split {split!r}")
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )


def tiny_llama_config(
    *,
    num_layers: int = 6,
    vocab_size: int = 384,
    hidden: int = 64,
    tie_word_embeddings: bool = False,
):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=tie_word_embeddings,
        architectures=["LlamaForCausalLM"],
    )


def tiny_qwen2_config(
    *,
    num_layers: int = 6,
    vocab_size: int = 384,
    hidden: int = 64,
    tie_word_embeddings: bool = False,
):
    """The Qwen2 twin of :func:`tiny_llama_config` (same sizes; q/k/v carry biases)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        use_sliding_window=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=tie_word_embeddings,
        architectures=["Qwen2ForCausalLM"],
    )


def _save_tiny(model, tokenizer, out: Path) -> Path:
    with torch.no_grad():  # larger-than-default weights so logits are far from uniform
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
            elif name.endswith(".bias"):  # Qwen2's q/k/v biases start at zero: make them count
                param.normal_(0.0, 0.3)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(
    out: str | Path, *, seed: int = 0, num_layers: int = 6, tie_word_embeddings: bool = False
) -> Path:
    """Write a tiny random LLaMA checkpoint (config, safetensors, tokenizer) to ``out``."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        num_layers=num_layers, vocab_size=len(tokenizer), tie_word_embeddings=tie_word_embeddings
    )
    torch.manual_seed(seed)
    return _save_tiny(LlamaForCausalLM(config), tokenizer, Path(out))


def build_tiny_qwen2(
    out: str | Path, *, seed: int = 0, num_layers: int = 6, tie_word_embeddings: bool = False
) -> Path:
    """Write a tiny random Qwen2 checkpoint (config, safetensors, tokenizer) to ``out``."""
    from transformers import Qwen2ForCausalLM

    tokenizer = build_tokenizer(split="qwen2")
    config = tiny_qwen2_config(
        num_layers=num_layers, vocab_size=len(tokenizer), tie_word_embeddings=tie_word_embeddings
    )
    torch.manual_seed(seed)
    return _save_tiny(Qwen2ForCausalLM(config), tokenizer, Path(out))
