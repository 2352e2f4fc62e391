"""The GPU temperature guard: warn, pause until cool, abort; driven by injected readings."""

import threading

import pytest

from backpropagate_core.config import GpuGuardSettings
from backpropagate_core.errors import BackpropError
from backpropagate_core.hardware.gpu import Guard, Sampler
from backpropagate_core.runs.events import GpuGuardEvent


def actions(guard: Guard, temps: list[float]) -> list[str | None]:
    return [(a[0] if (a := guard.observe(t)) else None) for t in temps]


def test_warns_once_per_excursion_then_again_after_cooling():
    guard = Guard()
    assert actions(guard, [60, 81, 85, 82, 70, 83]) == [None, "warn", None, None, None, "warn"]


def test_pauses_at_90_and_resumes_only_below_the_resume_level():
    guard = Guard()
    assert actions(guard, [91, 88, 81, 79.5]) == ["pause", None, None, "resume"]
    assert not guard.paused


def test_aborts_at_95_and_then_stays_quiet():
    guard = Guard()
    assert actions(guard, [85, 96, 97]) == ["warn", "abort", None]
    with pytest.raises(BackpropError) as err:
        guard.wait_if_paused()
    assert err.value.code == "RUNTIME_GPU_OVERHEAT"


def test_abort_limit_stays_clear_of_the_card_shutdown_temperature():
    guard = Guard(shutdown_c=92)
    assert guard.abort_c == 87
    assert actions(guard, [86, 88]) == ["warn", "abort"]


def test_thresholds_are_configurable_and_validated():
    guard = Guard(GpuGuardSettings(warn_c=60, pause_c=70, resume_c=65, abort_c=75))
    assert actions(guard, [61, 71, 66, 64, 76]) == ["warn", "pause", None, "resume", "abort"]
    with pytest.raises(ValueError):
        GpuGuardSettings(pause_c=70, abort_c=60)


def test_a_pause_that_never_cools_aborts_after_max_pause():
    now = [0.0]
    guard = Guard(GpuGuardSettings(max_pause_s=60), clock=lambda: now[0])
    assert actions(guard, [92]) == ["pause"]
    now[0] = 30
    assert actions(guard, [89]) == [None]
    now[0] = 61
    assert actions(guard, [89]) == ["abort"]


def test_training_thread_waits_while_paused_and_continues_on_resume():
    guard = Guard()
    guard.observe(93)
    released = threading.Event()

    def train_step():
        guard.wait_if_paused()
        released.set()

    worker = threading.Thread(target=train_step)
    worker.start()
    assert not released.wait(0.3)  # still paused
    guard.observe(75)
    assert released.wait(2)
    worker.join()


def test_a_stop_request_releases_a_paused_run():
    guard = Guard()
    guard.observe(93)
    guard.wait_if_paused(should_stop=lambda: True)  # returns instead of blocking


def test_sampler_sends_guard_events_and_log_lines_to_the_sink():
    temps = iter([70, 82, 91, 78])
    reader = lambda: {"device": "cuda:0", "gpu_temp_c": float(next(temps))}  # noqa: E731
    seen = []
    sampler = Sampler("run-1", seen.append, interval=0.01, reader=reader)
    for _ in range(4):
        sampler.sample()
    guard_events = [e for e in seen if isinstance(e, GpuGuardEvent)]
    assert [e.action for e in guard_events] == ["warn", "pause", "resume"]
    assert guard_events[1].to_dict()["type"] == "gpu_guard"
    assert any(e.type == "log" and "paused" in e.message for e in seen)


def test_cpu_only_readings_never_trigger_the_guard():
    guard = Guard()
    assert actions(guard, [None, None]) == [None, None]
