"""The poller every live panel uses, without a browser: it shows what the store holds,
follows a run the page picks, and turns a failed read into a coded error it recovers from;
and `tasks.attempt`, the UI tasks' outer edge."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib

import pytest

from backpropagate_app import poller
from backpropagate_app.poller import Poller
from backpropagate_app.tasks import attempt
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.store import RunStore


class PageState:
    """Stands in for a Reflex State: an async lock and the run panel's `_show`."""

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id
        self.errors: list[dict] = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def _show(self, view: dict, previous: dict | None) -> None:
        for key, value in view.items():
            if previous is None or previous.get(key) != value:
                setattr(self, key, value)
        self.errors.append(view.get("error") or {})


def run_async(coro):
    """asyncio.run in a fresh thread: browser tests may keep an event loop in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def follow_for(seconds: float, follower: Poller, state: PageState, then=None) -> None:
    task = asyncio.ensure_future(follower.run(state))
    await asyncio.sleep(seconds)
    if then:
        then(state)
        await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fast(monkeypatch):
    for name, value in (("POLL_S", 0.01), ("MIN_PUBLISH_S", 0.0), ("RECHECK_S", 0.05)):
        monkeypatch.setattr(poller, name, value)


def record_run(store: RunStore, name: str, steps: int) -> str:
    run = store.create_run(config={"model": "m", "data": "d.jsonl"}, model="m", dataset="/d.jsonl", name=name)
    store.record(ev.RunStarted(run.id, config={}, total_steps=steps))
    for i in range(1, steps + 1):
        store.record(ev.Step(run.id, step=i, total=steps, loss=2.0 / i, lr=1e-4))
    store.record(ev.Finished(run.id, final_loss=2.0 / steps, steps=steps, artifacts={}))
    return run.id


def test_poller_shows_the_chosen_run_then_the_one_the_page_picks(isolated_home, fast):
    store = RunStore(isolated_home)
    first, second = record_run(store, "first", 2), record_run(store, "second", 3)
    state = PageState()
    follower = Poller(lambda current: current or first)

    def pick(s):
        s.run_id = second

    run_async(follow_for(0.4, follower, state, then=pick))
    assert (state.run_id, state.name, state.step, state.status) == (second, "second", 3, "completed")
    assert len(state.points) == 3 and not state.error


def test_a_failed_poll_shows_a_coded_error_and_polling_goes_on(isolated_home, fast):
    run_id = record_run(RunStore(isolated_home), "r", 2)
    calls = []

    def choose(current: str) -> str:
        calls.append(current)
        if len(calls) == 1:
            raise OSError("disk went away")
        return run_id

    state = PageState()
    run_async(follow_for(0.4, Poller(choose), state))
    assert state.errors[0]["code"] == "RUNTIME_UNEXPECTED" and "disk went away" in state.errors[0]["message"]
    assert state.run_id == run_id and state.status == "completed" and not state.error  # recovered


def test_attempt_turns_every_failure_into_a_coded_error():
    def refuse():
        raise BackpropError("INPUT_MODEL_NOT_FOUND", "no model chosen", hint="Pick a preset.")

    assert run_async(attempt(lambda a, b=0: a + b, 1, b=2)) == (3, {})
    assert run_async(attempt(refuse)) == (None, {"code": "INPUT_MODEL_NOT_FOUND", "message": "no model chosen",
                                                 "hint": "Pick a preset."})
    result, error = run_async(attempt(lambda: 1 / 0))
    assert result is None and error["code"] == "RUNTIME_UNEXPECTED" and "ZeroDivisionError" in error["message"]


def test_the_store_is_read_only_after_a_write(isolated_home, fast, monkeypatch):
    """An open page must not cost the training it shows: between writes the poller only
    stats the store, and a new step still shows on the next poll."""
    store = RunStore(isolated_home)
    run_id = record_run(store, "r", 2)
    reads, read_run = [], poller.read_run
    monkeypatch.setattr(poller, "read_run", lambda rid, tail: reads.append(rid) or read_run(rid, tail))
    state = PageState()
    follower = Poller(lambda current: run_id)

    run_async(follow_for(0.5, follower, state))
    # ~50 polls; the first read's own checkpoint changes the stamp, so one more read.
    assert len(reads) <= 2 and state.step == 2

    def write(_):
        store.record(ev.LogLine(run_id, level="INFO", message="a line written later"))

    reads.clear()
    run_async(follow_for(0.3, follower, state, then=write))
    assert 1 <= len(reads) <= 2 and "a line written later" in state.log[0]["text"]


def test_a_hardware_sample_shows_with_the_next_step_not_on_its_own(isolated_home, fast, monkeypatch):
    """Each render costs the browser CPU the training needs: a hardware sample alone waits
    for the next step (or REFRESH_S) instead of re-rendering the panel by itself."""
    monkeypatch.setattr(poller, "REFRESH_S", 2.0)
    store = RunStore(isolated_home)
    run = store.create_run(config={"model": "m"}, model="m", dataset="/d.jsonl", name="live")
    store.record(ev.RunStarted(run.id, config={}, total_steps=10))
    store.record(ev.Step(run.id, step=1, total=10, loss=2.0, lr=1e-4))
    state, follower = PageState(), Poller(lambda current: run.id)

    def sample(pct: float) -> None:
        store.record(ev.HardwareSample(run.id, device="cpu", cpu_pct=pct, ram_used_mb=1024, ram_total_mb=8192))

    async def scenario() -> list:
        seen = []
        task = asyncio.ensure_future(follower.run(state))
        await asyncio.sleep(0.5)
        seen.append((state.step, state.hardware))
        sample(50.0)
        await asyncio.sleep(0.3)
        seen.append((state.step, state.hardware))
        store.record(ev.Step(run.id, step=2, total=10, loss=1.5, lr=1e-4))
        await asyncio.sleep(0.3)
        seen.append((state.step, state.hardware))
        sample(70.0)
        await asyncio.sleep(3.0)  # no step comes: it shows after REFRESH_S
        seen.append((state.step, state.hardware))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return seen

    first, held, with_step, alone = run_async(scenario())
    assert first == (1, [])
    assert held == (1, [])
    assert with_step[0] == 2 and "50%" in str(with_step[1])
    assert alone[0] == 2 and "70%" in str(alone[1])


def test_a_run_the_page_picks_shows_while_a_hardware_sample_is_held(isolated_home, fast, monkeypatch):
    """Holding a hardware sample back must not hold back the page's own choice of run."""
    monkeypatch.setattr(poller, "REFRESH_S", 30.0)
    store = RunStore(isolated_home)
    other = record_run(store, "other", 2)
    run = store.create_run(config={"model": "m"}, model="m", dataset="/d.jsonl", name="live")
    store.record(ev.RunStarted(run.id, config={}, total_steps=10))
    store.record(ev.Step(run.id, step=1, total=10, loss=2.0, lr=1e-4))
    state = PageState(run.id)

    def pick(s):
        store.record(ev.HardwareSample(run.id, device="cpu", cpu_pct=50.0))
        s.run_id = other

    run_async(follow_for(0.5, Poller(lambda current: current), state, then=pick))
    assert (state.run_id, state.name, state.status) == (other, "other", "completed")


def test_the_stamp_changes_with_every_write(isolated_home):
    store = RunStore(isolated_home)
    run_id = record_run(store, "r", 1)
    stamps = {store.stamp()}
    for i in range(20):
        store.record(ev.LogLine(run_id, level="INFO", message=f"line {i}"))
        stamps.add(store.stamp())
        assert store.stamp() == store.stamp()
    assert len(stamps) == 21

