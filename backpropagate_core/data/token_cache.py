"""Tokenized examples cached on disk, so a rerun, a resume or a second run on the same
data skips the chat-template rendering and tokenization.

The key is a hash of the normalised examples, the tokenizer (its full serialised
vocabulary and rules, special tokens and chat template) and the length cap, so a change
to any of them misses the cache instead of training on stale tokens. Files live under
`<cache dir>/tokens/` (`BACKPROPAGATE_CACHE_DIR`, default `~/.cache/backpropagate`) and
are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from backpropagate_core.data.templates import tokenize

CACHE_VERSION = 1
"""Bump when `tokenize`'s output changes, so old entries are not reused."""


def cache_root() -> Path:
    from backpropagate_core.model.loader import cache_dir

    return cache_dir() / "tokens"


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, rules, str(getattr(tokenizer, "chat_template", None)),
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             str(getattr(tokenizer, "add_bos_token", None)), str(getattr(tokenizer, "add_eos_token", None))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def key(examples, tokenizer, max_len: int | None) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{max_len}:{tokenizer_fingerprint(tokenizer)}".encode())
    for ex in examples:
        digest.update(json.dumps([ex.messages, ex.text], ensure_ascii=False).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def tokenize_all(examples, tokenizer, max_len: int | None) -> list[dict]:
    """`tokenize` for every example, from the cache when this exact work was done before."""
    if not examples:
        return []
    path = cache_root() / f"{key(examples, tokenizer, max_len)}.json"
    if path.is_file():
        try:
            rows = json.loads(path.read_text())
            if len(rows) == len(examples):
                return rows
        except (OSError, ValueError):
            pass  # a damaged entry is rebuilt below
    rows = [tokenize(ex, tokenizer, max_len) for ex in examples]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.partial")
        tmp.write_text(json.dumps(rows, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache only costs speed
    return rows
