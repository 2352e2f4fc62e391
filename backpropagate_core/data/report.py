"""The dataset report: format, example count, line-numbered problems, duplicates, empty
replies, token-length percentiles and a preview; what `backprop data report` and the
Dataset page show before anything is trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from backpropagate_core.data.dataset import LoadedDataset, Problem, _normalised, load
from backpropagate_core.data.formats import PREFERENCE_FORMATS, Example
from backpropagate_core.data.templates import count_tokens

HISTOGRAM_BINS = 20
PREVIEW_EXAMPLES = 5


@dataclass
class DatasetReport:
    path: str
    """The file or folder reported on."""
    format: str
    """Detected (or forced) format, one of FORMATS."""
    examples: int
    """Usable examples."""
    problems: list[Problem]
    """Skipped records and examples the chat template rejects."""
    token_percentiles: dict[str, int] | None
    """{"p50", "p90", "p95", "p99", "max"} tokens per example; None without a tokenizer."""
    histogram: list[dict]
    """Token lengths in up to 20 bins: {"bin_start", "bin_end" (both inclusive), "count"}."""
    duplicates: int
    """Examples identical to an earlier one (case and whitespace ignored)."""
    empty: int
    """Examples whose assistant replies (or text) are blank."""
    over_long: int
    """Examples longer than max_seq_len tokens (truncated in training); 0 without both."""
    max_seq_len: int | None
    """The limit over_long was measured against."""
    preview: list[list[dict]]
    """Messages of the first examples; raw text shows as one {"role": "text"} message."""
    total_tokens: int | None = None
    """Sum of all example lengths; None without a tokenizer."""
    pairs: dict | None = None
    """Preference datasets: {"count", "unit" ("tokens" or "words"), "chosen" and
    "rejected" ({"mean", "p50", "max"} of the answers alone), "chosen_longer" (share of
    pairs whose chosen answer is the longer one)}; None for other formats."""

    def to_dict(self) -> dict:
        return asdict(self)


def report(path: str | Path, tokenizer=None, max_seq_len: int | None = None,
           skip_bad_lines: bool = True) -> DatasetReport:
    """Load `path` and report on it (bad lines listed rather than raised, by default)."""
    return build_report(load(path, skip_bad_lines=skip_bad_lines), tokenizer, max_seq_len)


def build_report(loaded: LoadedDataset, tokenizer=None, max_seq_len: int | None = None) -> DatasetReport:
    """Counts, token statistics and a preview for a loaded dataset."""
    problems = list(loaded.problems)
    lengths: list[int] = []
    if tokenizer is not None:
        counts, rejected = count_tokens(tokenizer, loaded.examples)
        lengths = [c for c in counts if c is not None]
        problems += [Problem(loaded.examples[i].line, "INPUT_DATASET_INVALID", msg)
                     for i, msg in rejected.items()]
        problems.sort(key=lambda p: p.line or 0)
    return DatasetReport(
        path=loaded.path, format=loaded.format, examples=len(loaded.examples), problems=problems,
        token_percentiles=_percentiles(lengths) if lengths else None,
        histogram=_histogram(lengths),
        duplicates=_count_duplicates(loaded.examples),
        empty=sum(1 for ex in loaded.examples if _is_empty(ex)),
        over_long=sum(1 for n in lengths if max_seq_len and n > max_seq_len),
        max_seq_len=max_seq_len,
        preview=[_preview(ex) for ex in loaded.examples[:PREVIEW_EXAMPLES]],
        total_tokens=sum(lengths) if lengths else None,
        pairs=_pair_stats(loaded.examples, tokenizer) if loaded.format in PREFERENCE_FORMATS else None,
    )


def _pair_stats(examples: list[Example], tokenizer=None) -> dict:
    """How long chosen and rejected answers are: a preference the data teaches by accident
    (say, always the longer answer) shows here before it is trained in."""
    def size(turns: list[dict]) -> int:
        text = "".join(m["content"] for m in turns)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else len(text.split())

    chosen = [size(ex.chosen) for ex in examples]
    rejected = [size(ex.rejected or []) for ex in examples]

    def stats(values: list[int]) -> dict:
        ordered = sorted(values)
        return {"mean": round(sum(values) / len(values), 1), "p50": ordered[(len(ordered) - 1) // 2],
                "max": ordered[-1]} if values else {"mean": 0, "p50": 0, "max": 0}

    longer = sum(c > r for c, r in zip(chosen, rejected))
    return {"count": len(examples), "unit": "tokens" if tokenizer else "words", "chosen": stats(chosen),
            "rejected": stats(rejected), "chosen_longer": round(longer / len(examples), 3) if examples else 0.0}


def _percentiles(lengths: list[int]) -> dict[str, int]:
    ordered = sorted(lengths)
    # Nearest rank: every figure is a length some example really has.
    rank = {p: ordered[max(0, -(-p * len(ordered) // 100) - 1)] for p in (50, 90, 95, 99)}
    return {"p50": rank[50], "p90": rank[90], "p95": rank[95], "p99": rank[99], "max": ordered[-1]}


def _histogram(lengths: list[int]) -> list[dict]:
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // HISTOGRAM_BINS))
    # Token counts are integers, so both ends are inclusive: labels read "17-19", "20-22".
    bins = [{"bin_start": low + i * width, "bin_end": low + (i + 1) * width - 1, "count": 0}
            for i in range((high - low) // width + 1)]
    for n in lengths:
        bins[(n - low) // width]["count"] += 1
    return bins


def _count_duplicates(examples: list[Example]) -> int:
    seen: set[tuple] = set()
    duplicates = 0
    for ex in examples:
        key = _normalised(ex)
        duplicates += key in seen
        seen.add(key)
    return duplicates


def _is_empty(ex: Example) -> bool:
    if not ex.messages:
        return not (ex.text or "").strip()
    return all(not m["content"].strip() for m in ex.messages if m["role"] == "assistant")


def _preview(ex: Example) -> list[dict]:
    if ex.rejected is not None:
        return ([dict(m) for m in ex.prompt] + [{**m, "role": "chosen"} for m in ex.chosen]
                + [{**m, "role": "rejected"} for m in ex.rejected])
    return [dict(m) for m in ex.messages] or [{"role": "text", "content": ex.text or ""}]
