"""Train: pick a model and a dataset, check the planned settings, start, watch, stop."""

from __future__ import annotations

import asyncio

import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade
from backpropagate_app import preference
from backpropagate_app.display import EMPTY_RUN_VIEW, error_view
from backpropagate_app.live import RunAnswers, RunChart, RunHardware, RunLog, RunView, run_panel
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_app.pages.train.form import (ALL_FIELDS, FORM_FIELDS, MemoryFacts, default_captions,
                                                field_captions, form_overrides, memory_line, merge_plan,
                                                plan_captions, plan_values)
from backpropagate_core.errors import BackpropError


def run_to_show(current: str) -> str:
    """The newest active run if there is one (started here, in another tab or from the
    CLI), else the run already shown, else the newest training run."""
    runs = facade.store().list(kind="train", limit=20)
    active = [r for r in runs if r.active]
    if active:
        return active[0].id
    if current:
        return current
    return runs[0].id if runs else ""


class TrainRun(RunView, rx.State):
    """The run the Train page shows. Its own State, apart from the form's, so that live
    updates re-render only the run panel (the browser shares the CPU with training)."""

    @rx.event
    def load(self):
        self.run_id = run_to_show(self.run_id)
        return TrainRun.follow

    @rx.event(background=True)
    async def follow(self):
        await self._follow(run_to_show)


# The parts of the run panel that change at their own pace (see `live`).
class TrainRunChart(RunChart, TrainRun):
    pass


class TrainRunAnswers(RunAnswers, TrainRun):
    pass


class TrainRunHardware(RunHardware, TrainRun):
    pass


class TrainRunLog(RunLog, TrainRun):
    pass


def _start(choice: str, custom: str, data: str, name: str, form: dict, planned: dict, method: str,
           pairs: bool) -> str:
    """Start a run from the form (blocking; called off the event loop)."""
    if not data:
        raise BackpropError("INPUT_DATASET_NOT_FOUND", "no dataset chosen",
                            hint="Pick a dataset, or upload one on the Dataset page.")
    overrides = form_overrides(form, planned, method, pairs)
    return facade.start_run(facade.model_spec(choice, custom), data, name, overrides)


class TrainState(rx.State):
    """The form: model, dataset, settings with the plan's reasons; Start and Stop."""

    presets: list[dict[str, str]] = []
    model_choice: str = ""
    custom_model: str = ""
    datasets: list[dict[str, str]] = []
    dataset_path: str = ""
    run_name: str = ""
    form: dict[str, str] = {}
    """What the person typed in each field (prefilled from the plan)."""
    planned: dict[str, float] = {}
    """The last plan's value for each field."""
    captions: dict[str, str] = {}
    plan_facts: MemoryFacts = MemoryFacts()
    """Device, memory and precision from the last plan, for `memory_note`."""
    data_format: str = ""
    """The picked dataset's format, from the last plan; "" until it arrives."""
    method: str = ""
    """The method picked for a preference dataset; "" leaves it to the plan."""
    planned_method: str = ""
    planning: bool = False
    _plan_ticket: int = 0
    plan_error: dict[str, str] = {}
    start_error: dict[str, str] = {}
    starting: bool = False
    stopping: bool = False

    @rx.event
    def load(self):
        self.presets = facade.preset_options()
        self.datasets = facade.workspace_files()
        if not self.model_choice:
            model = facade.default_model()
            preset_names = {p["value"] for p in self.presets}
            self.model_choice = model if model in preset_names else facade.CUSTOM_MODEL
            self.custom_model = "" if model in preset_names else model
        wanted = self.router.url.query_parameters.get("data", "")
        if wanted:
            self.dataset_path = wanted
        elif not self.dataset_path and self.datasets:
            quickstart = [d["path"] for d in self.datasets if d["label"].endswith("quickstart.jsonl")]
            self.dataset_path = (quickstart or [self.datasets[0]["path"]])[0]
        if not self.captions:
            self.captions = default_captions()
            self.form = {key: "" for key, _label, _type in ALL_FIELDS}
        return TrainState.refresh_plan

    @rx.var
    def field_notes(self) -> dict[str, str]:
        return field_captions(self.form, self.planned, self.captions)

    @rx.var
    def memory_note(self) -> str:
        try:
            model = facade.model_spec(self.model_choice, self.custom_model)
        except BackpropError:
            return ""
        return memory_line(model, self.form, self.planned, self.plan_facts)

    @rx.var
    def pairs(self) -> bool:
        return preference.is_preference(self.data_format)

    @rx.var
    def method_shown(self) -> str:
        return self.method or self.planned_method

    @rx.event(background=True)
    async def refresh_plan(self):
        """Ask the engine for its defaults (and why) for this model and dataset. Only the
        newest request may publish, and the spinner stops even if this task is cancelled."""
        async with self:
            try:
                model = facade.model_spec(self.model_choice, self.custom_model)
            except BackpropError:
                return
            data, method = self.dataset_path, self.method
            if not data:
                return
            self._plan_ticket += 1
            ticket = self._plan_ticket
            self.planning, self.plan_error = True, {}
        plan, error = None, {}
        try:
            # A method changes the defaults (DPO learns at a tenth of the SFT rate), so the
            # plan is made with the picked one.
            plan, error = await attempt(facade.plan, model, data, {"method": method} if method else None)
        finally:
            async with self:
                if ticket == self._plan_ticket:
                    self.planning, self.plan_error = False, error
                    if plan is not None:
                        values = plan_values(plan)
                        self.form = merge_plan(self.form, self.planned, values)
                        self.planned, self.captions = values, plan_captions(plan)
                        self.plan_facts = MemoryFacts.of(plan)
                        self.data_format, self.planned_method = plan.format, plan.config.training.method

    @rx.event
    def set_model_choice(self, value: str):
        self.model_choice = value
        if value != facade.CUSTOM_MODEL:
            return TrainState.refresh_plan

    @rx.event
    def set_custom_model(self, value: str):
        self.custom_model = value

    @rx.event
    def custom_model_done(self, _value: str = ""):
        return TrainState.refresh_plan

    @rx.event
    def set_dataset(self, value: str):
        # Another dataset may not hold pairs: its plan says so, and picks its own method.
        self.dataset_path, self.data_format, self.method = value, "", ""
        return TrainState.refresh_plan

    @rx.event
    def set_method(self, value: str):
        self.method = value
        return TrainState.refresh_plan

    @rx.event
    def set_run_name(self, value: str):
        self.run_name = value

    @rx.event
    def set_field(self, key: str, value: str):
        self.form = {**self.form, key: value}

    @rx.event(background=True)
    async def start(self):
        async with self:
            if self.starting or (await self.get_state(TrainRun)).active:
                return
            self.starting, self.start_error = True, {}
            form, planned, name, data = dict(self.form), dict(self.planned), self.run_name, self.dataset_path
            choice, custom, method = self.model_choice, self.custom_model, self.method
            pairs = preference.is_preference(self.data_format)
        run_id, error = await attempt(_start, choice, custom, data, name, form, planned, method, pairs)
        run_id = run_id or ""
        async with self:
            self.starting, self.start_error = False, error
            run = await self.get_state(TrainRun)
            # The poller may already show this run in full; only a new run starts empty.
            if run_id and run.run_id != run_id:
                run._show(EMPTY_RUN_VIEW | {"run_id": run_id, "status": "queued", "active": True,
                                            "name": name or run_id[:8]}, None)

    @rx.event(background=True)
    async def stop(self):
        async with self:
            run_id, self.stopping = (await self.get_state(TrainRun)).run_id, True
        try:
            await asyncio.to_thread(facade.cancel_run, run_id)
        except BackpropError as err:
            async with self:
                self.start_error = error_view(err)
        # The button stays in "Stopping..." until the store says the run ended.
        while True:
            await asyncio.sleep(0.5)
            async with self:
                run = await self.get_state(TrainRun)
                if not run.active or run.run_id != run_id:
                    self.stopping = False
                    return


# ---- layout -------------------------------------------------------------------------------

def model_picker() -> rx.Component:
    return ui.model_select(TrainState, TrainRun.active, on_custom_blur=TrainState.custom_model_done)


def dataset_picker() -> rx.Component:
    S = TrainState
    return rx.vstack(
        rx.hstack(rx.text("Dataset", size="2", weight="bold"), rx.spacer(),
                  rx.link("Upload or inspect", href="/dataset", size="1")),
        rx.select.root(
            rx.select.trigger(placeholder="Pick a dataset", width="100%", data_testid="dataset-select"),
            rx.select.content(rx.foreach(S.datasets, lambda d: rx.select.item(d["label"], value=d["path"]))),
            value=S.dataset_path, on_change=S.set_dataset, disabled=TrainRun.active,
        ),
        spacing="1", width="100%",
    )


def field(key: str, label: str, placeholder: str = "auto") -> rx.Component:
    S = TrainState
    return rx.vstack(
        rx.text(label, size="2", weight="bold"),
        rx.input(value=S.form[key], placeholder=placeholder, on_change=lambda v: S.set_field(key, v),
                 disabled=TrainRun.active, width="100%", data_testid=f"field-{key}"),
        rx.text(S.field_notes[key], size="1", color_scheme="gray", data_testid=f"reason-{key}"),
        spacing="1", width="100%",
    )


def method_picker() -> rx.Component:
    """How to train on a preference dataset, each method with its one-line why, and beta."""
    S = TrainState

    def choice(m: dict) -> rx.Component:
        return rx.radio_cards.item(
            rx.vstack(rx.text(m["label"], size="2", weight="bold"),
                      rx.text(m["note"], size="1", color_scheme="gray"), spacing="1", align="start"),
            value=m["value"], data_testid=f"method-{m['value']}")

    return rx.grid(
        rx.vstack(
            rx.text("Method (the dataset holds chosen / rejected answer pairs)", size="2", weight="bold"),
            rx.radio_cards.root(*[choice(m) for m in preference.METHODS], value=S.method_shown,
                                on_value_change=S.set_method, disabled=TrainRun.active,
                                columns=rx.breakpoints(initial="1", sm="3"), size="1", width="100%",
                                data_testid="method"),
            rx.text(S.field_notes["method"], size="1", color_scheme="gray", data_testid="reason-method"),
            spacing="1", width="100%",
        ),
        field("beta", "Beta", placeholder="0.1"),
        columns=rx.breakpoints(initial="1", lg="3fr 1fr"), spacing="4", width="100%",
        data_testid="method-picker",
    )


def setup_card() -> rx.Component:
    S = TrainState
    return ui.card(
        rx.grid(model_picker(), dataset_picker(), columns=rx.breakpoints(initial="1", md="2"),
                spacing="4", width="100%"),
        rx.hstack(
            rx.text("Settings", size="3", weight="bold"),
            rx.cond(S.planning, rx.hstack(rx.spinner(size="1"), rx.text("working out defaults…", size="1"),
                                          align="center")),
            align="center", spacing="3",
        ),
        ui.error_callout(S.plan_error, test_id="plan-error"),
        rx.cond(S.pairs, method_picker()),
        rx.grid(*[field(key, label) for key, label, _t in FORM_FIELDS],
                columns=rx.breakpoints(initial="1", sm="2", lg="4"), spacing="4", width="100%"),
        rx.cond(S.memory_note != "",
                rx.callout(S.memory_note, icon="memory-stick", size="1", variant="surface",
                           color_scheme=rx.cond(S.memory_note.contains("may not fit"), "orange", "gray"),
                           data_testid="memory-estimate")),
        rx.vstack(rx.text("Run name (optional)", size="2", weight="bold"),
                  rx.input(value=S.run_name, on_change=S.set_run_name, placeholder="my-first-run",
                           disabled=TrainRun.active, data_testid="run-name"),
                  spacing="1"),
        ui.error_callout(S.start_error, test_id="start-error"),
        rx.hstack(
            rx.button(rx.icon("play"), "Start training", on_click=S.start, size="3",
                      loading=S.starting, disabled=TrainRun.active, data_testid="start"),
            rx.button(rx.icon("square"), rx.cond(S.stopping, "Stopping…", "Stop"), on_click=S.stop,
                      size="3", color_scheme="red", variant="soft",
                      disabled=~TrainRun.active | S.stopping, data_testid="stop"),
            spacing="3",
        ),
        title="Set up a run",
    )


def live_title() -> rx.Component:
    S = TrainRun
    return rx.hstack(
        rx.heading(rx.cond(S.active, "Training ", "Last run "), size="4"),
        rx.link(S.name, href="/runs/" + S.run_id, size="4", data_testid="run-link"),
        rx.text(S.model, " · ", S.dataset, size="1", color_scheme="gray", style={"word_break": "break-all"}),
        align="baseline", spacing="2", wrap="wrap",
    )


def train_page() -> rx.Component:
    S = TrainRun
    return layout(
        "/train", "Train",
        setup_card(),
        rx.cond(S.run_id != "", run_panel(S, live_title()),
                ui.card(ui.empty_note("No runs yet: pick a model and a dataset, then press Start."))),
    )


PAGE = Page("/train", "Train", train_page, [ShellState.watch, TrainState.load, TrainRun.load])
