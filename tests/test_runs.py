import multiprocessing as mp

import pytest

from backpropagate_core import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import RunStore


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
