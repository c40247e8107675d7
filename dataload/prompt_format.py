"""The one canonical prompt formatter.

Two modes:
- ``completion`` (the default for base models): plain role-tagged text that needs no chat
  template — ``<role>: <text>`` blocks separated by blank lines, ending with ``assistant:`` when a
  reply is wanted.
- ``chat``: the tokenizer's own chat template, used only when asked for (the catalog marks
  instruct models that ship a template).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from node.errors import RequestError

PromptMode = Literal["completion", "chat"]
ROLES = ("system", "user", "assistant")


def render(messages: Sequence[dict[str, str]], *, mode: PromptMode, tokenizer=None,
           add_generation_prompt: bool = True) -> str:
    """Render ``[{"role": …, "content": …}, …]`` as one prompt string."""
    for message in messages:
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise RequestError(f"bad message {message!r}: role must be one of {ROLES} and "
                               "content a string")
    if mode == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise RequestError("prompt mode 'chat' needs a tokenizer with a chat template; "
                               "use --prompt-format completion")
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    if mode != "completion":
        raise RequestError(f"unknown prompt mode {mode!r}; use 'completion' or 'chat'")
    blocks = [f"{m['role']}: {m['content'].strip()}" for m in messages]
    if add_generation_prompt:
        blocks.append("assistant:")
    return "\n\n".join(blocks)


def encode_prompt(text: str, tokenizer, *, mode: PromptMode) -> list[int]:
    """Token ids of a rendered prompt (a chat template already carries its special tokens)."""
    return list(tokenizer(text, add_special_tokens=(mode == "completion")).input_ids)
