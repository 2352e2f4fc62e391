"""Logging: levels, JSON or text, file mirror, redaction, and the run id on every line."""

import contextvars
import io
import json
import logging
import sys
import threading

import pytest

from backpropagate_core.runs import events as ev
from backpropagate_core import logs
from backpropagate_core.cli.app import main as cli_main
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore
from backpropagate_core.api import Trainer


def write_dataset(path, repeats: int = 6):
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for _ in range(repeats) for q, a in [("What do bees make?", "Bees make honey."),
                                                 ("What is frozen water?", "Ice.")]]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(autouse=True)
def fresh_logging():
    """Each test configures logging itself; leave no handlers behind for the next one."""
    yield
    root = logging.getLogger(logs.ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    logs._state.update(configured=False, echo_events=True)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_json_when_not_a_terminal_with_run_id_and_redaction():
    out = io.StringIO()
    logs.setup_logging(stream=out)
    log = logs.get_logger("backpropagate_core.test")
    with logs.bind_run("run-1234abcd-0000"):
        log.info("token=%s and key hf_abcdefghijklmnop", "s3cr3tvalue")
    log.warning("outside any run")
    first, second = (json.loads(line) for line in lines(out))
    assert first["run_id"] == "run-1234abcd-0000" and first["level"] == "INFO"
    assert "s3cr3tvalue" not in first["message"] and "hf_abcdefghijklmnop" not in first["message"]
    assert first["logger"] == "backpropagate.test"
    assert second["run_id"] is None and second["message"] == "outside any run"


def test_text_on_a_terminal_and_forced_modes(monkeypatch):
    tty = Tty()
    logs.setup_logging(stream=tty)
    with logs.bind_run("abcdef12-3456"):
        logs.get_logger().info("hello")
    assert lines(tty)[0].endswith("INFO    run_id=abcdef12 hello")

    forced = Tty()
    monkeypatch.setenv("BACKPROPAGATE_LOG_JSON", "true")
    logs.setup_logging(stream=forced)
    logs.get_logger().info("hello")
    assert json.loads(lines(forced)[0])["message"] == "hello"

    plain = io.StringIO()
    monkeypatch.setenv("BACKPROPAGATE_LOG_JSON", "false")
    logs.setup_logging(stream=plain)
    logs.get_logger().info("hello")
    assert lines(plain)[0].endswith("INFO    hello")


def test_level_from_env_and_file_mirror_rotates(monkeypatch, tmp_path):
    mirror = tmp_path / "logs" / "backprop.log"
    monkeypatch.setenv("BACKPROPAGATE_LOG_LEVEL", "warning")
    monkeypatch.setenv("BACKPROPAGATE_LOG_FILE", str(mirror))
    out = io.StringIO()
    logger = logs.setup_logging(stream=out)
    log = logs.get_logger("x")
    log.info("quiet")
    log.warning("loud password=hunter22")
    assert [json.loads(x)["message"] for x in lines(out)] == ["loud password=***"]
    assert [json.loads(x)["message"] for x in mirror.read_text().splitlines()] == ["loud password=***"]
    rotating = [h for h in logger.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    assert rotating and rotating[0].maxBytes > 0 and rotating[0].backupCount > 0
    # Calling setup again replaces its handlers instead of doubling every line.
    logs.setup_logging(stream=out)
    assert len([h for h in logger.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]) == 1


def test_invalid_settings_do_not_stop_logging(monkeypatch):
    monkeypatch.setenv("BACKPROPAGATE_LOG_JSON", "sometimes")
    out = io.StringIO()
    logs.setup_logging(stream=out)
    logs.get_logger().info("still logging")
    assert json.loads(lines(out)[0])["message"] == "still logging"


def test_run_log_keeps_debug_and_only_its_own_run(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROPAGATE_LOG_LEVEL", "ERROR")
    logs.setup_logging(stream=io.StringIO())
    log = logs.get_logger("x")

    def in_run(run_id: str, ready: threading.Barrier) -> None:
        with logs.bind_run(run_id, tmp_path / run_id / logs.RUN_LOG):
            ready.wait()
            log.debug("detail of %s", run_id)
            ready.wait()

    ready = threading.Barrier(2)
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(in_run, rid, ready))
               for rid in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rid in ("run-a", "run-b"):
        text = (tmp_path / rid / logs.RUN_LOG).read_text()
        assert f"run_id={rid} detail of {rid}" in text
        assert text.count("detail of") == 1


def test_library_warnings_land_in_run_log(tmp_path):
    logs.setup_logging(stream=io.StringIO())
    with logs.bind_run("run-lib", tmp_path / logs.RUN_LOG):
        logging.getLogger("transformers.trainer").warning("token=abc123456 looks odd")
    logging.getLogger("transformers.trainer").warning("after the run")
    text = (tmp_path / logs.RUN_LOG).read_text()
    assert "WARNING run_id=run-lib token=*** looks odd" in text and "after the run" not in text


def test_notebooks_get_readable_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert logs.wants_json("auto", io.StringIO()) is False
    assert logs.wants_json(True, io.StringIO()) is True


def test_threads_without_the_context_still_carry_the_run_id():
    out = io.StringIO()
    logs.setup_logging(stream=out)
    with logs.bind_run("run-thread"):
        t = threading.Thread(target=lambda: logs.get_logger("sampler").info("from a thread"))
        t.start()
        t.join()
    assert json.loads(lines(out)[0])["run_id"] == "run-thread"


def test_events_become_log_records_and_the_cli_does_not_echo_them(tmp_path):
    out = io.StringIO()
    logs.setup_logging(stream=out, echo_events=False)
    with logs.bind_run("run-ev", tmp_path / logs.RUN_LOG):
        logs.log_event(ev.LogLine("run-ev", message="tokenizer has no template", level="WARNING"))
        logs.log_event(ev.Step("run-ev", step=3, total=10, loss=1.25, lr=1e-4))
        logs.log_event(ev.Failed("run-ev", code="RUNTIME_LOSS_NONFINITE", message="loss is nan"))
    assert lines(out) == []
    text = (tmp_path / logs.RUN_LOG).read_text()
    assert "WARNING run_id=run-ev tokenizer has no template" in text
    assert "step 3/10 loss=1.2500" in text
    assert "ERROR   run_id=run-ev failed [RUNTIME_LOSS_NONFINITE] loss is nan" in text

    logs.setup_logging(stream=out)  # the worker and the UI server echo events
    logs.log_event(ev.Eval("run-ev", step=4, loss=0.5))
    record = json.loads(lines(out)[0])
    assert record["event"] == "eval" and record["fields"]["loss"] == 0.5


def test_run_id_greps_across_logs_events_checkpoints_and_adapter(tiny_llama, tmp_path):
    """One run, cancelled and resumed by a prefix: its id is in every place a report needs."""
    dataset = write_dataset(tmp_path / "facts.jsonl")

    def stop_early(e):
        if isinstance(e, ev.Step) and e.step == 1:
            (RunStore().get(e.run_id).run_dir / "CANCEL").touch()

    first = Trainer(str(tiny_llama), sink=stop_early).train(dataset, steps=4, save_steps=2,
                                                             val_fraction=0.0)
    assert first.status == "cancelled"
    run_id = first.run_id
    assert cli_main(["resume", run_id[:6]]) == 0
    run = RunStore().get(run_id[:6])
    assert run.status == "completed" and run.step == 4

    log_lines = (run.run_dir / logs.RUN_LOG).read_text().splitlines()
    stamped = [line for line in log_lines if line[:4].isdigit()]
    assert len(stamped) > 10 and all(f"run_id={run_id}" in line for line in stamped)
    assert any(f"stopped at step {first.steps}" in line for line in stamped)
    assert any(f"training started: 4 steps, resumed from step {first.steps}" in line for line in stamped)

    events = [e for _, e in RunStore().events(run_id)]
    assert events and all(e["run_id"] == run_id for e in events)
    assert not (run.run_dir / "events.jsonl").exists()  # the store is the one record of events

    checkpoints = sorted((run.run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    for ckpt in checkpoints:
        assert json.loads((ckpt / "backpropagate.json").read_text())["run_id"] == run_id
    import torch
    args = torch.load(checkpoints[-1] / "training_args.bin", weights_only=False)
    assert args.run_name == run_id  # what W&B / MLflow / TensorBoard would name the run
    assert json.loads((run.run_dir / "adapter" / "backpropagate.json").read_text())["run_id"] == run_id


def test_show_run_accepts_unique_prefixes_only(capsys):
    store = RunStore()
    a = store.create_run(config={}, model="m", dataset="d", run_id="abc11111-0000")
    store.create_run(config={}, model="m", dataset="d", run_id="abc22222-0000")
    assert cli_main(["show-run", "abc1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == a.id
    assert cli_main(["show-run", "abc", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "STATE_RUN_AMBIGUOUS"
    with pytest.raises(BackpropError) as err:
        store.get("zzz")
    assert err.value.code == "STATE_RUN_NOT_FOUND"
