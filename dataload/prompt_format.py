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
from dataclasses import dataclass
from typing import Literal

from base.errors import RequestError

PromptMode = Literal["completion", "chat"]
ROLES = ("system", "user", "assistant")


def render(
    messages: Sequence[dict[str, str]],
    *,
    mode: PromptMode,
    tokenizer=None,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``[{"role": …, "content": …}, …]`` as one prompt string."""
    for message in messages:
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise RequestError(
                f"bad message {message!r}: role must be one of {ROLES} and content a string"
            )
    if mode == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise RequestError(
                "prompt mode 'chat' needs a tokenizer with a chat template; "
                "use --prompt-format completion"
            )
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    if mode != "completion":
        raise RequestError(f"unknown prompt mode {mode!r}; use 'completion' or 'chat'")
    blocks = [f"{m['role']}: {m['content'].strip()}" for m in messages]
    if add_generation_prompt:
        blocks.append("assistant:")
    return "\n\n".join(blocks)


def encode_prompt(text: str, tokenizer, *, mode: PromptMode) -> list[int]:
    """Token ids of a rendered prompt (a chat template already carries its special tokens)."""
    return list(tokenizer(text, add_special_tokens=(mode == "completion")).input_ids)


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation: context (``trained=False``) or an assistant reply."""

    text: str
    trained: bool


def turns_to_messages(turns) -> list[dict[str, str]]:
    """Schema turns (``speaker`` / ``text``) as formatter messages (``role`` / ``content``)."""
    return [{"role": t.speaker, "content": t.text} for t in turns]


def _append(segments: list[Segment], text: str, trained: bool) -> None:
    if not text:
        return
    if segments and segments[-1].trained == trained:
        segments[-1] = Segment(segments[-1].text + text, trained)
    else:
        segments.append(Segment(text, trained))


def render_segments(
    messages: Sequence[dict[str, str]], *, mode: PromptMode, tokenizer=None
) -> list[Segment]:
    """Render a whole conversation for training, split into context and assistant segments.

    The segments concatenate to exactly ``render(messages, mode=mode, tokenizer=tokenizer,
    add_generation_prompt=False)``, and the context before each assistant segment is exactly
    the prompt that ``render(messages[:k], add_generation_prompt=True)`` gives at inference, so
    training sees the same text the model is later asked to continue.

    - ``completion``: an assistant block ``assistant: <text>`` is split after ``assistant:``;
      the trained segment is `` <text>`` (the leading space is what the model generates first).
    - ``chat``: the template is rendered prefix by prefix; the trained segment runs from the end
      of the generation prompt through the template's end-of-turn token (the tokenizer's EOS
      string) when it has one; anything after it (e.g. a newline) is context.

    Raises:
        RequestError: a bad message, or a chat template whose renderings are not prefixes of
            one another (then masking cannot be exact; use completion mode).
    """
    full = render(messages, mode=mode, tokenizer=tokenizer, add_generation_prompt=False)
    segments: list[Segment] = []
    if mode == "completion":
        for i, message in enumerate(messages):
            sep = "\n\n" if i else ""
            if message["role"] == "assistant":
                _append(segments, f"{sep}assistant:", False)
                _append(segments, f" {message['content'].strip()}", True)
            else:
                _append(segments, f"{sep}{message['role']}: {message['content'].strip()}", False)
    else:
        eos = getattr(tokenizer, "eos_token", None)
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = render(
                messages[:k], mode=mode, tokenizer=tokenizer, add_generation_prompt=True
            )
            upto = render(
                messages[: k + 1], mode=mode, tokenizer=tokenizer, add_generation_prompt=False
            )
            if not (prefix.startswith(done) and upto.startswith(prefix)):
                raise RequestError(
                    "the chat template does not render conversations as "
                    "prefixes of one another, so assistant tokens cannot be "
                    "masked exactly; use prompt mode 'completion'"
                )
            _append(segments, prefix[len(done) :], False)
            reply = upto[len(prefix) :]
            cut = reply.find(eos) + len(eos) if eos and eos in reply else len(reply)
            _append(segments, reply[:cut], True)
            _append(segments, reply[cut:], False)
            done = upto
        if not full.startswith(done):
            raise RequestError(
                "the chat template does not render conversations as prefixes "
                "of one another; use prompt mode 'completion'"
            )
        _append(segments, full[len(done) :], False)
    if "".join(s.text for s in segments) != full:  # guards the invariant the masking relies on
        raise RequestError("internal: rendered segments do not reproduce the rendered prompt")
    return segments
