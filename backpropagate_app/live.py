"""Following a run live: the vars of a run panel, the polling loop, and the panel itself.

The run store is the truth. A page's background task polls `RunStore.events` every
POLL_S seconds, folds new events into a `RunTail` outside the State, and takes the State
lock only to copy the changed fields in. Reloading, a second tab or a restarted server
therefore show the same run, and closing the browser never touches the worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import reflex as rx

from backpropagate_app import components as ui
from backpropagate_app import engine
from backpropagate_app.display import EMPTY_RUN_VIEW, RunTail, unexpected_error
from backpropagate_core.errors import BackpropError

POLL_S = 0.3
"""How often an open page reads the store; a step event shows within about this long."""
REFRESH_S = 1.0
"""Unchanged runs still refresh this often, so elapsed time keeps ticking."""
MIN_PUBLISH_S = 0.5
"""Fastest a panel re-renders: every update costs the browser, which on a small machine
shares the CPU with the training it shows. Latency stays well under a second."""
RECHECK_S = 2.0
"""How often the loop looks at the State for a run the page itself picked."""


def read_run(run_id: str, tail: RunTail) -> tuple[dict | None, bool]:
    """(Run.to_dict() or None if the run is gone, whether new events arrived) for one poll."""
    store = engine.store()
    try:
        run = store.get(run_id).to_dict()
    except BackpropError:
        return None, False
    return run, tail.feed(store.events(run_id, after_id=tail.after_id))


class RunView(rx.State, mixin=True):
    """The vars of one run panel; the Train page and the run detail page both have one."""

    run_id: str = ""
    name: str = ""
    status: str = ""
    active: bool = False
    model: str = ""
    dataset: str = ""
    step: int = 0
    total: int = 0
    progress: float = 0.0
    loss: str = ""
    final_loss: str = ""
    tokens_per_s: str = ""
    lr: str = ""
    eta: str = ""
    elapsed: str = ""
    points: list[dict[str, Any]] = []
    hardware: list[dict[str, Any]] = []
    log: list[dict[str, str]] = []
    artifacts: list[dict[str, str]] = []
    error: dict[str, str] = {}
    resumable: bool = False

    def _show(self, view: dict, previous: dict | None) -> None:
        """Copy the fields of `view` that differ from `previous` into the State."""
        for key, value in view.items():
            if previous is None or previous.get(key) != value:
                setattr(self, key, value)

    async def _follow(self, choose: Callable[[str], str]) -> None:
        """Poll the store for the run this panel shows, forever (until the page's load
        chain is cancelled by navigation or disconnect).

        `choose(current_run_id)` runs off the lock each poll and returns the run to show,
        so a page can switch to a run started elsewhere. The lock is taken only to publish
        a changed view, and every few seconds to notice a run picked by the page itself.
        """
        tail: RunTail | None = None
        shown: dict | None = None
        pending = False  # events folded into the tail that no published view has shown
        refreshed = checked = published = time.monotonic()
        async with self:
            current = self.run_id
        while True:
            try:
                wanted = await asyncio.to_thread(choose, current)
                if tail is None or tail.run_id != wanted:
                    tail, shown = RunTail(wanted), None
                run, fresh = (await asyncio.to_thread(read_run, wanted, tail)) if wanted else (None, False)
                pending = pending or fresh
                if run is None:
                    view = EMPTY_RUN_VIEW | {"run_id": wanted}
                elif pending or shown is None or time.monotonic() - refreshed > REFRESH_S:
                    view, refreshed = tail.view(run), time.monotonic()
                else:
                    view = shown
            except Exception as exc:  # noqa: BLE001 - the UI task's outer edge: show, keep polling
                view = (shown or EMPTY_RUN_VIEW) | {"error": unexpected_error(exc)}
            now = time.monotonic()
            if view != shown or now - checked > RECHECK_S:
                wait = MIN_PUBLISH_S - (now - published)
                if wait > 0 and shown is not None:
                    await asyncio.sleep(wait)
                    continue  # read once more and publish the newest
                async with self:
                    if self.run_id != current:
                        current, shown = self.run_id, None  # the page chose a run: follow it next poll
                    else:
                        self._show(view, shown)
                        current, shown = view["run_id"], view
                pending = False
                published = checked = time.monotonic()
            await asyncio.sleep(POLL_S)


# ---- the run panel ---------------------------------------------------------------------------

def progress_block(S: type[RunView]) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.text("Step ", rx.text.strong(S.step, data_testid="step"), " of ",
                    rx.text.span(S.total, data_testid="total"), size="2"),
            rx.spacer(),
            ui.status_badge(S.status, data_testid="run-status"),
            width="100%",
        ),
        rx.progress(value=S.progress.to(int), max=100, width="100%"),
        rx.flex(
            ui.stat("Loss", S.loss, "loss"),
            ui.stat("Tokens/s", S.tokens_per_s, "tokens-per-s"),
            ui.stat("ETA", S.eta, "eta"),
            ui.stat("Learning rate", S.lr, "lr"),
            ui.stat("Elapsed", S.elapsed, "elapsed"),
            wrap="wrap", spacing="5", width="100%",
        ),
        spacing="3", width="100%",
    )


def hardware_panel(S: type[RunView]) -> rx.Component:
    def row(item) -> rx.Component:
        return rx.hstack(
            rx.text(item["label"], size="2", width="7em", color_scheme="gray"),
            rx.cond(item["pct"].to(float) >= 0,
                    rx.progress(value=item["pct"].to(int), max=100, width="8em"), rx.box()),
            rx.text(item["value"], size="2"),
            align="center", spacing="3",
        )

    return ui.card(
        rx.cond(S.hardware.length() > 0,
                rx.vstack(rx.foreach(S.hardware, row), spacing="2", data_testid="hardware"),
                ui.empty_note("No hardware sample yet.")),
        title="Hardware",
    )


def event_log(S: type[RunView], height: str = "16em") -> rx.Component:
    def line(item) -> rx.Component:
        return rx.hstack(
            rx.text(item["time"], size="1", color_scheme="gray", font_family="monospace"),
            rx.badge(item["kind"], variant="outline", size="1"),
            rx.text(item["text"], size="1", style={"word_break": "break-all"}),
            spacing="2", align="center",
        )

    return ui.card(
        rx.scroll_area(
            rx.vstack(rx.foreach(S.log, line), spacing="1", data_testid="event-log"),
            type="auto", scrollbars="vertical", style={"max_height": height},
        ),
        title="Events",
    )


def outcome(S: type[RunView]) -> rx.Component:
    """Final loss and artifacts once the run completed; the coded error when it failed."""
    artifact = lambda a: rx.hstack(rx.badge(a["name"], variant="soft"), ui.code_text(a["path"]),
                                   align="center")  # noqa: E731
    return rx.fragment(
        ui.error_callout(S.error, test_id="run-error"),
        rx.cond(
            S.status == "completed",
            rx.callout.root(
                rx.callout.icon(rx.icon("circle-check")),
                rx.vstack(
                    rx.text("Finished. Final loss ", rx.text.strong(S.final_loss, data_testid="final-loss")),
                    rx.vstack(rx.foreach(S.artifacts, artifact), spacing="1", data_testid="artifacts"),
                    spacing="2",
                ),
                color_scheme="green", width="100%", data_testid="run-completed",
            ),
        ),
        rx.cond(S.status == "cancelled",
                rx.callout.root(rx.callout.icon(rx.icon("circle-stop")),
                                rx.callout.text("Stopped at step ", S.step, ". A checkpoint was kept: ",
                                                rx.link("resume it from the run's page", href="/runs/" + S.run_id),
                                                "."),
                                color_scheme="orange", width="100%", data_testid="run-cancelled")),
    )


def run_panel(S: type[RunView], title: rx.Component | None = None) -> rx.Component:
    """Progress, loss chart, outcome, hardware and events of the run `S` follows."""
    return rx.vstack(
        ui.card(
            *([title] if title is not None else []),
            progress_block(S),
            ui.loss_chart(S.points),
            outcome(S),
        ),
        rx.grid(hardware_panel(S), event_log(S), columns=rx.breakpoints(initial="1", md="2"),
                spacing="4", width="100%"),
        spacing="4", width="100%",
    )
