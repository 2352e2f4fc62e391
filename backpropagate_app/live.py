"""Following a run live: the vars of a run panel and the panel itself.

The polling (store → tail → State) is `poller.Poller`; this module is what a page shows.
"""

from __future__ import annotations

from typing import Any, Callable

import reflex as rx

from backpropagate_app import components as ui
from backpropagate_app.answers import answers_panel
from backpropagate_app.poller import Poller


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
    samples: list[dict[str, Any]] = []
    answer_score: str = ""
    base_score: str = ""
    samples_step: int = 0
    best_step: str = ""

    def _show(self, view: dict, previous: dict | None) -> None:
        """Copy the fields of `view` that differ from `previous` into the State."""
        for key, value in view.items():
            if previous is None or previous.get(key) != value:
                setattr(self, key, value)

    async def _follow(self, choose: Callable[[str], str]) -> None:
        """Poll the store for the run this panel shows, forever (until the page's load
        chain is cancelled by navigation or disconnect). `choose(current_run_id)` returns
        the run to show each poll, so a page can switch to a run started elsewhere."""
        await Poller(choose).run(self)


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
        answers_panel(S),
        rx.grid(hardware_panel(S), event_log(S), columns=rx.breakpoints(initial="1", md="2"),
                spacing="4", width="100%"),
        spacing="4", width="100%",
    )
