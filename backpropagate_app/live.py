"""Following a run live: the vars of a run panel and the panel itself.

The polling (store → tail → State) is `poller.Poller`; this module is what a page shows.

The browser re-renders every component that reads a State whenever any var of that State
changes, and on a small machine it shares the CPU with the training it shows. So the vars
that change at their own pace live in substates of the page's run State: the loss curve
(`RunChart`), the held-out answers (`RunAnswers`), the hardware sample (`RunHardware`) and
the event log (`RunLog`). A page declares each part it shows as a subclass of its run
State; a hardware sample then redraws the hardware card, not the charts.
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
    artifacts: list[dict[str, str]] = []
    error: dict[str, str] = {}
    resumable: bool = False
    method: str = ""
    """SFT, DPO or ORPO; empty while a run asked for "auto" has not started."""
    preference: bool = False
    reward_accuracy: str = ""
    reward_margin: str = ""
    chosen_logp: str = ""
    rejected_logp: str = ""
    eval_reward_accuracy: str = ""
    eval_reward_step: str = ""

    async def _show(self, view: dict, previous: dict | None) -> None:
        """Copy the fields of `view` that differ from `previous` into this State or the
        part that holds them; fields the page shows nowhere are left out."""
        # Class attributes through the instance: in a background task `self` is a proxy.
        owners: dict[str, rx.State] = dict.fromkeys(self.base_vars, self)
        for substate in self.get_substates():
            if issubclass(substate, PARTS):
                owners.update(dict.fromkeys(substate.base_vars, await self.get_state(substate)))
        for key, value in view.items():
            if key in owners and (previous is None or previous.get(key) != value):
                setattr(owners[key], key, value)

    async def _follow(self, choose: Callable[[str], str]) -> None:
        """Poll the store for the run this panel shows, forever (until the page's load
        chain is cancelled by navigation or disconnect). `choose(current_run_id)` returns
        the run to show each poll, so a page can switch to a run started elsewhere."""
        await Poller(choose).run(self)


class RunChart(rx.State, mixin=True):
    """The loss curve (and a preference run's reward curves): changes with every step."""

    points: list[dict[str, Any]] = []


class RunAnswers(rx.State, mixin=True):
    """The held-out answers and their score: change at each evaluation."""

    samples: list[dict[str, Any]] = []
    answer_score: str = ""
    base_score: str = ""
    samples_step: int = 0
    best_step: str = ""
    score_points: list[dict[str, Any]] = []


class RunHardware(rx.State, mixin=True):
    """The newest hardware sample: changes every few seconds, steps or not."""

    hardware: list[dict[str, Any]] = []


class RunLog(rx.State, mixin=True):
    """The event log: a line every few steps."""

    log: list[dict[str, str]] = []


PARTS = (RunChart, RunAnswers, RunHardware, RunLog)


def part(S: type[RunView], mixin: type) -> Any:
    """The substate of the run State `S` that holds `mixin`'s vars."""
    found = [c for c in S.get_substates() if issubclass(c, mixin)]
    if len(found) != 1:
        raise TypeError(f"{S.__name__} needs exactly one substate with {mixin.__name__}, has {len(found)}")
    return found[0]


# ---- the run panel ---------------------------------------------------------------------------

def progress_block(S: type[RunView]) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.text("Step ", rx.text.strong(S.step, data_testid="step"), " of ",
                    rx.text.span(S.total, data_testid="total"), size="2"),
            rx.spacer(),
            rx.cond(S.method != "", rx.badge(S.method, variant="outline", data_testid="run-method")),
            ui.status_badge(S.status, data_testid="run-status"),
            width="100%",
        ),
        # No easing between steps: without a GPU, each frame of it is drawn by the CPU the
        # training needs.
        rx.progress(value=S.progress.to(int), max=100, width="100%",
                    style={"& .rt-ProgressIndicator": {"transition": "none"}}),
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


def preference_block(S: type[RunView]) -> rx.Component:
    """A DPO or ORPO run's reward figures beside its loss: how often, and by how much, the
    model prefers the chosen answer of a pair over the rejected one."""
    points = part(S, RunChart).points
    held_out = rx.cond(S.eval_reward_step != "", "Held-out reward accuracy (step " + S.eval_reward_step + ")",
                       "Held-out reward accuracy")
    return rx.vstack(
        rx.separator(size="4"),
        rx.text("How the model ranks the answer pairs", size="3", weight="bold"),
        rx.flex(
            ui.stat("Reward accuracy", S.reward_accuracy, "reward-accuracy"),
            ui.stat(held_out, S.eval_reward_accuracy, "eval-reward-accuracy"),
            ui.stat("Reward margin", S.reward_margin, "reward-margin"),
            ui.stat("Log-prob chosen", S.chosen_logp, "chosen-logp"),
            ui.stat("Log-prob rejected", S.rejected_logp, "rejected-logp"),
            wrap="wrap", spacing="5", width="100%",
        ),
        rx.grid(
            ui.line_chart(points, [("reward_accuracy", "reward accuracy %", "green"),
                                     ("eval_reward_accuracy", "held-out %", "orange")],
                          height=170, test_id="reward-chart", y_domain=[0, 100]),
            ui.line_chart(points, [("reward_margin", "reward margin", "accent"),
                                     ("eval_reward_margin", "held-out margin", "orange")],
                          height=170, test_id="margin-chart"),
            ui.line_chart(points, [("chosen_logp", "log-prob chosen", "green"),
                                     ("rejected_logp", "log-prob rejected", "red")],
                          height=170, test_id="logp-chart"),
            columns=rx.breakpoints(initial="1", md="3"), spacing="3", width="100%",
        ),
        rx.text("Reward accuracy: the share of pairs whose chosen answer the model now prefers more than "
                "the rejected one (relative to where it started, for DPO); the margin is by how much. "
                "Held-out pairs are never trained on and are scored at each evaluation.",
                size="1", color_scheme="gray"),
        spacing="3", width="100%", data_testid="preference-metrics",
    )


def hardware_panel(S: type[RunView]) -> rx.Component:
    H = part(S, RunHardware)

    def row(item) -> rx.Component:
        return rx.hstack(
            rx.text(item["label"], size="2", width="7em", color_scheme="gray"),
            rx.cond(item["pct"].to(float) >= 0,
                    rx.progress(value=item["pct"].to(int), max=100, width="8em"), rx.box()),
            rx.text(item["value"], size="2"),
            align="center", spacing="3",
        )

    return ui.card(
        rx.cond(H.hardware.length() > 0,
                rx.vstack(rx.foreach(H.hardware, row), spacing="2", data_testid="hardware"),
                ui.empty_note("No hardware sample yet.")),
        title="Hardware",
    )


def event_log(S: type[RunView], height: str = "16em") -> rx.Component:
    L = part(S, RunLog)

    def line(item) -> rx.Component:
        return rx.hstack(
            rx.text(item["time"], size="1", color_scheme="gray", font_family="monospace"),
            rx.badge(item["kind"], variant="outline", size="1"),
            rx.text(item["text"], size="1", style={"word_break": "break-all"}),
            spacing="2", align="center",
        )

    return ui.card(
        rx.scroll_area(
            rx.vstack(rx.foreach(L.log, line), spacing="1", data_testid="event-log"),
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
            ui.loss_chart(part(S, RunChart).points),
            rx.cond(S.preference, preference_block(S)),
            outcome(S),
        ),
        answers_panel(S, part(S, RunAnswers)),
        rx.grid(hardware_panel(S), event_log(S), columns=rx.breakpoints(initial="1", md="2"),
                spacing="4", width="100%"),
        spacing="4", width="100%",
    )
