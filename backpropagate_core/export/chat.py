"""Greedy answers from the trained model (transformers) and from its GGUF (llama.cpp).

Both sides get the same token ids, rendered with the chat template the run trained
with, so a side-by-side answer shows whether the exported file behaves like the model
that was trained. Greedy decoding makes the comparison deterministic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Answer:
    text: str
    tokens: list[int]
    seconds: float
    engine: str
    """"transformers" or "llama.cpp"."""


ROLES = ("system", "user", "assistant")


def check_messages(messages: Any) -> list[dict]:
    """A conversation to answer: a list of {role, content} ending with the user's turn."""
    from backpropagate_core.errors import BackpropError

    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages)
    if not ok or messages[-1]["role"] != "user":
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID",
                            "messages must be a list of {role, content} (roles system, user, assistant) "
                            "that ends with a user turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """`messages` plus the assistant prompt, as text, with the run's chat template."""
    from backpropagate_core.chat_templates import ensure_chat_template

    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of the rendered prompt; the template writes any BOS itself, as in training."""
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def stop_ids(tokenizer: Any) -> set[int]:
    """Tokens that end an answer: EOS and the chat template's end-of-turn marker."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return ids


def hf_greedy(model: Any, ids: Sequence[int], max_new_tokens: int,
              stop: set[int] = frozenset()) -> list[int]:
    """Greedy continuation with transformers, reusing the KV cache."""
    import torch

    out_ids: list[int] = []
    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), use_cache=True)
        for _ in range(max_new_tokens):
            tok = int(out.logits[0, -1].argmax())
            out_ids.append(tok)
            if tok in stop:
                break
            out = model(torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
    return out_ids


def cpu_threads() -> int:
    """Threads for llama.cpp: the cores not already busy.

    llama.cpp's worker threads spin while they wait for each other, so on a busy machine
    one thread too many makes evaluation 10-40x slower (measured here), not just a bit.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def open_gguf(path: Path, n_ctx: int = 512, logits_all: bool = True):
    """A llama.cpp model on the CPU, quiet."""
    import logging

    from backpropagate_core.export.quantize import require_llama_cpp

    llama_cpp = require_llama_cpp("Loading a GGUF file")
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    threads = cpu_threads()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all,
                           n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)


def gguf_greedy(llama: Any, ids: Sequence[int], max_new_tokens: int,
                stop: set[int] = frozenset()) -> list[int]:
    """Greedy continuation with llama.cpp, from the logits of each last evaluated token."""
    import numpy as np

    import llama_cpp

    llama.reset()
    llama.eval(list(ids))
    out_ids: list[int] = []
    for _ in range(max_new_tokens):
        last = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
        tok = int(np.argmax(np.ctypeslib.as_array(last, shape=(llama.n_vocab(),))))
        out_ids.append(tok)
        if tok in stop or llama.n_tokens >= llama.n_ctx():
            break
        llama.eval([tok])
    return out_ids


class ChatSession:
    """The trained model and, optionally, its GGUF, answering the same prompts greedily."""

    def __init__(self, source: str | Path, gguf: str | Path | None = None,
                 max_new_tokens: int = 128, compare_gguf: bool = True) -> None:
        """`gguf`: the file to compare with (default: the run's newest GGUF export);
        `compare_gguf=False`: the trained model alone."""
        from backpropagate_core.export.merged import load_tokenizer, load_trained, resolve_source

        self.source = resolve_source(source)
        self.tokenizer = load_tokenizer(self.source)
        self.model = load_trained(self.source, merge=False)
        self.gguf_path = (Path(gguf) if gguf else latest_gguf(self.source)) if compare_gguf else None
        # Chat needs only each last token's logits; keeping all of them would cost
        # n_ctx x vocabulary floats (1.2 GB for Qwen's vocabulary at 2048 tokens).
        n_ctx = min(2048, int(getattr(self.model.config, "max_position_embeddings", 0) or 2048))
        self.llama = open_gguf(self.gguf_path, n_ctx=n_ctx, logits_all=False) if self.gguf_path else None
        self.max_new_tokens = max_new_tokens
        self.stop = stop_ids(self.tokenizer)

    def ask(self, messages: list[dict]) -> dict[str, Answer]:
        """Answers keyed by engine; llama.cpp only when a GGUF is open."""
        import time

        ids = prompt_ids(self.tokenizer, messages)
        answers = {}
        started = time.time()
        toks = hf_greedy(self.model, ids, self.max_new_tokens, self.stop)
        answers["transformers"] = Answer(self._text(toks), toks, time.time() - started, "transformers")
        if self.llama is not None:
            started = time.time()
            toks = gguf_greedy(self.llama, ids, self.max_new_tokens, self.stop)
            answers["llama.cpp"] = Answer(self._text(toks), toks, time.time() - started, "llama.cpp")
        return answers

    def _text(self, toks: list[int]) -> str:
        return self.tokenizer.decode([t for t in toks if t not in self.stop], skip_special_tokens=True)


def latest_gguf(source: Any) -> Path | None:
    """The newest verified GGUF export of a run, if it has one."""
    if source.run_dir is None:
        return None
    files = sorted((source.run_dir / "exports").glob("gguf-*/*.gguf"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None
