"""Greedy answers from the trained model (transformers) and from its GGUF (llama.cpp).

Both sides get the same token ids, rendered with the chat template the run trained
with, so a side-by-side answer shows whether the exported file behaves like the model
that was trained. Greedy decoding makes the comparison deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from backpropagate_core import platform_support
from backpropagate_core.eval.answers import hf_greedy, prompt_ids, render_prompt, stop_ids  # noqa: F401


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


def open_gguf(path: Path, n_ctx: int = 512, logits_all: bool = True):
    """A llama.cpp model on the CPU, quiet."""
    import logging

    from backpropagate_core.export.quantize import require_llama_cpp

    llama_cpp = require_llama_cpp("Loading a GGUF file")
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    threads = platform_support.free_cpu_threads()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all,
                           n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)


def gguf_greedy(llama: Any, ids: Sequence[int], max_new_tokens: int,
                stop: set[int] = frozenset(), on_token: Callable[[list[int]], None] | None = None) -> list[int]:
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
        if on_token is not None:
            on_token(out_ids)
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

    def ask(self, messages: list[dict], base: bool = False,
            on_text: Callable[[str, str], None] | None = None) -> dict[str, Answer]:
        """Answers keyed by engine; llama.cpp only when a GGUF is open; `base`: first the
        base model's (the adapter switched off), where the source is an adapter.
        `on_text(engine, text so far)` is called as each answer grows (streaming)."""
        import time

        ids = prompt_ids(self.tokenizer, messages)
        answers = {}

        def run(engine: str, generate) -> None:
            started = time.time()
            seen = (lambda toks: on_text(engine, self._text(toks))) if on_text else None
            toks = generate(ids, self.max_new_tokens, self.stop, seen)
            answers[engine] = Answer(self._text(toks), toks, time.time() - started,
                                     "llama.cpp" if engine == "llama.cpp" else "transformers")

        if base and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                run("base", lambda *a: hf_greedy(self.model, *a))
        run("transformers", lambda *a: hf_greedy(self.model, *a))
        if self.llama is not None:
            run("llama.cpp", lambda *a: gguf_greedy(self.llama, *a))
        return answers

    def _text(self, toks: list[int]) -> str:
        return self.tokenizer.decode([t for t in toks if t not in self.stop], skip_special_tokens=True)


def latest_gguf(source: Any) -> Path | None:
    """The newest verified GGUF export of a run, if it has one."""
    if source.run_dir is None:
        return None
    files = sorted((source.run_dir / "exports").glob("gguf-*/*.gguf"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None
