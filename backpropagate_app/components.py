"""Small pure functions returning components the pages share: cards, stats, errors, charts."""

from __future__ import annotations

import reflex as rx

from backpropagate_app import facade
from backpropagate_app.display import STATUS_COLORS


def card(*children, title: str = "", **props) -> rx.Component:
    heading = [rx.heading(title, size="4", margin_bottom="0.5em")] if title else []
    return rx.card(rx.vstack(*heading, *children, spacing="3", width="100%"),
                   width="100%", **props)


def stat(label: str, value: rx.Var | str, test_id: str = "") -> rx.Component:
    return rx.vstack(
        rx.text(label, size="1", color_scheme="gray"),
        rx.text(value, size="4", weight="bold", data_testid=test_id or None),
        spacing="0", min_width="7em",
    )


def status_badge(status: rx.Var | str, **props) -> rx.Component:
    """A coloured badge for a run status."""
    color = rx.match(status, *[(s, c) for s, c in STATUS_COLORS.items()], "gray")
    return rx.badge(status, color_scheme=color, variant="soft", **props)


def error_callout(error: rx.Var, test_id: str = "error") -> rx.Component:
    """The coded error view ({code, message, hint}); renders nothing when `error` is empty."""
    return rx.cond(
        error.contains("code"),
        rx.callout.root(
            rx.callout.icon(rx.icon("triangle-alert")),
            rx.vstack(
                rx.text(rx.text.strong("[", error["code"], "] "), error["message"]),
                rx.text("Hint: ", error["hint"], size="2"),
                spacing="1",
            ),
            color_scheme="red", role="alert", width="100%", data_testid=test_id,
        ),
    )


def loss_chart(points: rx.Var, height: int = 280, test_id: str = "loss-chart") -> rx.Component:
    """Training loss per step, with validation loss where evals ran."""
    return line_chart(points, [("loss", "train loss", "accent"), ("eval_loss", "validation loss", "orange")],
                      height=height, test_id=test_id)


def line_chart(points: rx.Var, series: list[tuple[str, str, str]], height: int = 280, test_id: str = "",
               y_domain: list | None = None) -> rx.Component:
    """Lines over the steps, one per (data key, label, colour) of `series`. Evaluations
    (keys "eval_...") run every few steps, so their dots are joined across the steps between.
    No animation, so live updates draw at once."""
    def line(key: str, label: str, color: str):
        shape = dict(connect_nulls=True) if key.startswith("eval_") else dict(dot=False, type_="monotone")
        return rx.recharts.line(data_key=key, name=label, stroke=rx.color(color, 9),
                                is_animation_active=False, **shape)

    return rx.box(
        rx.recharts.line_chart(
            rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
            *[line(*s) for s in series],
            rx.recharts.x_axis(data_key="step", type_="number", domain=["dataMin", "dataMax"],
                               allow_decimals=False),
            rx.recharts.y_axis(domain=y_domain or ["auto", "auto"], width=60),
            rx.recharts.tooltip(),
            data=points, width="100%", height=height,
        ),
        # A plain legend: recharts' own measures itself on every render, and the chart
        # re-renders with every update.
        rx.hstack(*[_legend_key(label, rx.color(color, 9)) for _key, label, color in series],
                  justify="center", spacing="4", width="100%"),
        width="100%", data_testid=test_id or None, data_points=points.length(),
    )


def _legend_key(label: str, color) -> rx.Component:
    return rx.hstack(rx.box(width="1.2em", height="2px", background=color),
                     rx.text(label, size="1", color=color), align="center", spacing="1")


def spark(points: rx.Var) -> rx.Component:
    return rx.recharts.line_chart(
        rx.recharts.line(data_key="loss", dot=False, is_animation_active=False,
                         stroke=rx.color("accent", 9), stroke_width=1.5),
        rx.recharts.y_axis(domain=["auto", "auto"], hide=True),
        data=points, width=110, height=28,
    )


def empty_note(text: str, test_id: str = "") -> rx.Component:
    return rx.text(text, color_scheme="gray", size="2", data_testid=test_id or None)


def code_text(value) -> rx.Component:
    return rx.code(value, variant="ghost", size="2", style={"word_break": "break-all"})


def model_select(S, disabled, note: str = "", on_custom_blur=None) -> rx.Component:
    """Preset select with a custom entry, and the custom model box when it is chosen; `S`
    has presets, model_choice, custom_model, set_model_choice and set_custom_model."""
    box = dict(on_blur=on_custom_blur) if on_custom_blur is not None else {}
    return rx.vstack(
        rx.text("Model", size="2", weight="bold"),
        rx.select.root(
            rx.select.trigger(width="100%", data_testid="model-select"),
            rx.select.content(
                rx.foreach(S.presets, lambda p: rx.select.item(p["label"], value=p["value"])),
                rx.select.separator(),
                rx.select.item("Custom: hub id or local folder…", value=facade.CUSTOM_MODEL),
            ),
            value=S.model_choice, on_change=S.set_model_choice, disabled=disabled,
        ),
        rx.cond(S.model_choice == facade.CUSTOM_MODEL,
                rx.input(placeholder="org/model-name or /path/to/model", value=S.custom_model,
                         on_change=S.set_custom_model, width="100%", data_testid="custom-model", **box)),
        *([rx.text(note, size="1", color_scheme="gray")] if note else []),
        spacing="1", width="100%",
    )
