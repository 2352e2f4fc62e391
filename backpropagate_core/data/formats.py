"""The six dataset record shapes we accept, and how each becomes chat messages.

A record is one JSON object (a JSONL line, a CSV row, a parquet row). `detect` names its
shape from the key that identifies it; `normalise` turns it into
`[{"role": "system"|"user"|"assistant", "content": str}, ...]`, or raw text for `text`
records. A `preference` record (a prompt with a chosen and a rejected answer, for DPO and
ORPO) becomes the prompt followed by the chosen answer, plus the rejected answer apart.
Anything malformed raises `RecordError` with a message that names the field and turn, so
the loader can prefix the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass

import json
from typing import Any

FORMATS = ("sharegpt", "openai", "alpaca", "prompt_completion", "text", "preference")
PREFERENCE_FORMATS = ("preference",)
"""Formats that hold answer pairs: trained with DPO or ORPO, never with SFT."""

# The key that identifies each shape, checked in this order: Alpaca datasets often carry
# a pre-rendered "text" column too, so the more specific shapes win.
_IDENTIFYING_KEY = (
    ("chosen", "preference"),
    ("conversations", "sharegpt"),
    ("messages", "openai"),
    ("instruction", "alpaca"),
    ("prompt", "prompt_completion"),
    ("text", "text"),
)
_KEY_OF = {fmt: key for key, fmt in _IDENTIFYING_KEY}

# ShareGPT exports name speakers in many ways; these are the ones seen in the wild.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Example:
    messages: list[dict]
    """[{"role": "system"|"user"|"assistant", "content": str}]; [] for raw text."""
    line: int
    """1-based line (JSONL/JSON/CSV) or record number (parquet, dataset folder)."""
    text: str | None = None
    """The document, for raw-text examples only."""
    rejected: list[dict] | None = None
    """Preference examples only: the rejected answer's assistant turns. `messages` then
    holds the prompt followed by the chosen answer's turns (from `chosen_from`)."""
    chosen_from: int = 0
    """Index in `messages` where the chosen answer starts (preference examples)."""

    @property
    def prompt(self) -> list[dict]:
        return self.messages[:self.chosen_from] if self.rejected is not None else self.messages

    @property
    def chosen(self) -> list[dict]:
        return self.messages[self.chosen_from:] if self.rejected is not None else []


class RecordError(ValueError):
    """One record is malformed; the message says which field and why."""


def detect(record: Any) -> str | None:
    """The format a record is in, or None when it has none of the identifying keys."""
    if not isinstance(record, dict):
        return None
    for key, fmt in _IDENTIFYING_KEY:
        if record.get(key) is not None:
            return fmt
    return None


def has_key_of(record: dict, fmt: str) -> bool:
    """Whether the record carries the key that identifies `fmt`."""
    return record.get(_KEY_OF[fmt]) is not None


def normalise(record: dict, fmt: str) -> tuple[list[dict], str | None]:
    """(messages, text) for one record already detected as `fmt` (not preference)."""
    messages, text = _NORMALISERS[fmt](record)
    if text is None and not any(m["role"] == "assistant" for m in messages):
        raise RecordError("has no assistant reply")
    return messages, text


def _sharegpt(record: dict) -> tuple[list[dict], None]:
    turns = _as_list(record["conversations"], "conversations")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise RecordError(f"'conversations' turn {n} is not an object")
        speaker = turn.get("from", turn.get("role"))
        if speaker is None:
            raise RecordError(f"'conversations' turn {n} has no 'from'")
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise RecordError(f"'conversations' turn {n} has unknown speaker {speaker!r} "
                              f"(expected human, gpt or system)")
        value = turn.get("value", turn.get("content"))
        if value is None:
            raise RecordError(f"'conversations' turn {n} has no 'value'")
        if not isinstance(value, str):
            raise RecordError(f"'conversations' turn {n} 'value' is not a string")
        messages.append({"role": role, "content": value})
    return messages, None


def _openai(record: dict) -> tuple[list[dict], None]:
    return _openai_messages(record["messages"], "messages"), None


def _openai_messages(raw: Any, field: str) -> list[dict]:
    messages = []
    for n, msg in enumerate(_as_list(raw, field), 1):
        if not isinstance(msg, dict):
            raise RecordError(f"'{field}' message {n} is not an object")
        if "role" not in msg:
            raise RecordError(f"'{field}' message {n} has no 'role'")
        role = OPENAI_ROLES.get(str(msg["role"]).lower())
        if role is None:
            raise RecordError(f"'{field}' message {n} has unsupported role {msg['role']!r} "
                              f"(expected system, user or assistant)")
        messages.append({"role": role, "content": _content(msg.get("content"), f"'{field}' message {n}")})
    return messages


def _content(value: Any, where: str) -> str:
    """Message content as a string; OpenAI's list-of-parts form is joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    if value is None:
        raise RecordError(f"{where} has no 'content'")
    raise RecordError(f"{where} 'content' is not a string")


def _alpaca(record: dict) -> tuple[list[dict], None]:
    instruction = _text_field(record, "instruction")
    output = _text_field(record, "output")
    extra = _text_field(record, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _with_system(record, prompt, output), None


def _prompt_completion(record: dict) -> tuple[list[dict], None]:
    answer_key = "completion" if record.get("completion") is not None else "response"
    # TRL's conversational prompt/completion datasets hold message lists in both fields.
    if isinstance(record["prompt"], list):
        prompt = _openai_messages(record["prompt"], "prompt")
        if record.get(answer_key) is None:
            raise RecordError("has no 'completion' or 'response'")
        return prompt + _openai_messages(record[answer_key], answer_key), None
    prompt = _text_field(record, "prompt")
    if record.get(answer_key) is None:
        raise RecordError("has no 'completion' or 'response'")
    return _with_system(record, prompt, _text_field(record, answer_key)), None


def _text(record: dict) -> tuple[list[dict], str]:
    return [], _text_field(record, "text")


def _with_system(record: dict, prompt: str, answer: str) -> list[dict]:
    system = _text_field(record, "system", required=False)
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _text_field(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError(f"has no '{key}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"'{key}' is not a string")
    return value


def _as_list(value: Any, field: str) -> list:
    # CSV cells and some parquet exports hold the turns as a JSON string.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(f"'{field}' is a string that is not a JSON list") from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise RecordError(f"'{field}' is not a list")
    if not value:
        raise RecordError(f"'{field}' is empty")
    return value


def normalise_preference(record: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) message lists for one preference record.

    The shapes people have: `prompt` as text or messages (TRL's conversational preference
    format), `messages` holding the prompt, or no prompt at all with `chosen` and
    `rejected` as whole conversations that share it (TRL's implicit prompt). An answer is
    text or a list of assistant turns."""
    if record.get("prompt") is not None:
        raw = record["prompt"]
        prompt = (_openai_messages(raw, "prompt") if isinstance(raw, list)
                  else _with_system(record, _text_field(record, "prompt"), "")[:-1])
    elif record.get("messages") is not None:
        prompt = _openai_messages(record["messages"], "messages")
    else:
        prompt = None
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    if prompt is None:
        prompt, chosen, rejected = _shared_prompt(chosen, rejected)
    if not prompt or prompt[-1]["role"] != "user":
        raise RecordError("the prompt must end with a user turn")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or any(m["role"] != "assistant" for m in turns):
            raise RecordError(f"'{name}' must be assistant turns after the prompt")
        if not "".join(m["content"] for m in turns).strip():
            raise RecordError(f"'{name}' is empty")
    if _plain(chosen) == _plain(rejected):
        raise RecordError("'chosen' and 'rejected' are the same answer, so the pair teaches nothing")
    return prompt, chosen, rejected


def _answer(record: dict, key: str) -> list[dict]:
    value = record.get(key)
    if value is None:
        raise RecordError(f"has no '{key}'")
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _openai_messages(value, key)


def _shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split two whole conversations into their common beginning and the two answers."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1  # a shared first part of the answer still belongs to the answer
    if n == 0:
        raise RecordError("has no 'prompt', and 'chosen' and 'rejected' share no opening turns")
    return chosen[:n], chosen[n:], rejected[n:]


def _plain(turns: list[dict]) -> str:
    return " ".join(" ".join(m["content"] for m in turns).split())


_NORMALISERS = {
    "sharegpt": _sharegpt, "openai": _openai, "alpaca": _alpaca,
    "prompt_completion": _prompt_completion, "text": _text,
}
