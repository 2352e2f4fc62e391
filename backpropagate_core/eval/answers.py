"""Greedy answers from a model to held-out prompts, and how they score.

Prompts are rendered with the chat template the run trains with, so what is scored is
what a user of the model would see. Decoding is greedy: the same model gives the same
answer, so answers at two steps (or from two runs) can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from backpropagate_core.eval import metrics


@dataclass
class Probe:
    """A held-out question and the answer the data gives for it."""
    messages: list[dict]
    """The conversation up to (not including) the reference answer."""
    reference: str

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


def probes_from(examples, limit: int) -> list[Probe]:
    """Up to `limit` probes from chat examples: each ends in an assistant reply after a user turn."""
    out = []
    for ex in examples:
        msgs = getattr(ex, "messages", None) or []
        if len(msgs) >= 2 and msgs[-1]["role"] == "assistant" and msgs[-2]["role"] == "user":
            out.append(Probe([dict(m) for m in msgs[:-1]], msgs[-1]["content"]))
        if len(out) >= limit:
            break
    return out


def answer_budget(tokenizer: Any, probes: list[Probe]) -> int:
    """New tokens to allow: the longest reference plus some slack, at most 128."""
    longest = max((len(tokenizer(p.reference, add_special_tokens=False)["input_ids"]) for p in probes), default=16)
    return min(128, longest + 16)


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """`messages` plus the assistant prompt, as text, with the run's chat template."""
    from backpropagate_core.data.templates import ensure_chat_template

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
              stop: set[int] = frozenset(), on_token: Callable[[list[int]], None] | None = None) -> list[int]:
    """Greedy continuation with transformers, reusing the KV cache; `on_token` sees the
    tokens so far after each one (for streaming)."""
    import torch

    out_ids: list[int] = []
    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), use_cache=True)
        for _ in range(max_new_tokens):
            tok = int(out.logits[0, -1].argmax())
            out_ids.append(tok)
            if on_token is not None:
                on_token(out_ids)
            if tok in stop:
                break
            out = model(torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
    return out_ids


def greedy_answers(model: Any, tokenizer: Any, probes: list[Probe], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Greedy answers for every probe, generated in left-padded batches."""
    import torch

    stop = sorted(stop_ids(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(probes), batch_size):
            ids = [prompt_ids(tokenizer, p.messages) for p in probes[start:start + batch_size]]
            width = max(map(len, ids))
            device = next(model.parameters()).device
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, eos_token_id=stop or None)
            for row in out[:, width:].tolist():
                cut = next((i for i, tok in enumerate(row) if tok in stop), len(row))
                answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def score_answers(probes: list[Probe], answers: list[str]) -> tuple[dict[str, float], list[metrics.Score]]:
    scores = [metrics.score(a, p.reference, p.prompt) for p, a in zip(probes, answers)]
    return metrics.summarise(scores), scores
