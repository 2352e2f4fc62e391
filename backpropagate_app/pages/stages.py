"""Multi-Run and Export: what the run store already holds for those stages.

Both pages list runs (campaigns; finished runs with their artifacts) and link to each
run's detail page. The actions of those stages are added by their own modules.
"""

from __future__ import annotations

import asyncio

import reflex as rx

from backpropagate_app import components as ui
from backpropagate_app import engine
from backpropagate_app.display import run_row, unexpected_error
from backpropagate_app.pages.runs import SparkCache, runs_table
from backpropagate_app.shell import Page, ShellState, layout


def read_campaigns(sparks: SparkCache) -> list[dict]:
    runs = [r for r in engine.store().list(limit=200) if r.kind != "train"]
    return [run_row(r.to_dict(), sparks.get(r)) for r in runs]


def read_exportable(sparks: SparkCache) -> list[dict]:
    """Completed runs, newest first, each with its artifacts (name and path)."""
    runs = engine.store().list(status="completed", limit=200)
    return [run_row(r.to_dict(), sparks.get(r))
            | {"artifacts": [{"name": k, "path": v} for k, v in sorted(r.artifacts.items())]}
            for r in runs]


async def _poll(state, read, write, every: float = 2.0) -> None:
    """Call `read` off the lock every `every` seconds; `write` its result under the lock
    when it changed. Runs until the page's load chain is cancelled."""
    shown = None
    while True:
        try:
            result = (await asyncio.to_thread(read), {})
        except Exception as exc:  # noqa: BLE001 - the UI task's outer edge
            result = (shown[0] if shown else None, unexpected_error(exc))
        if result != shown:
            async with state:
                write(*result)
            shown = result
        await asyncio.sleep(every)


class MultiRunState(rx.State):
    campaigns: list[dict] = []
    finished: list[dict] = []
    error: dict[str, str] = {}

    @rx.event(background=True)
    async def watch(self):
        sparks = SparkCache()

        def write(data, error):
            if data is not None:
                self.campaigns, self.finished = data
            self.error = error

        await _poll(self, lambda: (read_campaigns(sparks), read_exportable(sparks)), write)


class ExportState(rx.State):
    exportable: list[dict] = []
    error: dict[str, str] = {}

    @rx.event(background=True)
    async def watch(self):
        sparks = SparkCache()

        def write(data, error):
            if data is not None:
                self.exportable = data
            self.error = error

        await _poll(self, lambda: read_exportable(sparks), write)


def multirun_page() -> rx.Component:
    S = MultiRunState
    return layout(
        "/multi-run", "Multi-Run",
        ui.card(
            rx.text("A multi-run campaign trains several adapters one after another and merges them. "
                    "Campaigns recorded in the run store are listed here; finished training runs "
                    "are the candidates a campaign can build on.", size="2"),
            title="Campaigns",
        ),
        ui.error_callout(S.error),
        runs_table(S.campaigns, "No campaigns recorded yet."),
        rx.heading("Finished training runs", size="4"),
        runs_table(S.finished, "No finished runs yet. Train one on the Train page."),
    )


def export_page() -> rx.Component:
    S = ExportState

    def run_card(r) -> rx.Component:
        artifact = lambda a: rx.hstack(rx.badge(a["name"], variant="soft"), ui.code_text(a["path"]),
                                       align="center")  # noqa: E731
        return ui.card(
            rx.hstack(rx.link(r["name"], href="/runs/" + r["id"].to(str), weight="bold"),
                      rx.text(r["model"], " · ", r["dataset"], size="1", color_scheme="gray"),
                      rx.spacer(), rx.text("final loss ", r["loss"], size="2"),
                      align="center", width="100%", wrap="wrap"),
            rx.cond(r["artifacts"].to(list[dict[str, str]]).length() > 0,
                    rx.vstack(rx.foreach(r["artifacts"].to(list[dict[str, str]]), artifact), spacing="1"),
                    ui.empty_note("No artifacts recorded.")),
            data_testid="export-run",
        )

    return layout(
        "/export", "Export",
        ui.card(rx.text("Finished runs and the files they produced. Each adapter folder loads with "
                        "peft; open a run for its full configuration.", size="2"),
                title="Finished runs"),
        ui.error_callout(S.error),
        rx.cond(S.exportable.length() > 0,
                rx.vstack(rx.foreach(S.exportable, run_card), spacing="3", width="100%"),
                ui.empty_note("No finished runs yet. Train one on the Train page.")),
    )


MULTIRUN = Page("/multi-run", "Multi-Run", multirun_page, [ShellState.watch, MultiRunState.watch])
EXPORT = Page("/export", "Export", export_page, [ShellState.watch, ExportState.watch])
