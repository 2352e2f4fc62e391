"""What the model answers now: held-out questions with the reference, the base model's
answer and the answer at the latest evaluation, and the held-out score over the run.

Fed by the run's `samples` and `eval` events; the Train page and a run's page show it.
"""

from __future__ import annotations

from typing import Any

import reflex as rx

from backpropagate_app import components as ui

EMPTY: dict = {"samples": [], "answer_score": "", "base_score": "", "samples_step": 0, "best_step": ""}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def samples_view(samples: dict | None, finished: dict | None = None) -> dict:
    """The panel's vars from the newest samples event (and the finished event's best step)."""
    if not samples:
        return dict(EMPTY)
    rows = [{"prompt": s.get("prompt", ""), "reference": s.get("reference", ""),
             "base": s.get("base") or "—", "answer": s.get("answer") or "(empty answer)",
             "learned": bool(s.get("learned"))} for s in samples.get("samples") or []]
    best = (finished or {}).get("best_step")
    return {"samples": rows, "answer_score": _pct(samples.get("answer_score")),
            "base_score": _pct(samples.get("base_score")), "samples_step": samples.get("step", 0),
            "best_step": "" if best is None else str(best)}


def learned_cells(summary: dict) -> dict:
    """The Runs table's "Learned" column: the kept step's held-out answer score against
    the base model's, from the run's summary."""
    best, base = summary.get("best_score"), summary.get("base_score")
    if best is None:
        return {"learned": "—", "learned_note": "no held-out answers scored"}
    note = f"held-out questions answered with the fact at step {summary.get('best_step')}"
    if base is not None:
        note += f"; base model {base:.0%}"
    return {"learned": f"{best:.0%}" + (f" (base {base:.0%})" if base is not None else ""), "learned_note": note}


def score_chart(points: rx.Var) -> rx.Component:
    """Share of held-out questions answered with the fact, per evaluation (percent)."""
    return rx.box(
        rx.recharts.line_chart(
            rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
            rx.recharts.line(data_key="answer_score", name="held-out answers with the fact (%)",
                             stroke=rx.color("green", 9), connect_nulls=True, is_animation_active=False),
            rx.recharts.x_axis(data_key="step", type_="number", domain=["dataMin", "dataMax"],
                               allow_decimals=False),
            rx.recharts.y_axis(domain=[0, 100], width=40),
            rx.recharts.tooltip(),
            data=points, width="100%", height=160,
        ),
        width="100%", data_testid="score-chart",
    )


def answers_panel(S: Any) -> rx.Component:
    """The card: score line, then one row per held-out question."""
    def row(item) -> rx.Component:
        return rx.table.row(
            rx.table.cell(rx.text(item["prompt"], size="2")),
            rx.table.cell(rx.text(item["reference"], size="2", color_scheme="gray")),
            rx.table.cell(rx.text(item["base"], size="2", color_scheme="gray")),
            rx.table.cell(rx.hstack(
                rx.cond(item["learned"], rx.badge("fact", color_scheme="green", size="1"),
                        rx.badge("not yet", color_scheme="orange", size="1")),
                rx.text(item["answer"], size="2"), align="start", spacing="2")),
        )

    headline = rx.text(
        "At step ", rx.text.strong(S.samples_step), " the model answers ",
        rx.text.strong(S.answer_score, data_testid="answer-score"),
        " of the held-out questions with the fact from your data (the base model: ",
        rx.text.span(S.base_score, data_testid="base-score"), ").",
        rx.cond(S.best_step != "", rx.text.span(" The run keeps step ", S.best_step, ", its best.")),
        size="2")
    table = rx.table.root(
        rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                       ("Question", "Reference", "Base model", "Now")])),
        rx.table.body(rx.foreach(S.samples, row)),
        width="100%", size="1", data_testid="answers-table")
    return ui.card(
        rx.cond(S.samples.length() > 0,
                rx.vstack(headline, score_chart(S.points), table, spacing="3", width="100%"),
                ui.empty_note("Held-out questions are answered at each evaluation (datasets of 10+ examples).")),
        title="What the model answers now",
    )
