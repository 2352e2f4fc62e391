"""Chat feedback on a run's answers, and the preference pairs it makes.

Each 👍, 👎 or edit given in the chat is one JSON line appended to the run's
`feedback.jsonl` (`RunDir.feedback`); the file is never rewritten, so the raw judgements
stay as they were given. `pairs` derives (chosen, rejected) pairs from the latest verdict
on each answer: an edited text and a 👍 answer are chosen, a 👎 answer and the answer that
was edited are rejected, and every chosen text pairs with every rejected one to the same
prompt. `write_dataset` writes them in TRL's conversational preference format.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backpropagate_core import platform_support
from backpropagate_core.errors import BackpropError, is_disk_full
from backpropagate_core.logs import get_logger
from backpropagate_core.runs.layout import RunDir

VERDICTS = ("up", "down", "edit")
ROLES = ("system", "user", "assistant")
MIN_PAIRS = 4
"""Fewer pairs than this are too few for a preference run to move the model."""

_log = get_logger(__name__)


@dataclass(frozen=True)
class FeedbackItem:
    id: str
    ts: float
    prompt: list[dict]
    """The conversation that was answered: {"role", "content"} messages ending with the user's turn."""
    answer: str
    """What the model said."""
    verdict: str
    """"up", "down" or "edit"."""
    edited: str | None = None
    """The answer the user wanted (verdict "edit" only)."""
    source: str | None = None
    """Which model answered (a run id, a checkpoint, a GGUF file)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[dict]
    chosen: str
    rejected: str
    feedback_ids: tuple[str, ...]
    """The feedback records the pair came from."""

    def to_record(self) -> dict:
        """One line of TRL's conversational preference format."""
        return {"prompt": self.prompt,
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    def to_dict(self) -> dict:
        return {**asdict(self), "feedback_ids": list(self.feedback_ids)}


def record(run_dir: RunDir | Path, prompt: list[dict], answer: str, verdict: str,
           edited: str | None = None, source: str | None = None) -> FeedbackItem:
    """Append one verdict on an answer to the run's feedback file and return it."""
    run_dir = _as_run_dir(run_dir)
    problems = _problems(prompt, answer, verdict, edited, source)
    if problems:
        raise BackpropError("INPUT_FEEDBACK_INVALID", "; ".join(problems))
    if not run_dir.path.is_dir():
        raise BackpropError("STATE_RUN_NOT_FOUND", f"there is no run folder at {run_dir.path}")
    item = FeedbackItem(id=uuid.uuid4().hex[:12], ts=time.time(),
                        prompt=[{"role": m["role"], "content": m["content"]} for m in prompt],
                        answer=answer, verdict=verdict, edited=edited, source=source)
    _append(run_dir.feedback, (json.dumps(item.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
    return item


def items(run_dir: RunDir | Path) -> list[FeedbackItem]:
    """Every readable record of the run's feedback, in the order it was given."""
    path = _as_run_dir(run_dir).feedback
    if not path.is_file():
        return []
    found = []
    for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        item = _parse(line)
        if item is None:
            # A line cut short by a crash mid-write, or edited by hand; the rest still count.
            _log.warning("%s: line %d is not a feedback record; skipped", path, n)
        else:
            found.append(item)
    return found


def latest(items: list[FeedbackItem]) -> list[FeedbackItem]:
    """The last verdict on each (prompt, answer), so a user can change their mind."""
    last: dict[tuple, FeedbackItem] = {}
    for item in items:
        key = (_prompt_key(item.prompt), _norm(item.answer))
        last.pop(key, None)  # re-insert, so the order is that of the latest verdicts
        last[key] = item
    return list(last.values())


def pairs(items: list[FeedbackItem]) -> list[PreferencePair]:
    """(chosen, rejected) pairs from the latest verdicts, per prompt, without duplicates."""
    groups: dict[tuple, list[FeedbackItem]] = {}
    for item in latest(items):
        groups.setdefault(_prompt_key(item.prompt), []).append(item)
    found, seen = [], set()
    for key, group in groups.items():
        good = [(i.edited if i.verdict == "edit" else i.answer, i) for i in group if i.verdict in ("up", "edit")]
        bad = [(i.answer, i) for i in group if i.verdict in ("down", "edit")]
        for chosen, good_item in good:
            for rejected, bad_item in bad:
                # The loader reports empty sides and identical pairs as problems, and a
                # pair whose sides agree teaches nothing.
                if not chosen.strip() or not rejected.strip() or _norm(chosen) == _norm(rejected):
                    continue
                if (key, _norm(chosen), _norm(rejected)) in seen:
                    continue
                seen.add((key, _norm(chosen), _norm(rejected)))
                ids = tuple(dict.fromkeys((good_item.id, bad_item.id)))
                found.append(PreferencePair(good_item.prompt, chosen, rejected, ids))
    return found


def counts(items: list[FeedbackItem]) -> dict[str, int]:
    """How many answers stand at each verdict (the latest verdict on each)."""
    current = latest(items)
    return {verdict: sum(i.verdict == verdict for i in current) for verdict in VERDICTS}


def shortfall(pairs: list[PreferencePair]) -> str | None:
    """Why there is not enough feedback to train on yet; None when there is."""
    n = len(pairs)
    if n >= MIN_PAIRS:
        return None
    return (f"{n} preference pair{'' if n == 1 else 's'} so far; train on feedback needs at least "
            f"{MIN_PAIRS}: correct or rate more answers")


def require_enough(pairs: list[PreferencePair]) -> None:
    """Raise INPUT_FEEDBACK_TOO_FEW unless there are at least MIN_PAIRS pairs."""
    message = shortfall(pairs)
    if message:
        raise BackpropError("INPUT_FEEDBACK_TOO_FEW", message)


def write_dataset(pairs: list[PreferencePair], path: str | Path, overwrite: bool = False) -> Path:
    """Write the pairs as a JSON-lines preference dataset, atomically.

    A different file already at `path` is only replaced with `overwrite` (what a caller
    regenerating its own file passes); the same content is left as it is.
    """
    path = Path(path).expanduser()
    data = "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in pairs).encode("utf-8")
    if path.exists() and not overwrite and not (path.is_file() and path.read_bytes() == data):
        raise BackpropError("INPUT_FILE_EXISTS", f"{path} already exists and is not this feedback dataset")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer, so two regenerations at once never mix their bytes.
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        platform_support.replace(Path(partial), path)
    except BaseException as err:
        Path(partial).unlink(missing_ok=True)
        if isinstance(err, OSError) and is_disk_full(err):
            raise BackpropError("STATE_DISK_FULL", f"the disk filled up while writing {path}") from err
        raise
    return path


# ---- helpers --------------------------------------------------------------------------

def _as_run_dir(run_dir: RunDir | Path | str) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))


def _problems(prompt: Any, answer: Any, verdict: Any, edited: Any, source: Any) -> list[str]:
    """Everything wrong with one record, so a caller fixes all of it at once."""
    problems = []
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in prompt):
        problems.append("prompt must be a non-empty list of {role, content} messages "
                        "(roles system, user, assistant)")
    elif prompt[-1]["role"] != "user":
        problems.append("prompt must end with the user's turn")
    if not isinstance(answer, str):
        problems.append("answer must be text")
    if verdict not in VERDICTS:
        problems.append(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    if verdict == "edit" and not (isinstance(edited, str) and edited.strip()):
        problems.append("an edit needs the answer you wanted (edited), and it is empty")
    if verdict != "edit" and edited is not None:
        problems.append(f"edited is only for verdict 'edit', not {verdict!r}")
    if source is not None and not isinstance(source, str):
        problems.append("source must be text")
    return problems


def _parse(line: bytes) -> FeedbackItem | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) \
            or not isinstance(raw.get("ts"), (int, float)):
        return None
    fields = {k: raw.get(k) for k in ("prompt", "answer", "verdict", "edited", "source")}
    if _problems(**fields):
        return None
    return FeedbackItem(id=raw["id"], ts=float(raw["ts"]), **fields)


def _append(path: Path, data: bytes) -> None:
    """One write of a whole record to the end of the file.

    O_APPEND makes the kernel seek to the end as part of each write, so two writers never
    overwrite each other, and one write per record keeps their lines apart. A line left
    without its newline by a crash would swallow the next record; it gets a newline first.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o600)
        try:
            if os.fstat(fd).st_size:
                os.lseek(fd, -1, os.SEEK_END)
                if os.read(fd, 1) != b"\n":
                    data = b"\n" + data
            if os.write(fd, data) != len(data):  # a regular file takes less only when the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            os.close(fd)
    except OSError as err:
        if is_disk_full(err):
            raise BackpropError("STATE_DISK_FULL", f"the disk filled up while writing {path}") from err
        raise


def _norm(text: str) -> str:
    return " ".join(text.split())


def _prompt_key(prompt: list[dict]) -> tuple:
    return tuple((m["role"], _norm(m["content"])) for m in prompt)
