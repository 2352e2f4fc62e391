"""Runs: every training run in the store, filterable by status, each with a loss sparkline.
Exports are runs too (kind "export"); they are listed on their training run's page."""

from __future__ import annotations

import asyncio

import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade, preference
from backpropagate_app.display import run_row, sparkline
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_core.runs.store import STATUSES

ALL = "all"
LIMIT = 200


class SparkCache:
    """Each run's step losses, and what its other events said (`preference.fold`: method,
    held-out reward accuracy), read incrementally when its step or status moved;
    sparklines are made from the losses."""

    EVENTS = ("run_started", "step", "eval", "finished")

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, int, list, dict]] = {}

    def get(self, run) -> tuple[list[dict], dict]:
        """(sparkline points, facts) of a run."""
        seen, after, losses, facts = self._cache.get(run.id, (None, 0, [], {}))
        # The final evaluation and Finished come after the last step: the status moves then.
        if (run.step, run.status) != seen:
            new = facade.store().events(run.id, after_id=after, types=self.EVENTS)
            if new:
                after = new[-1][0]
                losses = losses + [e.get("loss") for _i, e in new if e.get("type") == "step"]
                facts = dict(facts)
                for _i, event in new:
                    preference.fold(facts, event)
            self._cache[run.id] = ((run.step, run.status), after, losses, facts)
        return sparkline(losses), facts


def read_rows(status: str, sparks: SparkCache, kind: str | None = None) -> list[dict]:
    runs = facade.store().list(status=None if status == ALL else status, kind=kind, limit=LIMIT,
                               top_level=True)
    return [run_row(r.to_dict(), *sparks.get(r)) for r in runs]


class RunsState(rx.State):
    status_filter: str = ALL
    rows: list[dict] = []
    error: dict[str, str] = {}
    picked: list[str] = []
    """Runs ticked for comparison, oldest tick first; at most two."""

    @rx.event
    def toggle(self, run_id: str, on: bool):
        kept = [r for r in self.picked if r != run_id]
        self.picked = (kept + [run_id])[-2:] if on else kept

    @rx.event
    def compare(self):
        if len(self.picked) == 2:
            return rx.redirect(f"/runs/compare?a={self.picked[0]}&b={self.picked[1]}")

    @rx.event(background=True)
    async def watch(self):
        """Re-read the table every second while the page is open."""
        sparks, shown = SparkCache(), None
        while True:
            async with self:
                status = self.status_filter
            rows, error = await attempt(read_rows, status, sparks)
            if error:
                rows = shown[0] if shown else []
            if (rows, error) != shown:
                async with self:
                    if self.status_filter == status:
                        self.rows, self.error = rows, error
                        shown = (rows, error)
            await asyncio.sleep(1.0)

    @rx.event
    def set_filter(self, value: str):
        self.status_filter = value
        self.rows = read_rows(value, SparkCache())


def runs_table(rows: rx.Var, empty_text: str, picked: rx.Var | None = None, on_pick=None) -> rx.Component:
    """The runs table; used by the Runs page (with a tick box per run to compare two) and,
    filtered, by the Multi-Run and Export pages."""
    def row(r) -> rx.Component:
        tick = [rx.table.cell(rx.checkbox(checked=picked.contains(r["id"]),
                                          on_change=lambda on: on_pick(r["id"], on),
                                          data_testid="pick-run"))] if on_pick is not None else []
        return rx.table.row(
            *tick,
            rx.table.cell(rx.link(r["name"], href="/runs/" + r["id"].to(str), weight="bold"),
                          rx.text(r["short_id"], size="1", color_scheme="gray")),
            rx.table.cell(ui.status_badge(r["status"])),
            rx.table.cell(rx.badge(r["method"], variant="outline", data_testid="run-method")),
            rx.table.cell(r["model"]),
            rx.table.cell(r["dataset"]),
            rx.table.cell(r["started"]),
            rx.table.cell(r["duration"]),
            rx.table.cell(r["progress"]),
            rx.table.cell(r["loss"]),
            rx.table.cell(rx.text(r["learned"], data_testid="learned"), title=r["learned_note"]),
            rx.table.cell(ui.spark(r["spark"])),
            data_testid="run-row", data_status=r["status"],
        )

    headers = [*([""] if on_pick is not None else []),
               "Run", "Status", "Method", "Model", "Dataset", "Started", "Duration", "Steps", "Loss", "Learned",
               "Curve"]
    return rx.cond(
        rows.length() > 0,
        rx.box(
            rx.table.root(
                rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in headers])),
                rx.table.body(rx.foreach(rows, row)),
                width="100%", variant="surface", data_testid="runs-table",
            ),
            overflow_x="auto", width="100%",
        ),
        ui.empty_note(empty_text, test_id="runs-empty"),
    )


def runs_page() -> rx.Component:
    S = RunsState
    return layout(
        "/runs", "Runs",
        rx.hstack(
            rx.text("Status", size="2"),
            rx.select.root(
                rx.select.trigger(data_testid="status-filter"),
                rx.select.content(*[rx.select.item(s, value=s) for s in (ALL, *STATUSES)]),
                value=S.status_filter, on_change=S.set_filter,
            ),
            rx.spacer(),
            rx.button("Compare", on_click=S.compare, disabled=S.picked.length() != 2,
                      data_testid="compare-runs"),
            rx.text("Tick two runs to compare them.", size="1", color_scheme="gray"),
            align="center", width="100%",
        ),
        ui.error_callout(S.error),
        runs_table(S.rows, "No runs match. Start one on the Train page.", S.picked, S.toggle),
    )


PAGE = Page("/runs", "Runs", runs_page, [ShellState.watch, RunsState.watch])
