"""Datasets: load a file or folder, normalise it to chat messages, split it, report on it.

    loaded = load("examples/quickstart.jsonl")          # LoadedDataset of Examples
    train, val = split(loaded.examples, 0.1, seed=42)
    batch_item = tokenize(train[0], tokenizer, 1024)     # labels only on assistant replies
    print(report("examples/quickstart.jsonl", tokenizer).to_dict())

Files: .jsonl, .json (an array or JSON lines), .csv, .parquet, and folders (a
`save_to_disk` dataset, or a folder of such files). Record shapes and their
normalisation live in `dataset_formats`; templating and label masks in `chat_templates`.
Every malformed record is an INPUT_DATASET_INVALID error naming the file and line, or,
with `skip_bad_lines`, a `Problem` in the result.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backpropagate_core.data.templates import ensure_chat_template, tokenize
from backpropagate_core.data.formats import (FORMATS, Example, RecordError, detect, has_key_of, normalise,
                                             normalise_preference)
from backpropagate_core.errors import BackpropError

__all__ = [
    "FORMATS", "Problem", "Example", "LoadedDataset", "load", "split", "ensure_chat_template", "tokenize",
]

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
_FOLDER_METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}
MIN_EXAMPLES_FOR_VALIDATION = 10
"""Below this many examples every one is needed for training; no validation split."""


@dataclass
class Problem:
    line: int | None
    """1-based line (or record number) in the file; None for file-wide problems."""
    code: str
    """Error code from errors.CATALOG."""
    message: str
    """What is wrong: "line N: ..." ("record N: ..." for parquet and saved datasets)."""


@dataclass
class LoadedDataset:
    path: str
    """The file or folder it came from."""
    format: str
    """One of FORMATS."""
    examples: list[Example]
    """Every usable example, in file order."""
    problems: list[Problem] = field(default_factory=list)
    """Records skipped with skip_bad_lines, in file order."""


# ---- loading ----------------------------------------------------------------------

Record = tuple[int, Any]
"""(line or record number, parsed object or the RecordError that parsing raised)."""


def load(path: str | Path, *, skip_bad_lines: bool = False, format: str | None = None) -> LoadedDataset:
    """Read and normalise a dataset; `format` forces one of FORMATS instead of detecting."""
    path = Path(path).expanduser()
    if format is not None and format not in FORMATS:
        raise BackpropError("INPUT_DATASET_FORMAT_UNKNOWN",
                            f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise BackpropError("INPUT_DATASET_NOT_FOUND", f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path, skip_bad_lines, format)
    records, unit = _read_file(path)
    return _normalise_records(path, records, unit, skip_bad_lines, format)


def _read_file(path: Path) -> tuple[list[Record], str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path.read_bytes()), "line"
        if suffix == ".json":
            return _read_json(path.read_bytes()), "line"
        if suffix == ".csv":
            return _read_csv(path), "line"
        if suffix == ".parquet":
            return _read_parquet(path), "record"
    except OSError as exc:
        raise BackpropError("INPUT_DATASET_NOT_FOUND", f"{path}: cannot read: {exc.strerror or exc}") from None
    raise BackpropError("INPUT_DATASET_FORMAT_UNKNOWN",
                        f"{path}: unsupported file type {suffix or '(none)'!r}; "
                        f"use {', '.join(FILE_TYPES)} or a dataset folder")


def _read_jsonl(content: bytes) -> list[Record]:
    # Parsed line by line (not by a library) so every bad line is reported with its number.
    records = []
    for n, raw in enumerate(content.splitlines(), 1):
        try:
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            records.append((n, RecordError("is not valid UTF-8")))
            continue
        if not text:
            continue
        try:
            records.append((n, json.loads(text)))
        except json.JSONDecodeError as exc:
            records.append((n, RecordError(f"invalid JSON ({exc.msg} at column {exc.colno})")))
    return records


def _read_json(content: bytes) -> list[Record]:
    """A JSON array (each element numbered by the line it starts on) or JSON lines."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [(1, RecordError(f"is not valid UTF-8 (byte {exc.start})"))]
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _read_json_array(text)
    if stripped.startswith("{") and "\n" in stripped.rstrip():
        try:  # one pretty-printed record rather than JSON lines
            return [(1, json.loads(text))]
        except json.JSONDecodeError:
            pass
    return _read_jsonl(content)


def _read_json_array(text: str) -> list[Record]:
    decoder, records = json.JSONDecoder(), []
    pos, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    while True:
        start = _skip_space(text, pos)
        line += text.count("\n", pos, start)
        if start >= len(text):
            records.append((line, RecordError("the JSON array is not closed with ']'")))
            return records
        if text[start] == "]":
            return records
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            # The rest of an array cannot be resynchronised after a syntax error.
            records.append((exc.lineno, RecordError(f"invalid JSON ({exc.msg} at column {exc.colno})")))
            return records
        records.append((line, obj))
        line += text.count("\n", start, pos)
        after = _skip_space(text, pos)
        line += text.count("\n", pos, after)
        pos = after + 1 if after < len(text) and text[after] == "," else after


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path) -> list[Record]:
    records = []
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:  # reads the header; an empty file has none
            return records
        start = reader.line_num + 1
        try:
            for row in reader:
                if None in row:
                    records.append((start, RecordError("has more cells than the header has columns")))
                else:
                    records.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:  # e.g. a NUL byte: the rest of the file cannot be trusted
            records.append((start, RecordError(f"unreadable CSV ({exc})")))
    return records


PARQUET_MAX_ROWS = 5_000_000
PARQUET_MAX_BYTES = 4 << 30
"""Limits checked from a parquet file's metadata before any row is read: a few MB of
compressed file can claim gigabytes of rows (a "parquet bomb")."""


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        meta = file.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if meta.num_rows > PARQUET_MAX_ROWS or size > PARQUET_MAX_BYTES:
            raise BackpropError("INPUT_DATASET_INVALID",
                                f"{path}: {meta.num_rows} rows and {size / 2**30:.1f} GiB uncompressed are "
                                f"over the limits ({PARQUET_MAX_ROWS} rows, {PARQUET_MAX_BYTES / 2**30:.0f} GiB)",
                                hint="Split the file, or load it with the datasets library and save a sample.")
        rows = [row for i in range(meta.num_row_groups) for row in file.read_row_group(i).to_pylist()]
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BackpropError("INPUT_DATASET_INVALID", f"{path}: not a readable parquet file: {exc}") from None
    return [(n, row) for n, row in enumerate(rows, 1)]


def _load_folder(path: Path, skip_bad_lines: bool, format: str | None) -> LoadedDataset:
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return _normalise_records(path, _read_saved_dataset(path), "record", skip_bad_lines, format)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _through_link(path, p)
                   and p.suffix.lower() in FILE_TYPES and p.name not in _FOLDER_METADATA
                   and not p.name.startswith("."))
    # Hub-style folders hold train and test files side by side; never train on the test split.
    train_files = [p for p in files if "train" in p.relative_to(path).as_posix().lower()]
    files = train_files or files
    if not files:
        raise BackpropError("INPUT_DATASET_EMPTY",
                            f"{path}: the folder has no {', '.join(FILE_TYPES)} files or saved dataset")
    merged = LoadedDataset(str(path), format or "", [], [])
    for file in files:
        part = load(file, skip_bad_lines=skip_bad_lines, format=format or merged.format or None)
        merged.format = part.format
        merged.examples += part.examples
        merged.problems += [Problem(p.line, p.code, f"{file.relative_to(path)}: {p.message}")
                            for p in part.problems]
    return merged


def _through_link(root: Path, file: Path) -> bool:
    """Whether `file` or a folder between it and `root` is a symlink: one planted in the
    folder could point anywhere, so folder loading never follows one."""
    rel = file.relative_to(root)
    return any((root / part).is_symlink() for part in (rel, *rel.parents) if str(part) != ".")


def _read_saved_dataset(path: Path) -> list[Record]:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise BackpropError("INPUT_DATASET_INVALID", f"{path}: not a readable dataset folder: {exc}") from None
    if isinstance(saved, datasets.DatasetDict):
        saved = saved["train"] if "train" in saved else saved[next(iter(saved))]
    return [(n, row) for n, row in enumerate(saved, 1)]


def _normalise_records(path: Path, records: list[Record], unit: str,
                       skip_bad_lines: bool, format: str | None) -> LoadedDataset:
    if not records:
        raise BackpropError("INPUT_DATASET_EMPTY", f"{path}: the file has no records")
    fmt = format or next((f for _, r in records if (f := detect(r))), None)
    if fmt is None and any(isinstance(r, dict) for _, r in records):
        keys = next(sorted(r) for _, r in records if isinstance(r, dict))
        raise BackpropError("INPUT_DATASET_FORMAT_UNKNOWN",
                            f"{path}: no known dataset format; records have the fields {keys}")
    examples, problems = [], []
    for n, record in records:
        try:
            examples.append(_to_example(record, fmt, n))
        except RecordError as exc:
            problem = Problem(n, "INPUT_DATASET_INVALID", f"{unit} {n}: {exc}")
            if not skip_bad_lines:
                raise BackpropError("INPUT_DATASET_INVALID", f"{path}: {problem.message}") from None
            problems.append(problem)
    if not examples:
        first = f"; first problem: {problems[0].message}" if problems else ""
        raise BackpropError("INPUT_DATASET_EMPTY",
                            f"{path}: no usable examples ({len(problems)} bad records{first})")
    return LoadedDataset(str(path), fmt, examples, problems)


def _to_example(record: Any, fmt: str, n: int) -> Example:
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError(f"is a JSON {type(record).__name__}, not an object")
    if not has_key_of(record, fmt):
        found = detect(record)
        if found is None:
            raise RecordError(f"has none of the fields of the {fmt} format (found {sorted(record)})")
        raise RecordError(f"is in {found} format but the file is in {fmt} format (mixed formats)")
    if fmt == "preference":
        prompt, chosen, rejected = normalise_preference(record)
        return Example(prompt + chosen, n, rejected=rejected, chosen_from=len(prompt))
    messages, text = normalise(record, fmt)
    return Example(messages, n, text)


# ---- split ------------------------------------------------------------------------

def split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation), the same for the same seed; both keep file order.

    Validation is empty when val_fraction is 0 or there are fewer than
    MIN_EXAMPLES_FOR_VALIDATION examples, and never takes the last training example.
    It is chosen so that its score means something: exact repeats of an example stay on
    one side (a held-out copy of a training example would only measure copying), and
    examples whose answer is also given, to other wording, by a training example are held
    out first, while every answer keeps at least one example in training (a fact held
    out entirely could never be answered, whatever the model learned).
    """
    n = len(examples)
    if val_fraction <= 0 or n < MIN_EXAMPLES_FOR_VALIDATION:
        return list(examples), []
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    groups: dict[tuple, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(_normalised(ex), []).append(i)
    by_answer: dict[str, int] = {}
    for key in groups:
        by_answer[key[-1]] = by_answer.get(key[-1], 0) + 1
    order = list(groups)
    random.Random(seed).shuffle(order)
    # Paraphrases of an answer first: the held-out score then measures new wording.
    order.sort(key=lambda key: by_answer[key[-1]] < 2)
    paraphrased = any(count >= 2 for count in by_answer.values())
    val_idx: set[int] = set()
    for key in order:
        if len(val_idx) >= n_val:
            break
        if paraphrased and by_answer[key[-1]] < 2:
            continue  # the last example of an answer stays in training
        if len(val_idx) + len(groups[key]) > n - 1:
            continue
        val_idx.update(groups[key])
        by_answer[key[-1]] -= 1
    if not val_idx:  # every answer is unique: any example will do
        val_idx = set(random.Random(seed).sample(range(n), n_val))
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    val = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, val


def _normalised(ex: Example) -> tuple:
    if not ex.messages:
        return (" ".join((ex.text or "").split()).lower(),)
    return tuple((m["role"], " ".join(m["content"].split()).lower()) for m in ex.messages)
