"""The worker process: started, observed through the store, stopped, killed, resumed."""

import os
import signal
import time

import pytest

from backpropagate_core.runs import worker
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore
from tests.test_train import write_dataset


def wait_for(predicate, timeout=180, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "facts.jsonl", repeats=10)


def test_worker_runs_is_observed_and_cancelled(tiny_llama, dataset):
    store = RunStore()
    run_id = worker.start_run(str(tiny_llama), str(dataset),
                              overrides={"steps": 400, "save_steps": 1000, "val_fraction": 0.0})
    assert store.get(run_id).status in ("queued", "running")
    wait_for(lambda: store.get(run_id).step >= 3)
    worker.cancel_run(run_id)
    run = wait_for(lambda: (r := store.get(run_id)).status == "cancelled" and r)
    assert 3 <= run.step < 400
    types = [e["type"] for _, e in store.events(run_id)]
    assert types[-1] == "cancelled" and "checkpoint" in types and "hardware" in types

    worker.resume_run(run_id)
    wait_for(lambda: store.get(run_id).status == "running")
    worker.cancel_run(run_id)
    wait_for(lambda: store.get(run_id).status == "cancelled")


def test_killed_worker_ends_interrupted_and_resumes(tiny_llama, dataset):
    store = RunStore()
    run_id = worker.start_run(str(tiny_llama), str(dataset),
                              overrides={"steps": 30, "save_steps": 5, "val_fraction": 0.0,
                                         "learning_rate": 1e-3})
    wait_for(lambda: any(e["type"] == "checkpoint" for _, e in store.events(run_id)))
    os.kill(store.get(run_id).pid, signal.SIGKILL)
    wait_for(lambda: store.reap_dead() or store.get(run_id).status == "interrupted")
    run = store.get(run_id)
    assert run.status == "interrupted" and run.error_code == "RUNTIME_WORKER_DIED"

    worker.resume_run(run_id)
    run = wait_for(lambda: (r := store.get(run_id)).status in ("completed", "failed") and r)
    assert run.status == "completed", run.error_message
    started = [e for _, e in store.events(run_id, types=("run_started",))]
    assert started[-1]["resumed_from_step"] >= 5


def test_start_run_validates_before_spawning(tiny_llama, tmp_path):
    with pytest.raises(BackpropError) as err:
        worker.start_run(str(tiny_llama), str(tmp_path / "missing.jsonl"))
    assert err.value.code == "INPUT_DATASET_NOT_FOUND"
    with pytest.raises(BackpropError) as err:
        worker.start_run(str(tiny_llama), str(tmp_path), overrides={"steps": -3})
    assert err.value.code == "CONFIG_INVALID"
    assert RunStore().list() == []


def test_dataset_report_and_plan_run_out_of_process(tiny_llama, dataset, tmp_path):
    report = worker.dataset_report(str(dataset), model=str(tiny_llama))
    assert report.format == "sharegpt" and report.examples == 40
    plan = worker.plan(str(tiny_llama), str(dataset), {"steps": 7})
    assert plan.config.training.steps == 7
    assert plan.reasons["steps"] == "set by you" and "learning_rate" in plan.reasons
    # what the Train page's memory estimate needs: this machine's memory, the labelled share
    assert plan.memory_gb > 0 and 0 < plan.label_fraction < 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(BackpropError) as err:
        worker.plan(str(tiny_llama), str(bad))
    assert err.value.code == "INPUT_DATASET_INVALID"
