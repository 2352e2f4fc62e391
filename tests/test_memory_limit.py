"""The address-space limit of engine processes the UI starts: sized from the machine, set
only under the UI, and a bomb under it fails that process with RUNTIME_MEMORY_LIMIT."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backpropagate_core import memory_limit
from backpropagate_core.runs import client, worker
from backpropagate_core.runs.store import RunStore
from tests.test_train import write_dataset

GIB = 1 << 30
linux_without_gpu = pytest.mark.skipif(not sys.platform.startswith("linux") or memory_limit.gpu_driver_present(),
                                       reason="the limit is only set on Linux machines without a GPU driver")


def test_default_is_three_quarters_of_memory_and_never_under_the_floor():
    assert memory_limit.limit_bytes(None, memory=64 * GIB) == 48 * GIB
    assert memory_limit.limit_bytes(None, memory=4 * GIB) == 8 * GIB
    assert memory_limit.limit_bytes(2.5) == int(2.5 * GIB)
    assert memory_limit.limit_bytes(0) is None


def test_nothing_is_limited_outside_the_ui(monkeypatch):
    monkeypatch.delenv(memory_limit.UI_ENV, raising=False)
    assert memory_limit.apply_under_ui() is None and memory_limit.applied() is None
    assert memory_limit.coded(MemoryError()) is None  # no limit here: not ours to explain


def _run(code: str, gb: str) -> dict:
    """Run `code` in a fresh interpreter started as the UI starts engine processes."""
    env = {**os.environ, memory_limit.UI_ENV: "1", "BACKPROPAGATE_SECURITY__ENGINE_MEMORY_GB": gb}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux_without_gpu
def test_a_bomb_under_the_limit_fails_with_a_coded_error_and_the_process_goes_on():
    result = _run("""
        import json, resource
        from backpropagate_core import memory_limit
        applied = memory_limit.apply_under_ui()
        import numpy, torch
        codes = []
        for bomb in (lambda: bytearray(4 << 30), lambda: torch.empty(4 << 30, dtype=torch.uint8),
                     lambda: numpy.ones(4 << 30, dtype=numpy.uint8)):
            try:
                bomb()
                codes.append(None)
            except Exception as err:  # what a failed allocation looks like from each library
                codes.append(memory_limit.coded(err).code)
        after = len(bytearray(64 << 20))  # smaller allocations still work
        print(json.dumps({"applied": applied, "soft": resource.getrlimit(resource.RLIMIT_AS)[0],
                          "codes": codes, "after": after}))
    """, "3")
    assert result["applied"] == result["soft"] == 3 * GIB
    assert result["codes"] == ["RUNTIME_MEMORY_LIMIT"] * 3 and result["after"] == 64 << 20


@linux_without_gpu
def test_the_helper_answers_a_bomb_with_the_coded_error():
    result = _run("""
        import json, sys
        from backpropagate_core.runs import service
        from backpropagate_core import memory_limit
        memory_limit.apply_under_ui()
        service.HANDLERS["ping"] = lambda request: bytearray(4 << 30)
        print(json.dumps(service.handle(json.dumps({"id": 7, "kind": "ping", "body": {}}))))
    """, "3")
    assert result["id"] == 7 and result["ok"] is False
    assert result["body"]["code"] == "RUNTIME_MEMORY_LIMIT" and "3.0 GiB" in result["body"]["message"]


def _address_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError("no address-space line")


@linux_without_gpu
def test_engine_processes_the_ui_starts_run_under_the_limit(monkeypatch, tiny_llama, tmp_path):
    """The helper and a training worker, started as the UI starts them; the worker trains
    as usual under a limit well above its measured peak (2.35 GiB VmPeak)."""
    monkeypatch.setenv(memory_limit.UI_ENV, "1")
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__ENGINE_MEMORY_GB", "4")
    client.shutdown()  # a helper from an earlier test started without the limit
    try:
        pong = client.ping()
        assert _address_limit(pong.pid) == str(4 * GIB)
    finally:
        client.shutdown()
    store = RunStore()
    run_id = worker.start_run(str(tiny_llama), str(write_dataset(tmp_path / "facts.jsonl")),
                              overrides={"steps": 3, "val_fraction": 0.0})
    deadline = time.time() + 240
    while store.get(run_id).status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.3)
    run = store.get(run_id)
    assert run.status == "completed", run.error_message
    assert f"memory_limit bytes={4 * GIB}" in (Path(run.run_dir) / "worker.log").read_text()


def test_a_helper_killed_by_a_native_allocation_failure_is_not_asked_again(monkeypatch):
    """Rust and C++ libraries abort on a failed allocation; the client says so with the
    code instead of running the same bomb in a fresh helper."""
    engine = client.EngineClient()
    tries = []

    def gone(*_args):
        tries.append(1)
        raise client._HelperGone("memory allocation of 17179869184 bytes failed")

    monkeypatch.setattr(engine, "_exchange", gone)
    with pytest.raises(Exception) as info:
        engine.request(client.Ping())
    assert getattr(info.value, "code", None) == "RUNTIME_MEMORY_LIMIT" and tries == [1]
