"""Following a run from the store for a page: one poller for the Train, run detail and
Multi-Run pages.

The run store is the truth. A page's background task polls `RunStore.events` every
POLL_S seconds, folds new events into a tail (`RunTail`, or `CampaignTail` for a
campaign) outside the State, and takes the State lock only to copy the changed fields in.
Reloading, a second tab or a restarted server therefore show the same run, and closing the
browser never touches the worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from backpropagate_app import facade
from backpropagate_app.display import EMPTY_RUN_VIEW, RunTail
from backpropagate_app.tasks import attempt
from backpropagate_core.errors import BackpropError

POLL_S = 0.3
"""How often an open page looks at the store (a stat call; it is read only after a write); a
step event shows within about this long."""
REFRESH_S = 5.0
"""An unchanged run is still read this often, so elapsed time moves on between slow steps.
Every refresh re-renders the panel in the browser, which shares the CPU with the training."""
MIN_PUBLISH_S = 0.5
"""Fastest a panel re-renders: every update costs the browser, which on a small machine
shares the CPU with the training it shows. Latency stays well under a second."""
RECHECK_S = 2.0
"""How often the loop looks at the State for a run the page itself picked."""
LAZY_FIELDS = frozenset({"hardware", "elapsed"})
"""Fields that alone do not re-render a panel before REFRESH_S has passed: a hardware sample
(every few seconds) then shows with the next step, instead of costing a render of its own."""


def read_run(run_id: str, tail: RunTail) -> tuple[dict | None, bool]:
    """(Run.to_dict() or None if the run is gone, whether new events arrived) for one poll."""
    store = facade.store()
    try:
        run = store.get(run_id).to_dict()
    except BackpropError:
        return None, False
    return run, tail.feed(store.events(run_id, after_id=tail.after_id))


def _run_id(state) -> str:
    return state.run_id


class Poller:
    """Follows, for one page's State, the run that `choose` names, until the page's load
    chain is cancelled by navigation or disconnect.

    `picked(state)` is what the page itself chose (read under the lock; by default its
    `run_id`); `choose(picked)` runs off the lock each poll and returns the run to show, so
    a page can switch to a run started elsewhere. `tail(run_id)` makes the object that folds
    that run's events into a view, and `empty` is the view of no run. The State must have
    the run panel's `async _show(view, previous)` (`live.RunView`).
    """

    def __init__(self, choose: Callable[[Any], str], picked: Callable[[Any], Any] = _run_id,
                 tail: Callable[[str], RunTail] = RunTail, empty: dict = EMPTY_RUN_VIEW) -> None:
        self.choose, self.picked, self.new_tail, self.empty = choose, picked, tail, empty
        self.tail: RunTail | None = None
        self.latest: dict | None = None  # the newest view read, published or not
        self.shown: dict | None = None  # the view the State has
        self.refreshed = time.monotonic()
        self.stamp: tuple | None = None  # the store's stamp at the last read

    def _read(self, current: Any) -> dict:
        """The view to show after one poll (blocking: runs in a thread)."""
        # What to show depends only on the store and the page's pick: while neither changed,
        # a poll is one stat call.
        store = facade.store()
        before = (store.stamp(), current)
        if (before == self.stamp and self.latest is not None
                and time.monotonic() - self.refreshed <= REFRESH_S):
            return self.latest
        self.stamp = None
        wanted = self.choose(current)
        if self.tail is None or self.tail.run_id != wanted:
            self.tail, self.latest = self.new_tail(wanted), None
        run, fresh = read_run(wanted, self.tail) if wanted else (None, False)
        # Closing the last connection may checkpoint the log and so change the stamp; a
        # changed stamp might also be a write made during this read, so it is read again.
        after = (store.stamp(), current)
        self.stamp = after if after == before else None
        if run is None:
            self.latest = self.empty | {"run_id": wanted}
        elif fresh or self.latest is None or time.monotonic() - self.refreshed > REFRESH_S:
            self.refreshed = time.monotonic()
            self.latest = self.tail.view(run)
        return self.latest

    def _wait(self, view: dict, since_published: float) -> float:
        """Seconds to hold `view` back before publishing it (0: publish now)."""
        if self.shown is None:
            return 0.0
        if since_published < MIN_PUBLISH_S:
            return MIN_PUBLISH_S - since_published
        changed = {k for k, v in view.items() if self.shown.get(k) != v}
        if changed and changed <= LAZY_FIELDS and since_published < REFRESH_S:
            return POLL_S  # keep polling: a step may come to take it along
        return 0.0

    async def run(self, state) -> None:
        """Poll forever; the lock is taken only to publish a changed view, and every few
        seconds to notice a run picked by the page itself."""
        checked = published = time.monotonic()
        async with state:
            current = self.picked(state)
        while True:
            view, error = await attempt(self._read, current)
            if error:  # show it and keep polling: the next read may work again
                view = (self.shown or self.empty) | {"error": error}
            now = time.monotonic()
            recheck = now - checked > RECHECK_S
            if view != self.shown or recheck:
                # A held view waits; the page's own pick is still looked at on time.
                wait = self._wait(view, now - published)
                if wait and not recheck:
                    await asyncio.sleep(wait)
                    continue  # read once more and publish the newest
                async with state:
                    if self.picked(state) != current:
                        self.shown = None  # the page chose a run: follow it next poll
                    elif not wait:
                        await state._show(view, self.shown)
                        self.shown = view
                        published = time.monotonic()
                    current = self.picked(state)
                checked = time.monotonic()
            await asyncio.sleep(POLL_S)
