"""Compare two runs: the settings that differ, both loss curves on one chart, their
held-out scores, and the same held-out questions answered by each, side by side.

Reached from the Runs page by ticking two runs (`/runs/compare?a=RUN&b=RUN`).
"""

from __future__ import annotations


import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade, preference
from backpropagate_app.display import config_rows, error_view, fmt_loss, thin
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_core.errors import BackpropError

ROUTE = "/runs/compare"


def _side(store, key: str) -> dict:
    """One run's name, resolved settings, curves, scores and latest held-out answers."""
    run = store.get(key)
    started, samples, points, facts = {}, {}, {}, {}
    for _i, event in store.events(run.id, types=("run_started", "step", "eval", "samples", "finished")):
        kind = event["type"]
        preference.fold(facts, event)
        if kind == "run_started":
            started = event
        elif kind == "samples":
            samples = event
        elif kind in ("step", "eval"):
            point = points.setdefault(event["step"], {"step": event["step"]})
            point["loss" if kind == "step" else "eval_loss"] = event.get("loss")
    summary = run.summary or {}
    method = preference.method_of(run.to_dict(), facts.get("started"), facts.get("finished"))
    return {"id": run.id, "name": run.name or run.id[:8], "status": run.status, "method": method,
            "reward_accuracy": facts.get("reward_accuracy"),
            "config": config_rows(started.get("config") or run.config, {}),
            "points": points, "final_loss": fmt_loss(run.final_loss),
            "best": summary.get("best_score"), "base": summary.get("base_score"),
            "best_step": summary.get("best_step"), "samples": samples.get("samples") or []}


def comparison(store, a: str, b: str) -> dict:
    """Everything the page shows for runs `a` and `b` (ids or unique prefixes)."""
    left, right = _side(store, a), _side(store, b)
    theirs = {row["key"]: row["value"] for row in right["config"]}
    mine = {row["key"]: row["value"] for row in left["config"]}
    diff = [{"key": k, "a": mine.get(k, "—"), "b": theirs.get(k, "—")}
            for k in sorted(set(mine) | set(theirs)) if k != "name" and mine.get(k) != theirs.get(k)]
    steps = sorted(set(left["points"]) | set(right["points"]))
    points = [{"step": s,
               **{f"a_{k}": v for k, v in left["points"].get(s, {}).items() if k != "step"},
               **{f"b_{k}": v for k, v in right["points"].get(s, {}).items() if k != "step"}} for s in steps]
    by_prompt_a = {s["prompt"]: s for s in left["samples"]}
    by_prompt_b = {s["prompt"]: s for s in right["samples"]}
    prompts = list(by_prompt_a) + [q for q in by_prompt_b if q not in by_prompt_a]
    answers = [{"prompt": q, "reference": (by_prompt_a.get(q) or by_prompt_b[q])["reference"],
                "a": by_prompt_a.get(q, {}).get("answer", "(not asked)"),
                "a_learned": bool(by_prompt_a.get(q, {}).get("learned")),
                "b": by_prompt_b.get(q, {}).get("answer", "(not asked)"),
                "b_learned": bool(by_prompt_b.get(q, {}).get("learned"))} for q in prompts]

    def head(side: dict) -> dict:
        pct = lambda v: "—" if v is None else f"{v:.0%}"  # noqa: E731
        return {"id": side["id"], "name": side["name"], "status": side["status"],
                "final_loss": side["final_loss"], "score": pct(side["best"]), "base": pct(side["base"]),
                "best_step": "—" if side["best_step"] is None else str(side["best_step"]),
                "method": preference.LABELS.get(side["method"], "auto"),
                "pairs": "yes" if side["method"] in preference.PREFERENCE_METHODS else "",
                "reward_accuracy": pct(side["reward_accuracy"])}

    return {"a": head(left), "b": head(right), "diff": diff, "points": thin(points), "answers": answers}


class CompareState(rx.State):
    a: dict[str, str] = {}
    b: dict[str, str] = {}
    diff: list[dict[str, str]] = []
    points: list[dict] = []
    answers: list[dict] = []
    error: dict[str, str] = {}

    @rx.event(background=True)
    async def load(self):
        async with self:
            query = dict(self.router.url.query_parameters or {}) if hasattr(self.router, "url") else {}
            params = {**query, **(self.router.page.params or {})}
            a, b = params.get("a", ""), params.get("b", "")
        if a and b:
            shown, error = await attempt(comparison, facade.store(), a, b)
        else:
            shown, error = None, error_view(BackpropError(
                "CONFIG_INVALID", "pick two runs to compare", hint="Tick two runs on the Runs page, then press Compare."))
        async with self:
            self.error = error
            if shown is not None:
                self.a, self.b, self.diff = shown["a"], shown["b"], shown["diff"]
                self.points, self.answers = shown["points"], shown["answers"]


def _head(side, label: str, color: str) -> rx.Component:
    return ui.card(
        rx.hstack(rx.badge(label, color_scheme=color), rx.link(side["name"], href="/runs/" + side["id"],
                                                                weight="bold"),
                  ui.status_badge(side["status"]), align="center"),
        rx.flex(ui.stat("Method", side["method"], f"method-{label}"),
                ui.stat("Final loss", side["final_loss"], f"final-loss-{label}"),
                # A preference run's headline is how it ranks held-out pairs, an SFT run's
                # how many held-out questions it answers with the fact.
                rx.cond(side["pairs"] != "",
                        ui.stat("Held-out reward accuracy", side["reward_accuracy"], f"reward-accuracy-{label}"),
                        rx.fragment(ui.stat("Held-out answers with the fact", side["score"], f"score-{label}"),
                                    ui.stat("Base model", side["base"], f"base-{label}"))),
                ui.stat("Kept step", side["best_step"], f"best-{label}"), wrap="wrap", spacing="5"),
    )


def _chart(points: rx.Var) -> rx.Component:
    line = lambda key, name, color, dash="": rx.recharts.line(  # noqa: E731
        data_key=key, name=name, stroke=rx.color(color, 9), stroke_dasharray=dash, dot=False,
        connect_nulls=True, is_animation_active=False)
    return ui.card(
        rx.recharts.line_chart(
            rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
            line("a_loss", "A train loss", "blue"), line("a_eval_loss", "A held-out loss", "blue", "5 5"),
            line("b_loss", "B train loss", "orange"), line("b_eval_loss", "B held-out loss", "orange", "5 5"),
            rx.recharts.x_axis(data_key="step", type_="number", domain=["dataMin", "dataMax"]),
            rx.recharts.y_axis(domain=["auto", "auto"], width=60),
            rx.recharts.legend(), rx.recharts.tooltip(),
            data=points, width="100%", height=300),
        title="Loss: A blue, B orange (dashed: held-out)", data_testid="compare-chart",
    )


def _table(headers: list[str], rows: rx.Var, cells, test_id: str) -> rx.Component:
    return rx.table.root(
        rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in headers])),
        rx.table.body(rx.foreach(rows, lambda r: rx.table.row(*[rx.table.cell(c) for c in cells(r)]))),
        width="100%", size="1", data_testid=test_id)


def _answer(text, learned) -> rx.Component:
    return rx.text(text, size="2", color_scheme=rx.cond(learned, "green", "gray"))


def compare_page() -> rx.Component:
    S = CompareState
    return layout(
        ROUTE, "Compare runs",
        ui.error_callout(S.error, test_id="compare-error"),
        rx.cond(S.a.contains("id"), rx.vstack(
            rx.grid(_head(S.a, "A", "blue"), _head(S.b, "B", "orange"),
                    columns=rx.breakpoints(initial="1", md="2"), spacing="4", width="100%"),
            ui.card(rx.cond(S.diff.length() > 0,
                            _table(["setting", "A", "B"], S.diff, lambda r: [r["key"], r["a"], r["b"]],
                                   "settings-diff"),
                            ui.empty_note("Same settings.")),
                    title="Settings that differ"),
            _chart(S.points),
            ui.card(rx.cond(S.answers.length() > 0,
                            _table(["question", "reference", "A answers", "B answers"], S.answers,
                                   lambda r: [r["prompt"], r["reference"], _answer(r["a"], r["a_learned"]),
                                              _answer(r["b"], r["b_learned"])], "compare-answers"),
                            ui.empty_note("Neither run scored held-out answers.")),
                    title="The same held-out questions (green: gives the fact)"),
            spacing="4", width="100%")),
    )


PAGE = Page(ROUTE, "Compare runs", compare_page, [ShellState.watch, CompareState.load])
