"""The run store's tables, and how a runs.db made by an older version is brought up to date.

Tables: `runs` (one row per run, its status and summary; an export's `parent` is the run
it exported), `events` (every event a run emitted, in order) and `artifacts` (files a run
produced).
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    kind TEXT NOT NULL DEFAULT 'train',
    status TEXT NOT NULL,
    model TEXT,
    dataset TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    last_loss REAL,
    final_loss REAL,
    error_code TEXT,
    error_message TEXT,
    error_hint TEXT,
    pid INTEGER,
    pid_started REAL,
    host TEXT,
    parent TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


def create(conn: sqlite3.Connection) -> None:
    """Create whatever is missing; safe to run in every process at every start."""
    conn.executescript(SCHEMA)
    _migrate(conn)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a runs.db made by an older version up to the current schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if "parent" not in columns:
        try:
            conn.execute("ALTER TABLE runs ADD COLUMN parent TEXT")
        except sqlite3.OperationalError as err:
            if "duplicate column" not in str(err):  # another process migrated it just now
                raise
    conn.execute("CREATE INDEX IF NOT EXISTS runs_parent ON runs (parent)")
