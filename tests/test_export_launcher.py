"""Exports started the way the UI starts them: an export run (kind "export", its parent
the training run) with a worker process of its own, observed through what the store
records on it; chat answers from the engine helper process."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from backpropagate_core.runs import worker
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.runs.store import RunStore
from tests.export_fixtures import make_run, tiny_base
from tests.ollama_contract_server import OllamaContractServer

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("launcher-base"), "llama")


def wait_for_end(store: RunStore, export_id: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        store.reap_dead()
        export = store.get(export_id)
        if not export.active:
            return export
        time.sleep(0.3)
    log = RunDir(store.get(export_id).run_dir).worker_log
    raise AssertionError(f"export {export_id} did not end:\n{log.read_text()[-3000:]}")


def test_export_worker_records_progress_result_and_registration(base):
    store = RunStore()
    run = make_run(base, name="launch-bot")
    with OllamaContractServer() as ollama:
        export_id = worker.start_export(run.id[:8], "gguf", "q4_k_m", ollama_name="launch-bot:q4",
                                        ollama_host=ollama.url)
        export = store.get(export_id)
        assert (export.kind, export.parent, export.pid) == ("export", run.id, export.pid) and export.pid
        assert export.config["format"] == "gguf" and export.config["ollama_name"] == "launch-bot:q4"
        # One export per run at a time: a second click is refused while the first works.
        with pytest.raises(BackpropError) as busy:
            worker.start_export(run.id, "gguf", "q8_0")
        assert busy.value.code == "STATE_RUN_ACTIVE"
        assert [e.id for e in store.list(kind="export")] == [export_id]
        export = wait_for_end(store, export_id)
    assert export.status == "completed", (export.error_code, export.error_message)
    result = export.summary["result"]
    assert result["quantization"] == "q4_k_m" and result["verification"]["passed"]
    assert result["verification"]["max_logit_diff"] <= result["verification"]["bound"]
    assert export.artifacts == {"export": result["path"]}
    assert export.summary["ollama"]["run_command"] == "ollama run launch-bot:q4"
    assert not export.summary["ollama_error"] and "launch-bot:q4" in ollama.models

    events = [e for _, e in store.events(export_id)]
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "finished"
    stages = [e["stage"] for e in events if e["type"] == "export_progress"]
    assert {"load", "merge", "write", "quantize", "verify", "done", "ollama"} <= set(stages)
    stored = store.get(run.id)
    assert stored.status == "completed"  # an export never changes its training run's status
    assert [e["type"] for _, e in store.events(run.id)] == ["run_started", "finished"]
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
    assert store.list(kind="export") == []  # nothing was created

    # A failure inside the worker (the base model is gone) fails the export run, coded;
    # the training run stays completed.
    moved = shutil.copytree(base, tmp_path / "base-copy")
    broken = make_run(moved)
    shutil.rmtree(moved)
    failed = wait_for_end(store, worker.start_export(broken.id, "gguf", "q8_0"))
    assert failed.status == "failed" and failed.error_code.startswith("INPUT_") and failed.error_hint
    assert store.get(broken.id).status == "completed"
    # An export run is neither resumed nor stopped like a training run.
    for action in (worker.resume_run, worker.cancel_run):
        with pytest.raises(BackpropError) as err:
            action(failed.id)
        assert err.value.code == "STATE_RUN_NOT_FOUND" and "export" in err.value.message


def test_a_killed_export_worker_is_interrupted_and_frees_the_run(base):
    store = RunStore()
    run = make_run(base)
    export_id = worker.start_export(run.id, "merged", "f32")
    os.kill(store.get(export_id).pid, signal.SIGKILL)
    deadline = time.time() + 30
    while export_id not in store.reap_dead() and time.time() < deadline:
        time.sleep(0.2)
    killed = store.get(export_id)
    assert (killed.status, killed.error_code) == ("interrupted", "RUNTIME_WORKER_DIED")
    assert store.get(run.id).status == "completed"
    again = wait_for_end(store, worker.start_export(run.id, "adapter"))  # no longer refused as busy
    assert again.status == "completed" and again.parent == run.id


def test_export_a_checkpoint_keeps_the_final_exports_apart(base):
    store = RunStore()
    run = make_run(base)
    checkpoint = RunDir(run.run_dir).checkpoint("checkpoint-2")
    shutil.copytree(RunDir(run.run_dir).adapter, checkpoint)
    from backpropagate_core.export import jobs

    assert jobs.checkpoints(run.run_dir) == ["checkpoint-2"]
    export = wait_for_end(store, worker.start_export(run.id, "adapter", checkpoint="checkpoint-2"))
    assert export.status == "completed", export.error_message
    assert export.summary["result"]["folder"] == str(RunDir(run.run_dir).exports / "checkpoint-2" / "adapter")
    assert "checkpoint-2/adapter" in store.get(run.id).summary["exports"]


def test_chat_once_answers_from_both_engines(base):
    from backpropagate_core.export import export_model

    run = make_run(base)
    exported = export_model(run.id, format="gguf", quantization="f16")
    out = worker.chat_once(run.id, [{"role": "user", "content": "What is the capital of France?"}],
                           max_new_tokens=8)
    assert out.gguf == str(exported.path)
    hf, cpp = out.answers["transformers"], out.answers["llama.cpp"]
    assert hf.tokens and hf.tokens == cpp.tokens and out.identical is True
    with pytest.raises(BackpropError) as err:
        worker.chat_once(run.id, [{"role": "assistant", "content": "no question"}])
    assert err.value.code == "INPUT_EXPORT_OPTION_INVALID"
