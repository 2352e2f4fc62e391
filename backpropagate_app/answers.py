"""What the model answers now: held-out questions with the reference, the base model's
answer and the answer at the latest evaluation, and the held-out score over the run.

The panel the Train page and a run's page show; its vars come from `quality`.
"""

from __future__ import annotations

from typing import Any

import reflex as rx

from backpropagate_app import components as ui

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


def answers_panel(S: Any, A: Any) -> rx.Component:
    """The card: score line, then one row per held-out question. `S` is the run State, `A`
    its part with the answers (`live.RunAnswers`)."""
    def row(item) -> rx.Component:
        return rx.table.row(
            rx.table.cell(rx.text(item["prompt"], size="2")),
            rx.table.cell(rx.text(item["reference"], size="2", color_scheme="gray")),
            rx.table.cell(rx.text(item["base"], size="2", color_scheme="gray")),
            rx.table.cell(rx.hstack(
                rx.cond(~S.preference,
                        rx.cond(item["learned"], rx.badge("fact", color_scheme="green", size="1"),
                                rx.badge("not yet", color_scheme="orange", size="1"))),
                rx.text(item["answer"], size="2"), align="start", spacing="2")),
        )

    kept = rx.cond(A.best_step != "", rx.text.span(" The run keeps step ", A.best_step, ", its best."))
    headline = rx.text(
        "At step ", rx.text.strong(A.samples_step), " the model answers ",
        rx.text.strong(A.answer_score, data_testid="answer-score"),
        " of the held-out questions with the fact from your data (the base model: ",
        rx.text.span(A.base_score, data_testid="base-score"), ").", kept,
        size="2")
    # A preference run learns which answer to prefer, not facts: its answers are shown
    # beside the chosen one, and its score is the reward accuracy above.
    pairs_headline = rx.text(
        "At step ", rx.text.strong(A.samples_step), " the model answers the held-out prompts like this, "
        "beside the chosen answer of each pair and the base model's answer.", kept, size="2")
    table = rx.table.root(
        rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                       ("Question", rx.cond(S.preference, "Chosen answer", "Reference"),
                                        "Base model", "Now")])),
        rx.table.body(rx.foreach(A.samples, row)),
        width="100%", size="1", data_testid="answers-table")
    return ui.card(
        rx.cond(A.samples.length() > 0,
                rx.vstack(rx.cond(S.preference, pairs_headline, rx.fragment(headline, score_chart(A.score_points))),
                          table, spacing="3", width="100%"),
                ui.empty_note("Held-out questions are answered at each evaluation (datasets of 10+ examples).")),
        title="What the model answers now",
    )
