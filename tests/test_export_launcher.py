"""Exports started the way the UI starts them: a worker process per export, observed
through the events it records on the run; chat answers from a one-shot subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from backpropagate_core import worker
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import RunStore
from tests.export_fixtures import make_run, tiny_base
from tests.ollama_contract_server import OllamaContractServer

pytest.importorskip("llama_cpp")

END_TYPES = ("export_done", "export_failed")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("launcher-base"), "llama")


def wait_for_end(store: RunStore, run_id: str, job: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ends = [e for _, e in store.events(run_id, types=END_TYPES) if e["job"] == job]
        if ends:
            return ends[-1]
        time.sleep(0.3)
    raise AssertionError(f"no end event for job {job}:\n{(store.get(run_id).run_dir / 'export.log').read_text()[-3000:]}")


def test_export_worker_records_progress_result_and_registration(base):
    store = RunStore()
    run = make_run(base, name="launch-bot")
    with OllamaContractServer() as ollama:
        job = worker.start_export(run.id[:8], "gguf", "q4_k_m", ollama_name="launch-bot:q4",
                                  ollama_host=ollama.url)
        # One export per run at a time: a second click is refused while the first works.
        with pytest.raises(BackpropError) as busy:
            worker.start_export(run.id, "gguf", "q8_0")
        assert busy.value.code == "STATE_RUN_ACTIVE"
        done = wait_for_end(store, run.id, job)
    assert done["type"] == "export_done", done
    result = done["result"]
    assert result["quantization"] == "q4_k_m" and result["verification"]["passed"]
    assert result["verification"]["max_logit_diff"] <= result["verification"]["bound"]
    assert done["ollama"]["run_command"] == "ollama run launch-bot:q4" and not done["ollama_error"]
    assert "launch-bot:q4" in ollama.models

    events = [e for _, e in store.events(run.id, types=("export_started", "export_progress"))]
    assert events[0]["type"] == "export_started" and events[0]["job"] == job and events[0]["pid"]
    stages = [e["stage"] for e in events[1:]]
    assert {"load", "merge", "write", "quantize", "verify", "done", "ollama"} <= set(stages)
    stored = store.get(run.id)
    assert stored.status == "completed"  # export events never change the run's status
    assert stored.artifacts["export:gguf-q4_k_m"] == result["path"]


def test_failures_are_coded_before_and_after_the_worker_starts(base, tmp_path):
    store = RunStore()
    run = make_run(base)
    for args, code in [(("gguf", "q9"), "INPUT_EXPORT_OPTION_INVALID"),
                       (("merged", "q4_k_m"), "INPUT_EXPORT_OPTION_INVALID")]:
        with pytest.raises(BackpropError) as err:
            worker.start_export(run.id, *args)
        assert err.value.code == code
    with pytest.raises(BackpropError) as err:
        worker.start_export(run.id, "adapter", ollama_name="x")
    assert err.value.code == "INPUT_EXPORT_OPTION_INVALID"
    with pytest.raises(BackpropError) as err:
        worker.start_export(run.id, "gguf", "q8_0", ollama_name="bad name!")
    assert err.value.code == "INPUT_OLLAMA_NAME_INVALID"
    for checkpoint in ("../../etc", "checkpoint-7"):
        with pytest.raises(BackpropError) as err:
            worker.start_export(run.id, "gguf", "q8_0", checkpoint=checkpoint)
        assert err.value.code == "INPUT_EXPORT_SOURCE_INVALID"
    assert store.events(run.id, types=("export_started",)) == []  # nothing was started

    # A failure inside the worker (the base model is gone) ends as a coded export_failed.
    moved = shutil.copytree(base, tmp_path / "base-copy")
    broken = make_run(moved)
    shutil.rmtree(moved)
    job = worker.start_export(broken.id, "gguf", "q8_0")
    failed = wait_for_end(store, broken.id, job)
    assert failed["type"] == "export_failed" and failed["code"].startswith("INPUT_") and failed["hint"]
    assert store.get(broken.id).status == "completed"


def test_a_killed_export_worker_frees_the_run(base):
    store = RunStore()
    run = make_run(base)
    job = worker.start_export(run.id, "merged", "f32")
    started = store.events(run.id, types=("export_started",))[-1][1]
    assert started["job"] == job
    os.kill(started["pid"], signal.SIGKILL)
    deadline = time.time() + 30
    from backpropagate_core.export import jobs

    while jobs.running_job(store, run.id) and time.time() < deadline:
        time.sleep(0.2)
    assert jobs.running_job(store, run.id) is None
    job = worker.start_export(run.id, "adapter")  # no longer refused as busy
    assert wait_for_end(store, run.id, job)["type"] == "export_done"


def test_export_a_checkpoint_keeps_the_final_exports_apart(base):
    store = RunStore()
    run = make_run(base)
    checkpoint = run.run_dir / "checkpoints" / "checkpoint-2"
    shutil.copytree(run.run_dir / "adapter", checkpoint)
    from backpropagate_core.export import jobs

    assert jobs.checkpoints(run.run_dir) == ["checkpoint-2"]
    job = worker.start_export(run.id, "adapter", checkpoint="checkpoint-2")
    done = wait_for_end(store, run.id, job)
    assert done["type"] == "export_done", done
    assert done["result"]["folder"] == str(run.run_dir / "exports" / "checkpoint-2" / "adapter")
    assert "checkpoint-2/adapter" in store.get(run.id).summary["exports"]


def test_chat_once_answers_from_both_engines(base):
    from backpropagate_core.export import export_model

    run = make_run(base)
    exported = export_model(run.id, format="gguf", quantization="f16")
    out = worker.chat_once(run.id, [{"role": "user", "content": "What is the capital of France?"}],
                           max_new_tokens=8)
    assert out["gguf"] == str(exported.path)
    hf, cpp = out["answers"]["transformers"], out["answers"]["llama.cpp"]
    assert hf["tokens"] and hf["tokens"] == cpp["tokens"] and out["identical"] is True
    with pytest.raises(BackpropError) as err:
        worker.chat_once(run.id, [{"role": "assistant", "content": "no question"}])
    assert err.value.code == "INPUT_EXPORT_OPTION_INVALID"
