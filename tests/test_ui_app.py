"""The web app without a browser: it imports without torch, every page compiles, the State
helpers read the run store right, uploads land where they should, `backprop ui` prepares
Reflex's environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def outputs(tmp_path, monkeypatch) -> Path:
    out = tmp_path / "ui-outputs"
    monkeypatch.setenv("BACKPROPAGATE_UI__OUTPUT_DIR", str(out))
    return out


def record_run(store: RunStore, name: str, losses: list[float], finish: bool = True) -> str:
    run = store.create_run(config={"model": "m", "data": "d.jsonl", "training": {"steps": len(losses)}},
                           model="m", dataset="/data/d.jsonl", name=name)
    store.record(ev.RunStarted(run.id, config={"model": "m", "training": {"learning_rate": 2e-4}},
                               reasons={"learning_rate": "standard LoRA rate"}, total_steps=len(losses)))
    for i, loss in enumerate(losses, 1):
        store.record(ev.Step(run.id, step=i, total=len(losses), loss=loss, lr=1e-4))
    if finish:
        store.record(ev.Finished(run.id, final_loss=losses[-1], steps=len(losses), artifacts={"adapter": "/a"}))
    return run.id


# ---- the app as a whole -----------------------------------------------------------------------

def test_app_imports_without_torch():
    code = ("import sys, backpropagate_app.backpropagate_app as m; "
            "heavy = [n for n in ('torch', 'transformers', 'peft', 'trl', 'datasets') if n in sys.modules]; "
            "print(type(m.app).__name__, heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("App []"), out.stdout


def test_every_page_compiles():
    from backpropagate_app.pages import PAGES

    routes = set()
    for page in PAGES:
        page.component().render()  # raises on a wrongly typed Var or a bad prop
        assert page.on_load, page.route
        routes.add(page.route)
    assert {"/dataset", "/train", "/multi-run", "/export", "/runs", "/runs/[run_key]"} <= routes


def test_create_app_passes_options_through():
    import reflex as rx

    from backpropagate_app.backpropagate_app import create_app

    def wrapper(asgi):
        return asgi

    from reflex_base.registry import RegistrationContext

    with RegistrationContext.get().fork():  # importing the module already made the one app
        app = create_app(api_transformer=wrapper)
    assert isinstance(app, rx.App) and app.api_transformer is wrapper


# ---- header and pages' store readers ----------------------------------------------------------

def test_header_prefers_the_active_run(isolated_home):
    from backpropagate_app.shell import header_status, read_header

    assert header_status([]) == {"id": "", "label": "no runs yet", "status": ""}
    store = RunStore(isolated_home)
    done = record_run(store, "old", [2.0, 1.0])
    assert read_header(reap=False) == {"id": done, "label": "last run old", "status": "completed"}
    live = record_run(store, "live", [3.0], finish=False)
    assert read_header(reap=False) == {"id": live, "label": "live", "status": "running"}


def test_train_page_shows_the_active_run_else_the_one_shown(isolated_home):
    from backpropagate_app.pages.train.page import run_to_show

    store = RunStore(isolated_home)
    assert run_to_show("") == ""
    first = record_run(store, "first", [1.0])
    assert run_to_show("") == first
    second = record_run(store, "second", [1.0])
    assert run_to_show(first) == first
    live = record_run(store, "live", [1.0], finish=False)
    assert run_to_show(second) == live  # started elsewhere (CLI, another tab): follow it


def test_runs_table_rows_and_sparklines(isolated_home):
    from backpropagate_app.pages.runs.page import SparkCache, read_rows

    store = RunStore(isolated_home)
    record_run(store, "a", [3.0, 2.0, 1.0])
    record_run(store, "b", [1.0], finish=False)
    sparks = SparkCache()
    rows = read_rows("all", sparks)
    assert [r["name"] for r in rows] == ["b", "a"]
    assert [p["loss"] for p in rows[1]["spark"]] == [3.0, 2.0, 1.0]
    assert [r["name"] for r in read_rows("completed", sparks)] == ["a"]
    assert read_rows("failed", sparks) == []


def test_run_detail_reads_resolved_config_and_new_events(isolated_home):
    from backpropagate_app.pages.runs.detail import RunDetails

    store = RunStore(isolated_home)
    run_id = record_run(store, "a", [2.0, 1.0], finish=False)
    details = RunDetails(run_id)
    first = details.poll()
    by_key = {c["key"]: c for c in first["config"]}
    assert by_key["training.learning_rate"]["reason"] == "standard LoRA rate"
    assert first["events"][-1]["kind"] == "run_started" and first["active"]
    assert details.poll() is None  # nothing new
    store.record(ev.Finished(run_id, final_loss=1.0, steps=2))
    later = details.poll()
    assert later["events"][0]["kind"] == "finished" and not later["active"] and later["kind"] == "train"
    store.delete(run_id)
    with pytest.raises(BackpropError):
        details.poll()


def test_live_read_run_handles_deleted_runs(isolated_home):
    from backpropagate_app.display import RunTail
    from backpropagate_app.poller import read_run

    store = RunStore(isolated_home)
    run_id = record_run(store, "a", [2.0, 1.0])
    tail = RunTail(run_id)
    run, fresh = read_run(run_id, tail)
    assert fresh and run["status"] == "completed" and len(tail.points) == 2
    assert read_run(run_id, tail) == (run | {"duration_s": run["duration_s"]}, False)
    store.delete(run_id)
    assert read_run(run_id, tail) == (None, False)


# ---- uploads and the workspace ------------------------------------------------------------------

def test_upload_is_sanitised_and_listed_first(outputs):
    from backpropagate_app import facade

    saved = facade.save_upload("../../etc/my data.jsonl", b'{"text": "hello"}\n')
    assert saved == (outputs / "uploads" / "my_data.jsonl").resolve()
    assert saved.read_bytes() == b'{"text": "hello"}\n'
    time.sleep(0.01)
    facade.save_upload("newer.jsonl", b'{"text": "x"}\n')
    files = facade.workspace_files()
    assert [f["label"] for f in files[:2]] == ["uploads/newer.jsonl", "uploads/my_data.jsonl"]
    assert any(f["label"] == "examples/quickstart.jsonl" for f in files)


@pytest.mark.parametrize("name, data, code", [
    ("notes.txt", b"hello", "INPUT_UPLOAD_INVALID"),
    ("empty.jsonl", b"  \n", "INPUT_UPLOAD_INVALID"),
    ("fake.jsonl", b"this is not json\n", "UI_UPLOAD_REJECTED"),
])
def test_bad_uploads_are_refused_with_a_code(outputs, name, data, code):
    from backpropagate_app import facade

    with pytest.raises(BackpropError) as err:
        facade.save_upload(name, data)
    assert err.value.code == code
    assert not any((outputs / "uploads").glob("*"))


def test_upload_size_limit(outputs, monkeypatch):
    from backpropagate_app import facade

    monkeypatch.setenv("BACKPROPAGATE_UI__MAX_UPLOAD_MB", "1")
    line = json.dumps({"text": "x" * 1000}) + "\n"
    with pytest.raises(BackpropError) as err:
        facade.save_upload("big.jsonl", (line * 1100).encode())
    assert err.value.code == "INPUT_UPLOAD_TOO_LARGE"


def test_model_spec_from_picker():
    from backpropagate_app import facade

    assert facade.model_spec("smollm2-135m", "ignored") == "smollm2-135m"
    assert facade.model_spec(facade.CUSTOM_MODEL, "  /models/mine ") == "/models/mine"
    with pytest.raises(BackpropError) as err:
        facade.model_spec(facade.CUSTOM_MODEL, " ")
    assert err.value.code == "INPUT_MODEL_NOT_FOUND"
    labels = [p["label"] for p in facade.preset_options()]
    assert any(label.startswith("smollm2-135m") and "GB VRAM" in label for label in labels)


# ---- backprop ui --------------------------------------------------------------------------------

def test_ui_env_points_reflex_at_the_project_bun(tmp_path):
    from backpropagate_core.cli.ui import ui_env

    bin_dir = tmp_path / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "bun").write_text("")
    env = ui_env({"PATH": "/usr/bin", "REFLEX_DIR": "/mine"}, tools=tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == str(bin_dir)
    assert env["REFLEX_USE_SYSTEM_BUN"] == "1"
    assert env["REFLEX_DIR"] == "/mine"  # what the user set wins
    assert env["REFLEX_TELEMETRY_ENABLED"] == "false" and env["REFLEX_CHECK_LATEST_VERSION"] == "0"
    assert "REFLEX_USE_SYSTEM_BUN" not in ui_env({"PATH": "/usr/bin"}, tools=tmp_path / "none")


def test_reflex_command_is_prod_on_one_port():
    from backpropagate_core.cli.ui import reflex_command

    cmd = reflex_command("127.0.0.1", 7862)
    assert cmd[1:4] == ["-m", "reflex", "run"]
    assert "--single-port" in cmd and cmd[cmd.index("--env") + 1] == "prod"
    assert cmd[cmd.index("--frontend-port") + 1] == "7862"


def test_check_can_start_refuses_early(tmp_path):
    from backpropagate_core.cli.ui import check_can_start, ui_env

    env = ui_env(dict(os.environ))
    with pytest.raises(BackpropError) as err:
        check_can_start("127.0.0.1", 7862, env, repo=tmp_path)
    assert err.value.code == "UI_START_FAILED" and "rxconfig.py" in err.value.message
    with pytest.raises(BackpropError) as err:
        check_can_start("127.0.0.1", 7862, {"PATH": str(tmp_path)}, repo=REPO)
    assert err.value.code == "DEP_MISSING" and "bun" in err.value.message
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if not (REPO / ".tools" / "node_modules" / ".bin" / "bun").exists():
            pytest.skip("bun is not installed under .tools (make install)")
        with pytest.raises(BackpropError) as err:
            check_can_start("127.0.0.1", port, env, repo=REPO)
    assert err.value.code == "UI_START_FAILED" and "--port" in err.value.hint


def test_the_attack_suite_targets_the_real_state_names():
    """The security suite sends raw websocket events by state name; moving a page must not
    leave it attacking a state that no longer exists."""
    from backpropagate_app.pages.dataset import DatasetState
    from backpropagate_app.pages.train.page import TrainState
    from tests.security.test_attack_suite import DATASET, TRAIN

    assert (DATASET, TRAIN) == (DatasetState.get_full_name(), TrainState.get_full_name())
