"""Check that an exported model behaves like the trained one, before it is kept.

The trained model's next-token logits on a few chat prompts are captured first (the
reference). A GGUF file is then loaded in llama.cpp and fed the same token ids; a merged
folder is reloaded with transformers. The largest absolute logit difference must stay
under a per-format bound. For GGUF the tokenizer is checked too: llama.cpp must split
sample texts into the same ids as the HF tokenizer, or the file answers differently
however close its weights are.

Logits are only defined up to their scale, which differs a hundredfold between a random
test model and a real one, so each format's bound is a multiple of the reference logits'
standard deviation (measured headroom: SmolLM2-135M f16 differs by 0.012 sd, q8_0 by
0.3, q4_k_m by 1.1; a missing q/k permutation on a tiny model already by 0.4 at f16).
A floor on top-1 agreement catches a garbled model that the max alone could miss at low
bit widths. Mean KL divergence is reported as the quality figure llama.cpp users know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from backpropagate_core.errors import BackpropError

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a helpful baker."},
     {"role": "user", "content": "How long should sourdough rise? Answer in 2 sentences."}],
    [{"role": "user", "content": "Explain LoRA fine-tuning in one line: 1, 2, 3!"}],
]
SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 3.14159, 2026, 1000000 and 42nd.",
    # Whitespace runs inside and at the end; not at the very start, where HF's sentencepiece
    # conversions drop a space that sentencepiece itself (and llama.cpp) keeps.
    "double  spaces, tabs\tand\nnew lines\n\n  indented\n  ",
    "Punctuation!? (brackets) [x] {y} \"quotes\" 'single' -- dash; colon: end.",
    "Unicode: café, naïve, Ζεύς, 東京, emoji 🙂.",
    "don't, won't, I'm, you're, they've, we'll, he'd",
]
# Largest allowed |logit difference| in reference standard deviations, by format.
BOUNDS_SD = {"f32": 0.05, "f16": 0.1, "bf16": 0.3, "q8_0": 1.0, "q6_k": 1.5, "q5_k_m": 3.0,
             "q5_k_s": 3.0, "q4_k_m": 3.0, "q4_k_s": 3.0, "q4_0": 5.0, "q3_k_m": 5.0, "q2_k": 6.0}
LONG_PROMPT_TOKENS = 1100
"""One plain-text prompt this long: a wrong rope base or scaling barely shows in the first
few dozen positions and grows with the position."""
LONG_TAIL = 32
"""Positions at the end of the long prompt whose logits are compared (all of them would be
~1000 x vocabulary floats per side)."""
# Least share of positions whose most likely next token must agree with the reference.
MIN_TOP1 = {"f32": 0.9, "f16": 0.9, "bf16": 0.9, "q8_0": 0.7, "q6_k": 0.7}
MIN_TOP1_DEFAULT = 0.4


@dataclass
class Reference:
    """What the trained model computes on the verification prompts."""
    prompt_texts: list[str]
    prompt_ids: list[list[int]]
    logits: list[Any]
    """One float32 numpy array [tokens, vocab] per prompt."""
    greedy: list[int] = field(default_factory=list)
    """Greedy continuation of the first prompt."""
    long_ids: list[int] = field(default_factory=list)
    long_logits: Any = None
    """Logits of the last LONG_TAIL positions of the long prompt."""


def capture_reference(model: Any, tokenizer: Any, greedy_tokens: int = 16) -> Reference:
    import torch

    from backpropagate_core.export.chat import hf_greedy, render_prompt

    texts = [render_prompt(tokenizer, messages) for messages in PROMPTS]
    ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    logits = []
    with torch.no_grad():
        for seq in ids:
            out = model(torch.tensor([seq]))
            logits.append(out.logits[0].float().numpy())
    greedy = hf_greedy(model, ids[0], greedy_tokens) if greedy_tokens else []
    long_ids = _long_prompt(tokenizer, model)
    with torch.no_grad():
        long_logits = model(torch.tensor([long_ids])).logits[0, -LONG_TAIL:].float().numpy() if long_ids else None
    return Reference(texts, ids, logits, greedy, long_ids, long_logits)


def _long_prompt(tokenizer: Any, model: Any) -> list[int]:
    """Sample texts repeated to LONG_PROMPT_TOKENS ids (fewer if the model's context is shorter)."""
    limit = min(LONG_PROMPT_TOKENS, int(getattr(model.config, "max_position_embeddings", 0) or LONG_PROMPT_TOKENS))
    one = list(tokenizer("\n".join(SAMPLE_TEXTS) + "\n", add_special_tokens=False)["input_ids"])
    return (one * (limit // max(1, len(one)) + 1))[:limit] if one else []


def logit_scale(ref: Reference) -> float:
    """Standard deviation of the reference logits (over vocabulary and positions)."""
    import numpy as np

    return float(np.mean([logits.std() for logits in ref.logits]))


def bound_for(fmt: str, ref: Reference) -> float:
    return round(BOUNDS_SD.get(fmt, 6.0) * logit_scale(ref), 6)


def _compare(ref: Reference, logits_of, fmt: str) -> dict:
    import numpy as np

    worst, agree, total, kl, non_finite = 0.0, 0, 0, [], 0
    pairs = [(seq, expected, None) for seq, expected in zip(ref.prompt_ids, ref.logits)]
    if ref.long_ids:
        pairs.append((ref.long_ids, ref.long_logits, LONG_TAIL))
    for seq, expected, tail in pairs:
        got = np.asarray(logits_of(seq), dtype=np.float64)
        got = got[-tail:] if tail else got
        want = expected.astype(np.float64)
        # A NaN would vanish from max(); count non-finite logits on their own.
        non_finite += int((~np.isfinite(got)).sum())
        got = np.nan_to_num(got, nan=0.0, posinf=0.0, neginf=0.0)
        worst = max(worst, float(np.abs(got - want).max()))
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(got)
        p, q = _log_softmax(want), _log_softmax(got)
        kl.extend((np.exp(p) * (p - q)).sum(-1).tolist())
    return {"max_logit_diff": round(worst, 6), "bound": bound_for(fmt, ref),
            "logit_scale": round(logit_scale(ref), 4), "top1_agreement": round(agree / total, 4),
            "min_top1_agreement": MIN_TOP1.get(fmt, MIN_TOP1_DEFAULT),
            "kl_divergence": round(float(np.mean(kl)), 6), "positions": total,
            "prompts": len(pairs), "long_prompt_tokens": len(ref.long_ids), "non_finite_logits": non_finite}


def _log_softmax(x):
    import numpy as np

    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def verify_gguf(path: Path, ref: Reference, tokenizer: Any, fmt: str,
                chat_must_match: bool = True) -> dict:
    """Load the file in llama.cpp; compare tokenization and logits with the reference.

    The chat prompts and the long prompt each run in a context sized to them, as a user's
    would be. That matters for LongRoPE models (Phi-3.5-mini, Phi-4-mini): llama.cpp picks
    their long or short rope factors by context size, transformers by sequence length, and
    the two agree when the context is no larger than the sequence needs.
    """
    from backpropagate_core.export.chat import gguf_greedy, open_gguf

    chat_ctx = max(len(s) for s in ref.prompt_ids) + len(ref.greedy) + 64
    llama = _load(path, lambda: open_gguf(path, n_ctx=max(256, chat_ctx)))
    try:
        got = {tuple(seq): _gguf_logits(llama, seq) for seq in ref.prompt_ids}
        checks = _tokenization(llama, tokenizer, ref, chat_must_match)
        if ref.greedy:
            checks["greedy_match"] = gguf_greedy(llama, ref.prompt_ids[0], len(ref.greedy)) == ref.greedy
    finally:
        llama.close()
    if ref.long_ids:
        # One context at a time: each holds n_ctx x vocabulary logits.
        llama = _load(path, lambda: open_gguf(path, n_ctx=max(256, len(ref.long_ids) + 64)))
        try:
            got[tuple(ref.long_ids)] = _gguf_logits(llama, ref.long_ids)
        finally:
            llama.close()
    return {**_compare(ref, lambda seq: got[tuple(seq)], fmt), **checks}


def _load(path: Path, open_it: Callable[[], Any]) -> Any:
    """`open_it()`, a llama.cpp load of `path`; EXPORT_VERIFY_FAILED with llama.cpp's reason
    when the file does not load (llama-cpp-python only says that it failed)."""
    try:
        return open_it()
    except ValueError as err:
        raise BackpropError(
            "EXPORT_VERIFY_FAILED", f"llama.cpp cannot load {path.name}: {_load_error(path) or err}",
            hint="Nothing was replaced. If llama.cpp calls the file incomplete or corrupted, it was cut short "
                 "while being written: check free disk space and export again. Any other reason means this "
                 "llama.cpp cannot read what was written; include the message in a bug report.") from None


def _load_error(path: Path) -> str:
    """Why llama.cpp cannot load `path`, from its log of a vocabulary-only load."""
    import contextlib
    import io

    from llama_cpp import Llama

    log = io.StringIO()
    # verbose=True: only then does llama-cpp-python pass llama.cpp's log on to sys.stderr.
    with contextlib.redirect_stderr(log):
        try:
            Llama(model_path=str(path), vocab_only=True, verbose=True).close()
        except ValueError:
            pass
    lines = [line.strip() for line in log.getvalue().splitlines()
             if ("error" in line or "failed" in line) and "load_from_file_impl" not in line]
    return " | ".join(lines)


def _gguf_logits(llama: Any, seq: list[int]):
    llama.reset()
    llama.eval(seq)
    return llama.scores[: len(seq)].copy()


def _tokenization(llama: Any, tokenizer: Any, ref: Reference, chat_must_match: bool) -> dict:
    """Do llama.cpp and the HF tokenizer produce the same ids? Plain texts and chat prompts.

    Sentencepiece vocabularies differ by design right after a special token: llama.cpp
    prefixes a space there, HF's converted tokenizers do not. For them the chat prompts
    are reported (`chat_tokenization_match`) but only plain text decides.
    """
    def differs(text: str, plain: bool):
        hf = list(tokenizer(text, add_special_tokens=plain)["input_ids"])
        cpp = llama.tokenize(text.encode("utf-8"), add_bos=plain, special=not plain)
        return None if hf == cpp else {"text": text[:80], "hf": hf[:24], "llama_cpp": cpp[:24]}

    plain = [m for m in (differs(t, True) for t in SAMPLE_TEXTS) if m]
    chat = [m for m in (differs(t, False) for t in ref.prompt_texts) if m]
    mismatches = plain + chat if chat_must_match else plain
    return {"tokenization_match": not mismatches, "chat_tokenization_match": not chat,
            "tokenization_cases": len(SAMPLE_TEXTS) + len(ref.prompt_texts),
            "tokenization_mismatches": (plain + chat)[:3]}


def verify_tokenization(path: Path, tokenizer: Any) -> dict:
    """The tokenizer check alone, from the GGUF's vocabulary (no weights loaded): cheap
    enough to run even when verification was turned off."""
    from llama_cpp import Llama

    llama = _load(path, lambda: Llama(model_path=str(path), vocab_only=True, verbose=False))
    try:
        ref = Reference([], [], [])
        result = _tokenization(llama, tokenizer, ref, chat_must_match=False)
    finally:
        llama.close()
    if not result["tokenization_match"]:
        first = result["tokenization_mismatches"][0]
        raise BackpropError("EXPORT_VERIFY_FAILED", f"llama.cpp tokenizes {first['text']!r} as "
                            f"{first['llama_cpp']} but the trained tokenizer gives {first['hf']}")
    return {**result, "passed": True, "logits_checked": False}


def verify_merged(path: Path, ref: Reference, fmt: str) -> dict:
    """Reload the saved merged folder with transformers and compare logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def logits_of(seq):
        with torch.no_grad():
            return model(torch.tensor([seq])).logits[0].float().numpy()

    return _compare(ref, logits_of, fmt)


def check(result: dict, what: str) -> dict:
    """Raise EXPORT_VERIFY_FAILED when a figure is out of bounds; else mark it passed."""
    problems = []
    if result.get("non_finite_logits"):
        problems.append(f"{result['non_finite_logits']} logits are NaN or infinite")
    if result["max_logit_diff"] > result["bound"]:
        problems.append(f"max logit difference {result['max_logit_diff']:.4g} > bound {result['bound']}")
    if result["top1_agreement"] < result["min_top1_agreement"]:
        problems.append(f"the most likely next token agrees at only {result['top1_agreement']:.0%} "
                        f"of positions (at least {result['min_top1_agreement']:.0%} expected)")
    if result.get("tokenization_match") is False:
        first = next(m for m in result["tokenization_mismatches"])
        problems.append(f"llama.cpp tokenizes {first['text']!r} as {first['llama_cpp']} "
                        f"but the trained tokenizer gives {first['hf']}")
    result["passed"] = not problems
    if problems:
        raise BackpropError("EXPORT_VERIFY_FAILED", f"{what}: " + "; ".join(problems))
    return result
