"""A tiny random LLaMA with a real tokenizer, for unit and integration tests.

Everything is derived from a seed: a byte-level BPE tokenizer trained on a fixed text (so token
ids are stable) and weights from ``torch.manual_seed``. Saved like any Hugging Face checkpoint,
so every code path (architecture check, stage loading, generation) runs on it unchanged.
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


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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


def build_tiny_llama(
    out: str | Path, *, seed: int = 0, num_layers: int = 6, tie_word_embeddings: bool = False
) -> Path:
    """Write a tiny random LLaMA checkpoint (config, safetensors, tokenizer) to ``out``."""
    from transformers import LlamaForCausalLM

    out = Path(out)
    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        num_layers=num_layers, vocab_size=len(tokenizer), tie_word_embeddings=tie_word_embeddings
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger-than-default weights so logits are far from uniform
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
