"""The Multi-Run page's States and the store reads behind them.

Two States, as on the Train page: `MultiRunState` holds the form and the comparison,
`CampaignRun` the campaign being watched, so that its live updates re-render only the
campaign panels (the browser shares the CPU with training). The run store is the truth:
the watched campaign is read from it every poll, so a reload, a second tab or a campaign
started from the CLI all show the same thing. The layout is `pages/multirun.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import reflex as rx

from backpropagate_app import facade
from backpropagate_app.pages.multirun import view
from backpropagate_app.live import RunChart, RunLog, RunView
from backpropagate_app.poller import Poller
from backpropagate_app.tasks import attempt
from backpropagate_core.errors import BackpropError
from backpropagate_core.training.campaign_state import KIND

LIST_POLL_S = 2.0
"""How often the campaign pickers are refreshed from the store."""
STOP_POLL_S = 0.5
"""How often Stop looks whether the campaign has ended."""


# ---- engine side (blocking; called off the event loop) ---------------------------------------------

def campaign_to_show(current: str, pinned: bool) -> str:
    """The campaign someone picked (`pinned`), else the newest active campaign (started
    here, in another tab or from the CLI), else the one shown if it still exists, else
    the newest."""
    store = facade.store()
    if pinned and current:
        try:
            return store.get(current).id
        except BackpropError:
            return current
    runs = store.list(kind=KIND, limit=50)
    active = [r for r in runs if r.active]
    if active:
        return active[0].id
    if any(r.id == current for r in runs):
        return current
    return runs[0].id if runs else ""


def list_campaigns() -> list[dict[str, str]]:
    return [view.campaign_option(r.to_dict()) for r in facade.store().list(kind=KIND, limit=100)]


def launch(choice: str, custom: str, data: str, name: str, form: dict[str, str], fresh: bool) -> str:
    """Check the form and start a campaign's worker; returns its run id."""
    model = facade.model_spec(choice, custom)
    if not data:
        raise BackpropError("INPUT_DATASET_NOT_FOUND", "no dataset chosen",
                            hint="Pick a dataset, or upload one on the Dataset page.")
    return facade.start_multi_run(model, data, name, fresh, view.campaign_options(form))


def read_comparison(a: str, b: str) -> dict:
    store = facade.store()
    runs = [store.get(run_id) for run_id in (a, b)]
    steps = [[e for _, e in store.events(r.id, types=("step",))] for r in runs]
    return view.comparison(runs[0].to_dict(), runs[1].to_dict(), *steps)


def _picked(state: "CampaignRun") -> tuple[str, bool]:
    return state.run_id, state.pinned


def _choose(picked: tuple[str, bool]) -> str:
    return campaign_to_show(*picked)


# ---- states -------------------------------------------------------------------------------------

class CampaignRun(RunView, rx.State):
    """The campaign the page shows, followed live from the store."""

    pinned: bool = False
    markers: list[dict[str, Any]] = []
    timeline: list[dict[str, str]] = []
    heat: list[dict[str, str]] = []
    heat_columns: str = "1"
    avg_forgetting: str = view.DASH
    forgetting_note: str = ""
    merge_mode: str = ""
    runs_done: str = ""

    @rx.event
    def load(self):
        wanted = self.router.url.query_parameters.get("run", "")
        if wanted:
            self.run_id, self.pinned = wanted, True
        return CampaignRun.follow

    @rx.event
    def pick(self, run_id: str):
        self.run_id, self.pinned = run_id, True

    @rx.event(background=True)
    async def follow(self):
        """Poll the store for the campaign shown until the page's load chain is cancelled."""
        await Poller(_choose, picked=_picked, tail=view.CampaignTail, empty=view.EMPTY_CAMPAIGN_VIEW).run(self)


# The parts of the campaign panel that change at their own pace (see `live`).
class CampaignRunChart(RunChart, CampaignRun):
    pass


class CampaignRunLog(RunLog, CampaignRun):
    pass


class MultiRunState(rx.State):
    """The form (model, dataset, campaign settings; Start, Stop, Resume) and the comparison."""

    presets: list[dict[str, str]] = []
    model_choice: str = ""
    custom_model: str = ""
    datasets: list[dict[str, str]] = []
    dataset_path: str = ""
    run_name: str = ""
    form: dict[str, str] = {}
    fresh: bool = False
    start_error: dict[str, str] = {}
    starting: bool = False
    stopping: bool = False
    campaigns: list[dict[str, str]] = []
    compare_a: str = ""
    compare_b: str = ""
    cmp: dict[str, dict[str, str]] = {"a": {}, "b": {}}
    cmp_rows: list[dict[str, str]] = []
    cmp_points: list[dict[str, Any]] = []
    cmp_error: dict[str, str] = {}

    @rx.event
    def load(self):
        self.presets = facade.preset_options()
        self.datasets = facade.workspace_files()
        if not self.model_choice:
            model = facade.default_model()
            names = {p["value"] for p in self.presets}
            self.model_choice = model if model in names else facade.CUSTOM_MODEL
            self.custom_model = "" if model in names else model
        if not self.dataset_path and self.datasets:
            self.dataset_path = self.datasets[0]["path"]
        if not self.form:
            self.form = view.default_form()
        return MultiRunState.watch_list

    @rx.var
    def finished(self) -> list[dict[str, str]]:
        return [c for c in self.campaigns if c["status"] == "completed"]

    @rx.event(background=True)
    async def watch_list(self):
        """Keep the campaign pickers current; on the first read, preselect two finished
        campaigns to compare."""
        shown = None
        while True:
            found, error = await attempt(list_campaigns)
            if error:
                found = shown  # keep the last list; the next read may work
            if found is not None and found != shown:
                async with self:
                    self.campaigns = found
                    pick = not (self.compare_a and self.compare_b)
                    if pick:
                        self.compare_a, self.compare_b = view.default_pair(
                            [c for c in found if c["status"] == "completed"])
                if pick:
                    await self._compare()
                shown = found
            await asyncio.sleep(LIST_POLL_S)

    @rx.event
    def set_model_choice(self, value: str):
        self.model_choice = value

    @rx.event
    def set_custom_model(self, value: str):
        self.custom_model = value

    @rx.event
    def set_dataset(self, value: str):
        self.dataset_path = value

    @rx.event
    def set_run_name(self, value: str):
        self.run_name = value

    @rx.event
    def set_field(self, key: str, value: str):
        self.form = {**self.form, key: value}

    @rx.event
    def set_fresh(self, value: bool):
        self.fresh = value

    @rx.event(background=True)
    async def start(self):
        async with self:
            if self.starting or (await self.get_state(CampaignRun)).active:
                return
            self.starting, self.start_error = True, {}
            form, name, data, fresh = dict(self.form), self.run_name, self.dataset_path, self.fresh
            choice, custom = self.model_choice, self.custom_model
        run_id, error = await attempt(launch, choice, custom, data, name, form, fresh)
        async with self:
            self.starting, self.start_error = False, error
            run = await self.get_state(CampaignRun)
            # The follower may have found the new campaign in the store already; then it
            # shows it in full, and an empty view written over it here would stick.
            if run_id and run.run_id != run_id:
                run.pinned = False
                run._show(view.EMPTY_CAMPAIGN_VIEW | {"run_id": run_id, "status": "queued", "active": True,
                                                      "name": name or run_id[:8]}, None)

    @rx.event(background=True)
    async def stop(self):
        async with self:
            run_id, self.stopping = (await self.get_state(CampaignRun)).run_id, True
        _, error = await attempt(facade.cancel_run, run_id)
        if error:
            async with self:
                self.start_error = error
        # The button stays in "Stopping…" until the store says the campaign ended.
        while True:
            await asyncio.sleep(STOP_POLL_S)
            async with self:
                run = await self.get_state(CampaignRun)
                if not run.active or run.run_id != run_id:
                    self.stopping = False
                    return

    @rx.event(background=True)
    async def resume(self):
        async with self:
            run_id = (await self.get_state(CampaignRun)).run_id
            self.start_error = {}
        _, error = await attempt(facade.resume_run, run_id)
        if error:
            async with self:
                self.start_error = error

    @rx.event(background=True)
    async def set_compare_a(self, value: str):
        async with self:
            self.compare_a = value
        await self._compare()

    @rx.event(background=True)
    async def set_compare_b(self, value: str):
        async with self:
            self.compare_b = value
        await self._compare()

    async def _compare(self) -> None:
        async with self:
            a, b = self.compare_a, self.compare_b
        result, error = view.EMPTY_COMPARISON, {}
        if a and b:
            result, error = await attempt(read_comparison, a, b)
            if error:
                result = view.EMPTY_COMPARISON
        async with self:
            if (self.compare_a, self.compare_b) == (a, b):
                self.cmp = {"a": result["a"], "b": result["b"]}
                self.cmp_rows, self.cmp_points, self.cmp_error = result["rows"], result["points"], error
