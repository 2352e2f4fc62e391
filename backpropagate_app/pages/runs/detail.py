"""One run: live panel, config with the reasons for each default, events, artifacts, its
exports (runs of kind "export" whose parent it is), Resume and Delete."""

from __future__ import annotations

import asyncio
from collections import deque

import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade
from backpropagate_app.display import config_rows, error_view, event_rows
from backpropagate_app.pages.export.view import export_run_rows
from backpropagate_app.live import RunAnswers, RunChart, RunHardware, RunLog, RunView, run_panel
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_core.errors import BackpropError

ROUTE = "/runs/[run_key]"
EVENT_ROWS = 300


class RunDetails:
    """The config rows and newest events of one run, read from the store incrementally.

    Config and reasons come from the run_started event (defaults resolved) when there is
    one, else the config as given.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.after_id = 0
        self.rows: deque[tuple[int, dict]] = deque(maxlen=EVENT_ROWS)
        self.started: dict | None = None
        self.exports: list[dict[str, str]] = []

    def poll(self) -> dict | None:
        """{config, events, kind, active, parent, exports} when something changed since the
        last poll, else None; raises STATE_RUN_NOT_FOUND once the run is deleted."""
        store = facade.store()
        run = store.get(self.run_id)
        new = store.events(run.id, after_id=self.after_id)
        # An export records its events on its own run, so the list is read every poll.
        exports = export_run_rows(store, run.id)
        if not new and self.after_id and exports == self.exports:
            return None
        self.exports = exports
        for row_id, event in new:
            self.after_id = row_id
            if event.get("type") == "run_started":
                self.started = event
        self.rows.extend(new)
        config, reasons = run.config, {}
        if self.started:
            config, reasons = self.started.get("config") or config, self.started.get("reasons") or {}
        return {"config": config_rows(config, reasons), "events": list(reversed(event_rows(list(self.rows)))),
                "kind": run.kind, "active": run.active, "parent": run.parent or "", "exports": exports}


class RunDetailState(RunView, rx.State):
    config: list[dict[str, str]] = []
    events: list[dict[str, str]] = []
    kind: str = "train"
    parent: str = ""
    exports: list[dict[str, str]] = []
    missing: bool = False
    action_error: dict[str, str] = {}
    confirm_delete: bool = False

    def _route_run_id(self) -> str:
        key = self.router.page.params.get("run_key") or self.router.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            return facade.store().get(key).id
        except BackpropError:
            return ""

    @rx.event
    def load(self):
        self.run_id = self._route_run_id()
        self.missing, self.action_error, self.confirm_delete = not self.run_id, {}, False
        self.config, self.events, self.parent, self.exports = [], [], "", []
        if self.run_id:
            return [RunDetailState.follow, RunDetailState.follow_details]

    @rx.event(background=True)
    async def follow(self):
        await self._follow(lambda current: current)

    @rx.event(background=True)
    async def follow_details(self):
        """Config and the event table; new events are read every second."""
        async with self:
            details = RunDetails(self.run_id)
        while True:
            changed, error = await attempt(details.poll)
            if error:
                if error["code"] != "STATE_RUN_NOT_FOUND":  # not found: the run was deleted
                    async with self:
                        self.action_error = error
                return
            if changed is not None:
                async with self:
                    if self.run_id != details.run_id:
                        return
                    for key in ("config", "events", "kind", "parent", "exports"):
                        setattr(self, key, changed[key])
            await asyncio.sleep(1.0)

    @rx.event(background=True)
    async def resume(self):
        async with self:
            run_id, self.action_error = self.run_id, {}
        try:
            await asyncio.to_thread(facade.resume_run, run_id)
        except BackpropError as err:
            async with self:
                self.action_error = error_view(err)

    @rx.event
    def set_confirm_delete(self, value: bool):
        self.confirm_delete = value

    @rx.event
    def delete(self):
        try:
            facade.store().delete(self.run_id)
        except BackpropError as err:
            self.confirm_delete, self.action_error = False, error_view(err)
            return
        self.confirm_delete = False
        return rx.redirect("/runs")


# The parts of the run panel that change at their own pace (see `live`).
class RunDetailChart(RunChart, RunDetailState):
    pass


class RunDetailAnswers(RunAnswers, RunDetailState):
    pass


class RunDetailHardware(RunHardware, RunDetailState):
    pass


class RunDetailLog(RunLog, RunDetailState):
    pass


# ---- layout -------------------------------------------------------------------------------

def actions() -> rx.Component:
    S = RunDetailState
    return rx.hstack(
        rx.cond(S.resumable & (S.kind == "train"),
                rx.button(rx.icon("play"), "Resume", on_click=S.resume, data_testid="resume")),
        rx.cond(S.active,
                rx.link(rx.button(rx.icon("flame"), "Watch on Train page", variant="soft"), href="/train")),
        rx.cond(~S.active & (S.status != ""),
                rx.link(rx.button(rx.icon("package"), "Export or chat", variant="soft"),
                        href="/export?run=" + rx.cond(S.parent != "", S.parent, S.run_id), data_testid="export-link")),
        rx.alert_dialog.root(
            rx.alert_dialog.trigger(
                rx.button(rx.icon("trash-2"), "Delete", color_scheme="red", variant="soft",
                          disabled=S.active, data_testid="delete"),
            ),
            rx.alert_dialog.content(
                rx.alert_dialog.title("Delete this run?"),
                rx.alert_dialog.description(
                    "The run, its events, checkpoints and adapter folder are removed. This cannot be undone."),
                rx.hstack(
                    rx.alert_dialog.cancel(rx.button("Keep it", variant="soft", color_scheme="gray")),
                    rx.alert_dialog.action(rx.button("Delete", color_scheme="red", on_click=S.delete,
                                                     data_testid="confirm-delete")),
                    spacing="3", justify="end", margin_top="1em",
                ),
            ),
            open=S.confirm_delete, on_open_change=S.set_confirm_delete,
        ),
        spacing="3",
    )


def config_card() -> rx.Component:
    S = RunDetailState
    row = lambda c: rx.table.row(  # noqa: E731
        rx.table.cell(rx.code(c["key"], size="1"), white_space="nowrap"),
        rx.table.cell(rx.text(c["value"], size="2", style={"word_break": "break-all"}),
                      rx.cond(c["reason"] != "", rx.text(c["reason"], size="1", color_scheme="gray"))),
    )
    return ui.card(
        rx.scroll_area(
            rx.table.root(rx.table.body(rx.foreach(S.config, row)), size="1", width="100%",
                          data_testid="config"),
            type="auto", scrollbars="vertical", style={"max_height": "24em"},
        ),
        title="Configuration (defaults resolved)",
    )


def events_card() -> rx.Component:
    S = RunDetailState
    row = lambda e: rx.table.row(rx.table.cell(rx.text(e["time"], size="1", font_family="monospace")),
                                 rx.table.cell(rx.badge(e["kind"], variant="outline", size="1")),
                                 rx.table.cell(rx.text(e["text"], size="1")))  # noqa: E731
    return ui.card(
        rx.scroll_area(
            rx.table.root(rx.table.body(rx.foreach(S.events, row)), size="1", width="100%",
                          data_testid="events"),
            type="auto", scrollbars="vertical", style={"max_height": "24em"},
        ),
        title="All events (newest first)",
    )


def artifacts_card() -> rx.Component:
    S = RunDetailState
    item = lambda a: rx.hstack(rx.badge(a["name"], variant="soft"), ui.code_text(a["path"]), align="center")  # noqa: E731
    return ui.card(
        rx.cond(S.artifacts.length() > 0,
                rx.vstack(rx.foreach(S.artifacts, item), spacing="2", data_testid="detail-artifacts"),
                ui.empty_note("No artifacts yet: a run records its adapter when it completes.")),
        title="Artifacts",
    )


def exports_card() -> rx.Component:
    S = RunDetailState
    row = lambda e: rx.table.row(  # noqa: E731
        rx.table.cell(rx.link(e["title"], href="/runs/" + e["id"].to(str)),
                      rx.text(e["short_id"], size="1", color_scheme="gray")),
        rx.table.cell(ui.status_badge(e["status"])),
        rx.table.cell(rx.text(e["started"], size="2", white_space="nowrap")),
        rx.table.cell(rx.cond(e["error"] != "", rx.text(e["error"], size="1", color="red"), ui.code_text(e["path"]))),
        data_testid="export-run-row", data_status=e["status"],
    )
    return ui.card(rx.table.root(rx.table.body(rx.foreach(S.exports, row)), size="1", width="100%"),
                   title="Exports of this run", data_testid="detail-exports")


def run_detail_page() -> rx.Component:
    S = RunDetailState
    title = rx.hstack(
        rx.heading(S.name, size="4", data_testid="detail-name"),
        rx.code(S.run_id, size="1", variant="ghost"),
        rx.spacer(),
        actions(),
        align="center", width="100%", wrap="wrap",
    )
    return layout(
        "/runs", "Run",
        rx.link(rx.hstack(rx.icon("arrow-left", size=14), rx.text("All runs"), align="center"),
                href="/runs", size="2"),
        rx.cond(
            S.missing,
            ui.card(ui.empty_note("No run with that id: it may have been deleted.", test_id="run-missing")),
            rx.vstack(
                ui.error_callout(S.action_error, test_id="action-error"),
                rx.text(S.model, " · ", S.dataset, size="2", color_scheme="gray",
                        style={"word_break": "break-all"}),
                rx.cond(S.parent != "", rx.link(rx.text("An export of run ", rx.code(S.parent)),
                                                href="/runs/" + S.parent, size="2", data_testid="parent-link")),
                run_panel(S, title),
                rx.grid(config_card(), artifacts_card(), columns=rx.breakpoints(initial="1", lg="2"),
                        spacing="4", width="100%"),
                rx.cond(S.exports.length() > 0, exports_card()),
                events_card(),
                spacing="4", width="100%",
            ),
        ),
    )


PAGE = Page(ROUTE, "Run", run_detail_page, [ShellState.watch, RunDetailState.load])
