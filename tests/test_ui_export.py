"""The Export page without a browser: what it lists, the sizes it promises, how it shows
an export run (kind "export", parent the training run) as progress and a result card, and
what it refuses."""

from __future__ import annotations

import json
import time

import pytest

from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.export import QUANTIZATIONS
from backpropagate_core.runs.store import RunStore


def fake_adapter(folder, weight_bytes: int = 2048):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2-135m"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * weight_bytes)
    return folder


def add_run(store: RunStore, name: str, status: str = "completed", adapter: bool = True,
            checkpoints: tuple[int, ...] = (), model: str = "smollm2-135m") -> str:
    run = store.create_run(config={"model": model}, model=model, dataset="/d/chat.jsonl", name=name)
    store.record(ev.RunStarted(run.id, config={"model": model}, total_steps=10))
    if adapter:
        fake_adapter(run.run_dir / "adapter")
    for step in checkpoints:
        fake_adapter(run.run_dir / "checkpoints" / f"checkpoint-{step}")
    if status == "completed":
        store.record(ev.Finished(run.id, final_loss=1.0, steps=10,
                                 artifacts={"adapter": str(run.run_dir / "adapter")} if adapter else {}))
    elif status == "cancelled":
        store.record(ev.Cancelled(run.id, step=4))
    return run.id


def test_sizes_and_explanations_for_every_option():
    from backpropagate_app.pages.export import view

    n = view.param_count("smollm2-135m")
    assert 130e6 < n < 140e6
    assert view.param_count("org/unknown-model") is None
    quants = view.quant_options(n)
    assert [q["value"] for q in quants] == list(QUANTIZATIONS)
    assert all(q["note"] and q["size"].startswith("≈ ") for q in quants)
    assert [q["value"] for q in quants if q["recommended"]] == ["q4_k_m"]
    size = {q["value"]: q["size"] for q in quants}
    assert size["f16"] == "≈ 269.0 MB" and size["q4_k_m"] == "≈ 82.4 MB"
    formats = {f["value"]: f for f in view.format_options(n, 2_500_000)}
    assert list(formats) == ["gguf", "merged", "adapter"]
    assert formats["adapter"]["size"] == "2.5 MB" and "q4_k_m" in formats["gguf"]["size"]
    assert [d["value"] for d in view.dtype_options(n)] == ["auto", "f32", "bf16", "f16"]
    assert view.quant_options(None)[0]["size"] == "—"
    assert (view.fmt_bytes(999), view.fmt_bytes(1_500), view.fmt_bytes(3.2e9)) == ("999 B", "1.5 KB", "3.2 GB")


def test_param_count_reads_a_local_config(tmp_path):
    from backpropagate_app.pages.export import view

    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 512, "vocab_size": 600, "tie_word_embeddings": True}))
    assert view.param_count(str(tmp_path)) == 2 * (256 * 256 * 2 + 256 * 128 * 2 + 3 * 256 * 512 + 512) \
        + 600 * 256 + 256


def test_runs_sources_and_files_come_from_the_store(isolated_home):
    from backpropagate_app.pages.export import view

    store = RunStore(isolated_home)
    done = add_run(store, "done", checkpoints=(5, 10))
    stopped = add_run(store, "stopped", status="cancelled", adapter=False, checkpoints=(4,))
    add_run(store, "nothing", status="cancelled", adapter=False)
    add_run(store, "live", status="running")
    runs = view.exportable_runs(store)
    assert [r["value"] for r in runs] == [done, stopped]  # finished runs first
    assert runs[0]["label"] == "done · completed · smollm2-135m"

    info = view.run_info(store, done)
    assert [s["value"] for s in info["sources"]] == ["final", "checkpoint-10", "checkpoint-5"]
    assert info["sources"][1]["label"] == "Checkpoint at step 10"
    assert info["params"].endswith("M parameters")
    assert info["files"][0]["key"] == "adapter" and info["files"][0]["size"] == "2.0 KB"
    assert [s["value"] for s in view.run_info(store, stopped)["sources"]] == ["checkpoint-4"]

    gguf = store.get(done).run_dir / "exports" / "gguf-q4_k_m" / "done-q4_k_m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    store.merge_summary(done, exports={
        "gguf-q4_k_m": {"path": str(gguf), "format": "gguf", "quantization": "q4_k_m", "size_bytes": 104,
                        "verification": {"passed": True}, "created_at": time.time()},
        "gguf-f16": {"path": "/gone/x.gguf", "format": "gguf", "size_bytes": 9, "verification": {},
                     "created_at": time.time() - 60}})
    info = view.run_info(store, done)
    assert [(f["key"], f["verified"]) for f in info["files"]] == [
        ("adapter", ""), ("gguf-q4_k_m", "verified"), ("gguf-f16", "not verified")]
    assert info["ggufs"] == [{"value": "gguf-q4_k_m", "label": "gguf-q4_k_m (104 B)"}]  # only files on disk
    summary = store.get(done).summary
    assert view.gguf_path(summary, "gguf-q4_k_m") == str(gguf)
    assert view.gguf_path(summary, "/etc/passwd") is None and view.gguf_path(summary, "none") is None


def start_export(store: RunStore, run_id: str, fmt: str = "gguf", quantization: str = "q4_k_m",
                 ollama_name: str | None = None):
    """An export run as `worker.start_export` creates it, without its worker."""
    from backpropagate_core.export import jobs

    run = store.get(run_id)
    export = jobs.create_export(store, run, jobs.check_request(run, fmt, quantization, ollama_name=ollama_name))
    store.record(ev.RunStarted(export.id, config=export.config))
    return store.get(export.id)


def progress(store: RunStore, export_id: str, *stages: str, done: int = 0, total: int = 1, message: str = ""):
    for stage in stages:
        store.record(ev.ExportProgress(export_id, stage=stage, done=done, total=total, message=message))


VERIFICATION = {"max_logit_diff": 0.41, "bound": 1.2, "top1_agreement": 0.93, "min_top1_agreement": 0.4,
                "positions": 120, "kl_divergence": 0.0123, "tokenization_match": True, "tokenization_cases": 9,
                "greedy_match": False, "passed": True}
RESULT = {"path": "/runs/r/exports/gguf-q4_k_m/my-bot-q4_k_m.gguf", "folder": "/runs/r/exports/gguf-q4_k_m",
          "format": "gguf", "quantization": "q4_k_m", "size_bytes": 84_000_000, "seconds": 75.0,
          "verification": VERIFICATION}


def finish(store: RunStore, export_id: str, **summary) -> None:
    store.merge_summary(export_id, result=RESULT, **summary)
    store.record(ev.Finished(export_id, final_loss=None, steps=0, artifacts={"export": RESULT["path"]}))


def test_export_run_followed_to_its_result(isolated_home):
    from backpropagate_app.pages.export.view import EMPTY_JOB, ExportFollow

    store = RunStore(isolated_home)
    run_id = add_run(store, "my-bot")
    follow = ExportFollow(run_id)
    assert follow.read(store) == EMPTY_JOB
    export = start_export(store, run_id)
    assert (export.kind, export.parent, export.status) == ("export", run_id, "running")
    progress(store, export.id, "load", "reference", "merge")
    progress(store, export.id, "write", done=10, total=20, message="writing x.gguf")
    view = follow.read(store)
    assert view["job"] == export.id and view["status"] == "running"
    assert view["title"] == "GGUF q4_k_m of the final adapter"
    assert [(s["key"], s["status"]) for s in view["stages"]] == [
        ("load", "done"), ("reference", "done"), ("merge", "done"), ("write", "active"),
        ("quantize", "pending"), ("verify", "pending")]
    assert view["progress"] == 58  # 3.5 of 6 stages
    assert view["messages"][0]["text"] == "writing x.gguf" and view["result"] == {}

    progress(store, export.id, "quantize", "verify", "done")
    finish(store, export.id)
    view = follow.read(store)
    assert view["status"] == "done" and view["progress"] == 100
    assert all(s["status"] == "done" for s in view["stages"])
    assert view["result"]["size"] == "84.0 MB" and view["result"]["verified"] == "verified"
    checks = {c["label"]: c for c in view["checks"]}
    assert checks["Max logit difference"]["value"] == "0.41 (bound 1.2)"
    assert checks["Max logit difference"]["status"] == "ok"
    assert checks["Top-1 agreement"]["value"].startswith("93.0% of 120 positions")
    assert checks["Tokenization"]["status"] == "ok"
    assert checks["Greedy continuation"]["status"] == "info"  # reported, not a pass condition
    # Not registered: the command creates the model from the export's Modelfile, then runs it.
    assert view["ollama"]["command"] == ("cd /runs/r/exports/gguf-q4_k_m && ollama create my-bot:q4_k_m "
                                         "-f Modelfile && ollama run my-bot:q4_k_m")
    assert store.get(run_id).status == "completed"  # an export never changes its training run


def test_export_runs_registered_failed_and_killed(isolated_home):
    import subprocess
    import sys

    from backpropagate_app.pages.export.view import ExportFollow, export_run_rows

    store = RunStore(isolated_home)
    run_id = add_run(store, "bot")
    follow = ExportFollow(run_id)
    registered = start_export(store, run_id, ollama_name="bot:q4")
    progress(store, registered.id, "ollama", message="success")
    finish(store, registered.id, ollama={"name": "bot:q4", "host": "http://127.0.0.1:11434",
                                         "run_command": "ollama run bot:q4"}, ollama_error={})
    view = follow.read(store)
    assert view["stages"][-1] == {"key": "ollama", "label": "Register with Ollama", "status": "done"}
    assert view["ollama"] == {"registered": "yes", "name": "bot:q4", "host": "http://127.0.0.1:11434",
                              "command": "ollama run bot:q4"}

    # A new export replaces the old one in the view; its coded failure is shown as is.
    failed = start_export(store, run_id)
    progress(store, failed.id, "verify")
    store.record(ev.Failed(failed.id, code="EXPORT_VERIFY_FAILED",
                           message="gguf q4_k_m: max logit difference 9 > bound 1", hint="try q8_0"))
    view = follow.read(store)
    assert view["job"] == failed.id and view["status"] == "failed"
    assert view["error"]["code"] == "EXPORT_VERIFY_FAILED" and view["error"]["hint"] == "try q8_0"
    assert view["result"] == {} and [s["status"] for s in view["stages"]][-1] == "failed"
    assert store.get(run_id).status == "completed"

    # A worker that vanished without reporting: the store marks its export interrupted.
    killed = start_export(store, run_id, "merged", "f32")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    store.claim(killed.id, pid=proc.pid)
    proc.wait()
    assert store.reap_dead() == [killed.id]
    view = follow.read(store)
    assert view["status"] == "failed" and view["error"]["code"] == "RUNTIME_WORKER_DIED"
    assert "worker.log" in view["error"]["hint"] and view["title"] == "Merged model f32 of the final adapter"
    assert [(r["id"], r["status"]) for r in export_run_rows(store, run_id)] == [
        (killed.id, "interrupted"), (failed.id, "failed"), (registered.id, "completed")]
    assert store.get(run_id).status == "completed"


def test_one_export_per_run_at_a_time(isolated_home):
    from backpropagate_core.export import jobs

    store = RunStore(isolated_home)
    run_id = add_run(store, "bot")
    other = add_run(store, "other")
    first = start_export(store, run_id)
    with pytest.raises(BackpropError) as busy:
        start_export(store, run_id, "adapter")
    assert busy.value.code == "STATE_RUN_ACTIVE" and first.id[:8] in busy.value.message
    assert [e.id for e in store.list(kind="export")] == [first.id]  # refused before any row
    start_export(store, other)  # another run's export is not held up
    progress(store, first.id, "done")
    finish(store, first.id)
    assert start_export(store, run_id, "adapter").parent == run_id
    # An export run is not itself exported, resumed or stopped.
    with pytest.raises(BackpropError) as err:
        jobs.check_request(store.get(first.id), "gguf")
    assert err.value.code == "INPUT_EXPORT_SOURCE_INVALID"


def test_adapter_verification_and_chat_cards():
    from backpropagate_app.pages.export.view import chat_view, verification_rows

    assert verification_rows({"files": ["adapter_model.safetensors"], "identical": True, "passed": True}) == [
        {"label": "Adapter files", "status": "ok", "value": "1 file(s) identical to the run's adapter"}]
    assert verification_rows({}) == []
    cards, verdict = chat_view({"answers": {"transformers": {"text": "Paris", "tokens": [1, 2], "seconds": 0.31},
                                            "llama.cpp": {"text": "Paris", "tokens": [1, 2], "seconds": 0.05}},
                                "identical": True}, "gguf-q4_k_m")
    assert [c["label"] for c in cards] == ["Fine-tuned model (transformers)", "GGUF gguf-q4_k_m (llama.cpp)"]
    assert cards[0]["meta"] == "2 tokens · 0.3 s" and verdict == "identical answers"
    cards, verdict = chat_view({"answers": {"transformers": {"text": "", "tokens": [], "seconds": 1}},
                                "identical": None})
    assert cards[0]["text"] == "(empty answer)" and verdict == ""


def test_read_job_and_refusals_before_any_process_starts(isolated_home):
    from backpropagate_app.pages.export import view
    from backpropagate_app.pages.export.chat import answer
    from backpropagate_app.pages.export.page import launch, read_job

    store = RunStore(isolated_home)
    run_id = add_run(store, "done")
    stopped = add_run(store, "stopped", status="cancelled", adapter=False, checkpoints=(4,))
    store.record(ev.LogLine(run_id, message="not an export"))
    assert read_job(view.ExportFollow(run_id)) == view.EMPTY_JOB

    for args, code in [((run_id, "final", "gguf", "q9", "auto", ""), "INPUT_EXPORT_OPTION_INVALID"),
                       ((run_id, "final", "gguf", "q4_k_m", "auto", "no spaces please"), "INPUT_OLLAMA_NAME_INVALID"),
                       ((run_id, "../../../etc", "gguf", "q4_k_m", "auto", ""), "INPUT_EXPORT_SOURCE_INVALID"),
                       ((stopped, "final", "adapter", "", "auto", ""), "INPUT_EXPORT_SOURCE_INVALID")]:
        with pytest.raises(BackpropError) as err:
            launch(*args)
        assert err.value.code == code
    for prompt, source in [("   ", "final"), ("x" * 5000, "final"), ("hi", "checkpoint-99")]:
        with pytest.raises(BackpropError) as err:
            answer(run_id, source, "none", prompt)
        assert err.value.code.startswith("INPUT_EXPORT_")
    assert store.list(kind="export") == []  # nothing was started


def test_run_page_lists_the_exports_and_an_export_links_to_its_run(isolated_home):
    from backpropagate_app.pages.runs.detail import RunDetails

    store = RunStore(isolated_home)
    run_id = add_run(store, "bot")
    export = start_export(store, run_id)
    progress(store, export.id, "load", message="loading")
    shown = RunDetails(run_id).poll()
    assert [(e["id"], e["title"], e["status"]) for e in shown["exports"]] == [
        (export.id, "GGUF q4_k_m of the final adapter", "running")]
    details = RunDetails(export.id)
    shown = details.poll()
    assert (shown["kind"], shown["parent"], shown["exports"]) == ("export", run_id, [])
    assert any(e["kind"] == "export_progress" or "loading" in e["text"] for e in shown["events"])
    assert details.poll() is None  # nothing new


def test_an_unfaithful_ollama_template_is_said_on_the_export_card():
    from backpropagate_app.pages.export import view

    result = {"format": "gguf", "quantization": "q8_0", "path": "/x/run-q8_0.gguf", "verification": {},
              "ollama": {"template": "...", "faithful": False, "mismatch": "conversation 1: the date header"}}
    (row,) = view.done_view({"result": result}, {})["checks"]
    assert row["status"] == "bad" and "differently from training" in row["value"] and "date header" in row["value"]
    result["ollama"] = {"template": "...", "faithful": True}
    assert view.done_view({"result": result}, {})["checks"][0]["status"] == "ok"
