"""Remove secrets from anything we print, log or store.

Tokens people paste into configs and commands end up in error messages, event logs and
the run store; these patterns catch the common shapes before any of those are written.
"""

from __future__ import annotations

import re

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Hugging Face, OpenAI-style and similar API keys.
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}"), "gh*_***"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "AKIA***"),
    # Authorization headers and bearer tokens.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 ***"),
    # key=value and key: value pairs whose key says they are secret.
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|auth)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"),
     r"\1\2***"),
    # user:password@ in URLs.
    (re.compile(r"(?i)(://[^/\s:@]+):[^/\s@]+@"), r"\1:***@"),
]


def redact(text: str) -> str:
    """Return `text` with every recognised secret replaced by a mask."""
    if not text:
        return text
    for pattern, mask in _PATTERNS:
        text = pattern.sub(mask, text)
    return text


def redact_obj(value):
    """Redact every string inside a JSON-like structure (dicts, lists, strings)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: ("***" if _secret_key(k) and v else redact_obj(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value


def _secret_key(key) -> bool:
    return isinstance(key, str) and bool(
        re.search(r"(?i)(password|secret|token|api[_-]?key)$", key))
