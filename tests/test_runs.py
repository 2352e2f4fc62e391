import multiprocessing as mp

import pytest

from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore


def _writer(home: str, run_id: str, n: int) -> None:
    store = RunStore(home)
    for i in range(n):
        store.record(ev.Step(run_id, step=i + 1, total=n, loss=1.0 / (i + 1), lr=1e-4))


def test_concurrent_writers_lose_nothing(tmp_path):
    store = RunStore(tmp_path)
    runs = [store.create_run(config={}, model="m", dataset="d") for _ in range(4)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), r.id, 60)) for r in runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for r in runs:
        steps = [e["step"] for _, e in store.events(r.id)]
        assert steps == list(range(1, 61))
        assert store.get(r.id).step == 60


def test_prefix_lookup_and_ambiguity(tmp_path):
    store = RunStore(tmp_path)
    a = store.create_run(config={}, model="m", dataset="d", run_id="abc-111")
    store.create_run(config={}, model="m", dataset="d", run_id="abc-222")
    assert store.get("abc-1").id == a.id
    with pytest.raises(BackpropError) as err:
        store.get("abc")
    assert err.value.code == "STATE_RUN_AMBIGUOUS"
    with pytest.raises(BackpropError) as err:
        store.get("zzz")
    assert err.value.code == "STATE_RUN_NOT_FOUND"


def test_events_fold_into_run_row(tmp_path):
    store = RunStore(tmp_path)
    run = store.create_run(config={"x": 1}, model="m", dataset="d")
    store.record(ev.RunStarted(run.id, config={}, total_steps=10))
    assert store.get(run.id).status == "running"
    store.record(ev.Step(run.id, step=3, total=10, loss=2.5, lr=1e-4))
    store.record(ev.Finished(run.id, final_loss=1.5, steps=10, artifacts={"adapter": "/x/adapter"}))
    got = store.get(run.id)
    assert (got.status, got.final_loss, got.step) == ("completed", 1.5, 10)
    assert got.artifacts == {"adapter": "/x/adapter"}
    assert [e["type"] for _, e in store.events(run.id)] == ["run_started", "step", "finished"]


def test_dead_worker_is_marked_interrupted(tmp_path):
    import subprocess
    import sys

    store = RunStore(tmp_path)
    run = store.create_run(config={}, model="m", dataset="d")
    store.record(ev.RunStarted(run.id, config={}, total_steps=10))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    store.claim(run.id, pid=proc.pid)
    proc.wait()
    assert store.reap_dead() == [run.id]
    got = store.get(run.id)
    assert got.status == "interrupted" and got.error_code == "RUNTIME_WORKER_DIED"


def test_secrets_are_redacted_in_store(tmp_path):
    store = RunStore(tmp_path)
    run = store.create_run(config={"hub_token": "hf_abcdefghijklmnop"}, model="m", dataset="d")
    store.record(ev.LogLine(run.id, message="using token hf_abcdefghijklmnopqrs"))
    text = (run.run_dir / "config.json").read_text() + str(store.events(run.id))
    assert "hf_abcdefghijklmnop" not in text
    assert "hf_abcdefghijklmnop" not in str(store.get(run.id).config)


def test_delete_refuses_active_run(tmp_path):
    store = RunStore(tmp_path)
    run = store.create_run(config={}, model="m", dataset="d", status="running")
    with pytest.raises(BackpropError) as err:
        store.delete(run.id)
    assert err.value.code == "STATE_RUN_ACTIVE"


def test_export_runs_are_children_of_their_training_run(tmp_path):
    store = RunStore(tmp_path)
    train = store.create_run(config={}, model="m", dataset="d", name="bot")
    store.record(ev.Finished(train.id, final_loss=1.0, steps=3))
    export = store.create_run(config={"format": "gguf"}, model="m", dataset="d", kind="export", parent=train.id)
    assert (export.kind, export.parent, train.parent) == ("export", train.id, None)
    assert [r.id for r in store.list(kind="export", parent=train.id)] == [export.id]
    assert [r.id for r in store.list(top_level=True)] == [train.id]
    store.record(ev.Failed(export.id, code="EXPORT_FAILED", message="disk full"))
    assert store.get(train.id).status == "completed"  # the export's outcome is its own
    store.delete(train.id)  # its exports go with it: their files were in its folder
    assert store.list() == [] and not export.run_dir.exists()


def test_old_database_gets_the_parent_column(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "runs.db")
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, kind TEXT NOT NULL DEFAULT 'train',"
                 " status TEXT NOT NULL, model TEXT, dataset TEXT, config TEXT NOT NULL DEFAULT '{}',"
                 " summary TEXT NOT NULL DEFAULT '{}', run_dir TEXT NOT NULL, created_at REAL NOT NULL,"
                 " started_at REAL, finished_at REAL, step INTEGER NOT NULL DEFAULT 0,"
                 " total_steps INTEGER NOT NULL DEFAULT 0, last_loss REAL, final_loss REAL, error_code TEXT,"
                 " error_message TEXT, error_hint TEXT, pid INTEGER, pid_started REAL, host TEXT, heartbeat REAL)")
    conn.execute("INSERT INTO runs (id, status, run_dir, created_at) VALUES ('old', 'completed', '/x', 1.0)")
    conn.commit()
    conn.close()
    store = RunStore(tmp_path)
    assert store.get("old").parent is None
    export = store.create_run(config={}, model="m", dataset="d", kind="export", parent="old")
    assert [r.id for r in store.list(parent="old")] == [export.id]
    RunStore(tmp_path)  # opening it again changes nothing
