"""Chat templating and tokenization with the loss on assistant replies only.

The model's own chat template renders each conversation. Which characters belong to
assistant replies is found by rendering message prefixes and diffing them, so it works
for any template (system prompts added by default, BOS tokens, the fallback below)
without knowing its markers. Tokens inside those character spans keep their labels;
everything else is -100, so the model learns to answer and to stop, not to imitate
users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backpropagate_core.errors import BackpropError

if TYPE_CHECKING:
    from backpropagate_core.data.formats import Example

from backpropagate_core.runs.layout import IGNORE_INDEX  # noqa: E402 - labels of untrained tokens
"""Label value the loss skips (transformers' convention)."""

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def fallback_template(tokenizer) -> str:
    """ChatML with the tokenizer's own tokens where it has them.

    Real ChatML needs `<|im_start|>`/`<|im_end|>` in the vocabulary; without them the
    turn markers are plain text and each turn ends with the EOS token, so a model trained
    on it still learns to stop with a token it already has.
    """
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return _CHATML
    end = _jinja_str(tokenizer.eos_token or "<|im_end|>")
    return (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + " + end + " + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ensure_chat_template(tokenizer) -> bool:
    """Install the fallback template when the tokenizer has none; True if it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = fallback_template(tokenizer)
    return True


def render(tokenizer, messages: list[dict], line: int | None = None,
           add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it; a template refusal becomes a coded error."""
    from jinja2 import TemplateError

    ensure_chat_template(tokenizer)
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (TemplateError, ValueError, TypeError) as exc:
        where = f"line {line}: " if line is not None else ""
        raise BackpropError(
            "INPUT_DATASET_INVALID",
            f"{where}the model's chat template rejected this conversation: {exc}",
            hint="Some templates need strictly alternating user/assistant turns or no system "
                 "turn; fix the example or choose another model.") from None


def encode_text(tokenizer, text: str) -> list[int]:
    """Raw-text tokens, ending with EOS so the model learns where a document stops."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def tokenize(example: Example, tokenizer, max_seq_len: int | None) -> dict:
    """input_ids and labels (-100 outside assistant replies) for one example.

    Raw-text examples are labelled everywhere. `n_tokens` is the length after
    truncation to `max_seq_len` (None: no truncation); `truncated` says if any was cut.
    """
    if not example.messages:
        ids = encode_text(tokenizer, example.text or "")
        labels = list(ids)
    else:
        full = render(tokenizer, example.messages, example.line)
        spans = assistant_spans(tokenizer, example.messages, full, example.line)
        ids, labels = _encode_with_spans(tokenizer, full, spans)
    truncated = max_seq_len is not None and len(ids) > max_seq_len
    if truncated:
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    return {"input_ids": ids, "labels": labels, "n_tokens": len(ids), "truncated": truncated}


def assistant_spans(tokenizer, messages: list[dict], full: str,
                    line: int | None = None) -> list[tuple[int, int]]:
    """Character ranges of `full` holding each assistant reply and its end-of-turn marker."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        span = _span_by_prefix(tokenizer, messages, i, full, line)
        if span is None or span[0] < cursor:
            span = _span_by_search(tokenizer, full, message["content"], cursor)
        if span is not None:
            spans.append(span)
            cursor = span[1]
    return spans


def _span_by_prefix(tokenizer, messages, i, full, line) -> tuple[int, int] | None:
    """Render everything before reply i (with the assistant header) and through it; the
    difference is the reply. Only valid when both renders are prefixes of the whole."""
    try:
        before = render(tokenizer, messages[:i], line, add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], line)
    except BackpropError:
        return None  # e.g. templates that cannot render a conversation starting with a reply
    if not (full.startswith(through) and through.startswith(before)):
        return None
    # The newline a template puts between turns is glue, not part of the reply.
    end = len(through.rstrip())
    return (len(before), end) if end > len(before) else None


def _span_by_search(tokenizer, full: str, content: str, cursor: int) -> tuple[int, int] | None:
    """Fallback for templates that render a turn differently once it is not the last
    (e.g. dropping reasoning): find the content and the special token that closes it."""
    content = content.strip()
    if not content:
        return None
    start = full.find(content, cursor)
    if start < 0:
        return None
    end = start + len(content)
    rest = full[end:]
    gap = len(rest) - len(rest.lstrip())
    for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if token and rest[gap:].startswith(token):
            return start, end + gap + len(token)
    return start, end


def _encode_with_spans(tokenizer, full: str, spans) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [tok if _overlaps(off, spans) else IGNORE_INDEX
                  for tok, off in zip(ids, enc["offset_mapping"])]
        return ids, labels
    # Tokenizers without offsets: encode piece by piece. Splits only fall on template
    # markers, where tokenization breaks anyway.
    ids, labels, pos = [], [], 0
    for start, end in spans:
        for text, keep in ((full[pos:start], False), (full[start:end], True)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if keep else [IGNORE_INDEX] * len(piece)
        pos = end
    tail = tokenizer(full[pos:], add_special_tokens=False)["input_ids"] if full[pos:] else []
    return ids + tail, labels + [IGNORE_INDEX] * len(tail)


def _overlaps(offset, spans) -> bool:
    start, end = offset
    return end > start and any(start < s_end and end > s_start for s_start, s_end in spans)


def count_tokens(tokenizer, examples: list[Example]) -> tuple[list[int | None], dict[int, str]]:
    """Untruncated token count of each example, as `tokenize` would produce it.

    Examples the chat template rejects count as None, with the reason in the second
    value (index into `examples` → message), so a report can list them all at once.
    """
    counts: list[int | None] = [None] * len(examples)
    rejected: dict[int, str] = {}
    chats: list[tuple[int, str]] = []
    for i, ex in enumerate(examples):
        if not ex.messages:
            counts[i] = len(encode_text(tokenizer, ex.text or ""))
            continue
        try:
            chats.append((i, render(tokenizer, ex.messages, ex.line)))
            if ex.rejected is not None:  # a pair is as long as its longer side
                chats.append((i, render(tokenizer, ex.prompt + ex.rejected, ex.line)))
        except BackpropError as err:
            rejected[i] = err.message
    if chats:
        # One batched call: the fast tokenizers encode a batch in parallel in Rust.
        batch = tokenizer([text for _, text in chats], add_special_tokens=False)["input_ids"]
        for (i, _), ids in zip(chats, batch):
            if i not in rejected:
                counts[i] = max(counts[i] or 0, len(ids))
    return counts, rejected
