"""The run store: one SQLite file that every process (CLI, worker, UI) reads and writes.

Tables: `runs` (one row per run, its status and summary), `events` (every event a run
emitted, in order) and `artifacts` (files a run produced). A run of kind "export" has
the training run it exports as its `parent`; its status is its own, never the parent's. WAL mode plus a busy timeout
lets several processes write at once without losing rows. Each run also has a folder
under `<home>/runs/<run_id>/` holding `config.json`, checkpoints and outputs, so the
folder alone is enough to resume or export the run.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from backpropagate_core.runs import events as ev
from backpropagate_core.runs import schema
from backpropagate_core.errors import BackpropError
from backpropagate_core.redact import redact_obj

ACTIVE = ("queued", "running")
STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")



@dataclass
class Run:
    id: str
    name: str | None
    kind: str
    status: str
    model: str | None
    dataset: str | None
    config: dict
    summary: dict
    run_dir: Path
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    final_loss: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_hint: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    host: str | None = None
    parent: str | None = None
    """The run this one was made from (an export's training run); None for a training run."""
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir)
        d["duration_s"] = self.duration_s
        return d


def new_run_id() -> str:
    return str(uuid.uuid4())


class RunStore:
    """Thin access layer over the SQLite file; safe to use from many processes."""

    def __init__(self, home: Path | str | None = None) -> None:
        if home is None:
            from backpropagate_core.config import load_settings
            home = load_settings().home
        self.home = Path(home).expanduser()
        self.runs_dir = self.home / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "runs.db"
        with self._conn() as conn:
            schema.create(conn)

    def stamp(self) -> tuple:
        """Changes whenever anything is written: the size and modification time of the
        database and its write-ahead log. A stat call, so a page can poll it many times a
        second and query the store only after a write."""
        out = []
        for path in (self.db_path, self.db_path.with_name(self.db_path.name + "-wal")):
            try:
                info = path.stat()
                out.append((info.st_mtime_ns, info.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on the busy
        # timeout instead of failing with "database is locked" halfway through.
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # ---- runs -------------------------------------------------------------------
    def create_run(self, *, config: dict, model: str | None, dataset: str | None,
                   name: str | None = None, kind: str = "train", run_id: str | None = None,
                   status: str = "queued", parent: str | None = None) -> Run:
        run_id = run_id or new_run_id()
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        config = redact_obj(config)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, kind, status, model, dataset, config, run_dir, created_at,"
                " parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, kind, status, model, dataset, json.dumps(config, default=str),
                 str(run_dir), time.time(), parent))
        return self.get(run_id)

    def update(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        for key in ("config", "summary"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(redact_obj(fields[key]), default=str)
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._write() as conn:
            conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def merge_summary(self, run_id: str, **values: Any) -> None:
        """Add keys to a run's summary JSON (verification figures, forgetting, ...)."""
        with self._write() as conn:
            row = conn.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
            summary = json.loads(row["summary"]) if row else {}
            summary.update(redact_obj(values))
            conn.execute("UPDATE runs SET summary = ? WHERE id = ?",
                         (json.dumps(summary, default=str), run_id))

    def get(self, run_id_or_prefix: str) -> Run:
        """The run whose id is, or starts with, the given text."""
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE id LIKE ? || '%' ORDER BY created_at",
                                (run_id_or_prefix.strip(),)).fetchall()
            exact = [r for r in rows if r["id"] == run_id_or_prefix]
            rows = exact or rows
            if not rows or not run_id_or_prefix.strip():
                raise BackpropError("STATE_RUN_NOT_FOUND", f"no run matches {run_id_or_prefix!r}")
            if len(rows) > 1:
                ids = ", ".join(r["id"][:12] for r in rows[:5])
                raise BackpropError("STATE_RUN_AMBIGUOUS",
                                    f"{len(rows)} runs start with {run_id_or_prefix!r}: {ids}")
            arts = conn.execute("SELECT name, path FROM artifacts WHERE run_id = ?",
                                (rows[0]["id"],)).fetchall()
        return _row_to_run(rows[0], {a["name"]: a["path"] for a in arts})

    def list(self, status: str | None = None, limit: int | None = None,
             kind: str | None = None, parent: str | None = None,
             top_level: bool = False) -> list[Run]:
        """Runs, newest first. `parent`: only the children of that run (its exports);
        `top_level`: only runs without a parent (what the Runs page lists)."""
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if status:
            sql += " AND status = ?"
            args.append(status)
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if parent:
            sql += " AND parent = ?"
            args.append(parent)
        if top_level:
            sql += " AND parent IS NULL"
        sql += " ORDER BY created_at DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
            arts: dict[str, dict[str, str]] = {}
            for a in conn.execute("SELECT run_id, name, path FROM artifacts"):
                arts.setdefault(a["run_id"], {})[a["name"]] = a["path"]
        return [_row_to_run(r, arts.get(r["id"], {})) for r in rows]

    def delete(self, run_id: str, remove_files: bool = True) -> None:
        """Delete a finished run and its children (exports, whose files are in its folder)."""
        run = self.get(run_id)
        doomed = [run, *self.list(parent=run.id)]
        for r in doomed:
            if r.active:
                raise BackpropError("STATE_RUN_ACTIVE", f"run {r.id[:8]} is {r.status}")
        with self._write() as conn:
            for r in doomed:
                for table, col in (("events", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
                    conn.execute(f"DELETE FROM {table} WHERE {col} = ?", (r.id,))
        for r in doomed:
            if remove_files and r.run_dir.is_dir() and r.run_dir.parent == self.runs_dir:
                import shutil
                shutil.rmtree(r.run_dir, ignore_errors=True)

    # ---- worker liveness ---------------------------------------------------------
    def claim(self, run_id: str, pid: int | None = None) -> None:
        """Record which process runs this run, so a dead worker can be detected."""
        import psutil
        pid = pid or os.getpid()
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = None
        self.update(run_id, pid=pid, pid_started=started, host=socket.gethostname())

    def reap_dead(self) -> list[str]:
        """Mark active runs whose worker process is gone as interrupted; return their ids."""
        import psutil
        dead = []
        host = socket.gethostname()
        for run in self.list():
            if not run.active or run.pid is None or run.host != host:
                continue
            if _process_alive(psutil, run.pid, run.pid_started):
                continue
            self.record(ev.Failed(run.id, code="RUNTIME_WORKER_DIED",
                                  message=f"worker process {run.pid} ended without reporting"),
                        status="interrupted")
            dead.append(run.id)
        return dead

    # ---- events -----------------------------------------------------------------
    def record(self, event: ev.Event, status: str | None = None) -> int:
        """Store an event and fold it into the run row; returns the event's row id."""
        data = redact_obj(event.to_dict())
        updates: dict[str, Any] = {}
        if isinstance(event, ev.RunStarted):
            updates.update(status="running", started_at=event.ts, total_steps=event.total_steps,
                           step=event.resumed_from_step, finished_at=None, error_code=None,
                           error_message=None, error_hint=None)
        elif isinstance(event, ev.Step):
            updates.update(step=event.step, total_steps=event.total, last_loss=event.loss)
        elif isinstance(event, ev.Finished):
            updates.update(status="completed", finished_at=event.ts, final_loss=event.final_loss,
                           step=event.steps)
        elif isinstance(event, ev.Failed):
            updates.update(status=status or "failed", finished_at=event.ts,
                           error_code=event.code, error_message=data["message"],
                           error_hint=data["hint"])
        elif isinstance(event, ev.Cancelled):
            updates.update(status="cancelled", finished_at=event.ts, step=event.step)
        cols = ", ".join(f"{k} = ?" for k in updates)
        with self._write() as conn:
            cur = conn.execute("INSERT INTO events (run_id, ts, type, data) VALUES (?, ?, ?, ?)",
                               (event.run_id, event.ts, event.type, json.dumps(data, default=str)))
            if updates:
                conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*updates.values(), event.run_id))
            if isinstance(event, ev.Finished):
                for name, path in event.artifacts.items():
                    _put_artifact(conn, event.run_id, name, str(path), {})
                _fold_summary(conn, event.run_id, {k: data[k] for k in _RESULT_KEYS if data.get(k) is not None})
            return cur.lastrowid

    def events(self, run_id: str, after_id: int = 0, types: tuple[str, ...] | None = None,
               limit: int | None = None) -> list[tuple[int, dict]]:
        """(row id, event dict) pairs newer than `after_id`, oldest first; for tailing."""
        sql, args = "SELECT id, data FROM events WHERE run_id = ? AND id > ?", [run_id, after_id]
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args += list(types)
        sql += " ORDER BY id"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        with self._conn() as conn:
            return [(r["id"], json.loads(r["data"])) for r in conn.execute(sql, args)]

    def add_artifact(self, run_id: str, name: str, path: str | Path, **meta: Any) -> None:
        with self._write() as conn:
            _put_artifact(conn, run_id, name, str(path), meta)

    def artifacts(self, run_id: str) -> list[dict]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM artifacts WHERE run_id = ? ORDER BY created_at",
                                (run_id,)).fetchall()
        return [{"name": r["name"], "path": r["path"], "meta": json.loads(r["meta"]),
                 "created_at": r["created_at"]} for r in rows]

    def sink(self) -> "StoreSink":
        return StoreSink(self)


class StoreSink:
    """The run store as an event sink."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def __call__(self, event: ev.Event) -> None:
        self.store.record(event)


_RESULT_KEYS = ("best_step", "best_score", "base_score", "stopped_early")
"""What a finished run's summary keeps from its Finished event (the Runs page reads them)."""


def _fold_summary(conn: sqlite3.Connection, run_id: str, values: dict) -> None:
    if not values:
        return
    row = conn.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
    summary = {**(json.loads(row["summary"]) if row else {}), **values}
    conn.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps(summary, default=str), run_id))


def _put_artifact(conn: sqlite3.Connection, run_id: str, name: str, path: str, meta: dict) -> None:
    conn.execute("INSERT OR REPLACE INTO artifacts (run_id, name, path, meta, created_at)"
                 " VALUES (?, ?, ?, ?, ?)",
                 (run_id, name, path, json.dumps(redact_obj(meta), default=str), time.time()))


_RUN_FIELDS = {f.name for f in fields(Run)}


def _row_to_run(row: sqlite3.Row, artifacts: dict[str, str]) -> Run:
    d = dict(row)
    d["config"] = json.loads(d["config"] or "{}")
    d["summary"] = json.loads(d["summary"] or "{}")
    d["run_dir"] = Path(d["run_dir"])
    # Databases made by older versions can hold columns Run no longer has.
    return Run(**{k: v for k, v in d.items() if k in _RUN_FIELDS}, artifacts=artifacts)


def _process_alive(psutil, pid: int, started: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A reused pid belongs to a process created later than ours was.
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.Error:
        return False
