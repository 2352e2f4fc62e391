"""Multi-Run: configure a campaign (several LoRA runs over successive chunks of a dataset,
merged with SLAO or trained sequentially), start and stop it, watch each run go through
training and merging, see how much earlier chunks were forgotten, and compare two
finished campaigns.

This module lays the page out; its States (`MultiRunState`, the form and the comparison;
`CampaignRun`, the campaign being watched) are in `state.py` beside this module.
"""

from __future__ import annotations

import reflex as rx

from backpropagate_app import components as ui
from backpropagate_app.pages.multirun import view
from backpropagate_app.live import event_log, outcome, progress_block
from backpropagate_app.pages.multirun.state import CampaignRun, CampaignRunChart, MultiRunState
from backpropagate_app.shell import Page, ShellState, layout

S, C = MultiRunState, CampaignRun


def labelled(label: str, control: rx.Component, caption: str) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="bold"), control,
                     rx.text(caption, size="1", color_scheme="gray"), spacing="1", width="100%")


def picker(items, value, on_change, test_id: str, placeholder: str = "", disabled=False,
           key: str = "value") -> rx.Component:
    return rx.select.root(
        rx.select.trigger(placeholder=placeholder, width="100%", data_testid=test_id),
        rx.select.content(rx.foreach(items, lambda o: rx.select.item(o["label"], value=o[key]))),
        value=value, on_change=on_change, disabled=disabled,
    )


def model_field() -> rx.Component:
    return ui.model_select(S, C.active, "Loaded once; every run trains the same LoRA adapter on it.")


def dataset_field() -> rx.Component:
    return rx.vstack(
        rx.hstack(rx.text("Dataset", size="2", weight="bold"), rx.spacer(),
                  rx.link("Upload or inspect", href="/dataset", size="1")),
        picker(S.datasets, S.dataset_path, S.set_dataset, "dataset-select", "Pick a dataset", C.active, key="path"),
        rx.text("Run i trains on the i-th block of samples, in file order.", size="1", color_scheme="gray"),
        spacing="1", width="100%",
    )


def number_field(key: str, label: str) -> rx.Component:
    return labelled(label, rx.input(value=S.form[key], on_change=lambda v: S.set_field(key, v),
                                    disabled=C.active, width="100%", data_testid=f"field-{key}"),
                    view.CAPTIONS[key])


def sft_only_note() -> rx.Component:
    """Said, not hidden: a preference dataset picked here is refused when the campaign starts."""
    return rx.callout.root(
        rx.callout.icon(rx.icon("info")),
        rx.callout.text(
            "Campaigns train with SFT only: merging DPO or ORPO adapters between runs has not been measured "
            "with SLAO yet, so a preference dataset (chosen / rejected pairs) is refused here. Train one as a "
            "single run on the ", rx.link("Train page", href="/train"), "."),
        size="1", variant="surface", color_scheme="gray", width="100%", data_testid="sft-only-note",
    )


def setup_card() -> rx.Component:
    return ui.card(
        rx.grid(model_field(), dataset_field(), columns=rx.breakpoints(initial="1", md="2"), spacing="4",
                width="100%"),
        sft_only_note(),
        rx.grid(
            *[number_field(key, label) for key, label, _type in view.FORM_FIELDS],
            labelled("Merge mode", picker(view.MERGE_MODES, S.form["merge_mode"],
                                          lambda v: S.set_field("merge_mode", v), "merge-mode", disabled=C.active),
                     view.CAPTIONS["merge_mode"]),
            labelled("λ schedule", picker(view.SCHEDULES, S.form["schedule"], lambda v: S.set_field("schedule", v),
                                          "schedule", disabled=C.active | (S.form["merge_mode"] != "slao")),
                     view.CAPTIONS["schedule"]),
            columns=rx.breakpoints(initial="1", sm="2", lg="3"), spacing="4", width="100%",
        ),
        rx.hstack(
            rx.vstack(rx.text("Campaign name (optional)", size="2", weight="bold"),
                      rx.input(value=S.run_name, on_change=S.set_run_name, placeholder="my-campaign",
                               disabled=C.active, data_testid="run-name"), spacing="1"),
            rx.checkbox("Start over even if an unfinished campaign with these settings exists", checked=S.fresh,
                        on_change=S.set_fresh, disabled=C.active, size="1"),
            align="end", spacing="5", wrap="wrap",
        ),
        ui.error_callout(S.start_error, test_id="start-error"),
        rx.hstack(
            rx.button(rx.icon("play"), "Start campaign", on_click=S.start, size="3", loading=S.starting,
                      disabled=C.active, data_testid="start"),
            rx.button(rx.icon("square"), rx.cond(S.stopping, "Stopping…", "Stop"), on_click=S.stop, size="3",
                      color_scheme="red", variant="soft", disabled=~C.active | S.stopping, data_testid="stop"),
            rx.cond(C.resumable, rx.button(rx.icon("rotate-ccw"), "Resume", on_click=S.resume, size="3",
                                           variant="soft", data_testid="resume")),
            spacing="3",
        ),
        title="Set up a campaign",
    )


def run_segment(r) -> rx.Component:
    return rx.box(
        rx.vstack(
            rx.hstack(rx.text("Run ", r["index"], size="2", weight="bold"), rx.spacer(),
                      rx.badge(r["state"], color_scheme=r["color"], variant="soft", data_testid="run-state"),
                      width="100%", align="center"),
            rx.text(r["steps"], size="1", color_scheme="gray"),
            rx.text(r["lam"], " ", r["loss"], size="1"),
            spacing="1", width="100%",
        ),
        flex="1", min_width="9em", padding="0.6em", border_radius="var(--radius-3)",
        border=f"1px solid {rx.color('gray', 5)}",
        border_top=rx.match(r["color"], *[(c, f"4px solid {rx.color(c, 9)}") for c in view.STATE_COLORS.values()],
                            f"4px solid {rx.color('gray', 9)}"),
        data_testid="timeline-run", data_state=r["state"],
    )


def campaign_chart() -> rx.Component:
    """The loss across the whole campaign, a dashed line and a dot at every merge."""
    marker = lambda m: rx.recharts.reference_line(  # noqa: E731
        rx.recharts.label(value=m["label"], position="insideTopRight",
                          custom_attrs={"fontSize": 11, "fill": rx.color("violet", 11)}),
        x=m["step"], stroke=rx.color("violet", 9), stroke_dasharray="4 4", if_overflow="extendDomain")
    return rx.box(
        rx.recharts.line_chart(
            rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
            rx.foreach(C.markers, marker),
            rx.recharts.line(data_key="loss", name="train loss", stroke=rx.color("accent", 9), dot=False,
                             is_animation_active=False, type_="monotone"),
            rx.recharts.line(data_key="merge", name="merge point", stroke=rx.color("violet", 9), stroke_width=0,
                             dot={"r": 4, "fill": rx.color("violet", 9)}, legend_type="circle",
                             is_animation_active=False),
            rx.recharts.x_axis(data_key="step", type_="number", domain=["dataMin", "dataMax"], allow_decimals=False),
            rx.recharts.y_axis(domain=["auto", "auto"], width=60),
            rx.recharts.tooltip(),
            rx.recharts.legend(),
            data=CampaignRunChart.points, width="100%", height=300,
        ),
        width="100%", data_testid="campaign-chart", data_points=CampaignRunChart.points.length(),
        data_markers=C.markers.length(),
    )


def campaign_card() -> rx.Component:
    return ui.card(
        rx.hstack(
            rx.heading(rx.cond(C.active, "Training ", "Campaign "), size="4"),
            rx.link(C.name, href="/runs/" + C.run_id, size="4", data_testid="run-link"),
            rx.badge(C.merge_mode, variant="outline", data_testid="campaign-mode"),
            rx.text(C.runs_done, size="1", color_scheme="gray", data_testid="runs-done"),
            rx.spacer(),
            rx.box(picker(S.campaigns, C.run_id, C.pick, "campaign-select", "Show another campaign"),
                   min_width="18em"),
            align="center", spacing="2", wrap="wrap", width="100%",
        ),
        progress_block(C),
        rx.flex(rx.foreach(C.timeline, run_segment), spacing="2", wrap="wrap", width="100%",
                data_testid="timeline"),
        campaign_chart(),
        outcome(C),
    )


def heat_cell(c) -> rx.Component:
    return rx.box(
        rx.text(c["text"], size="2", weight=rx.cond(c["kind"] == "head", "bold", "regular"),
                font_family=rx.cond((c["kind"] == "loss") | (c["kind"] == "delta"), "monospace", "inherit"),
                color=rx.cond(c["kind"] == "head", rx.color("gray", 11), "#1a1a1a")),
        background=c["background"], padding="0.5em 0.75em", border_radius="var(--radius-2)",
        text_align=rx.cond(c["kind"] == "head", "left", "center"), title=c["title"],
        data_testid=rx.cond((c["kind"] == "loss") | (c["kind"] == "delta"), "heat-" + c["kind"], "heat-head"),
    )


def forgetting_card() -> rx.Component:
    return ui.card(
        rx.hstack(
            ui.stat("Average forgetting", C.avg_forgetting, "avg-forgetting"),
            rx.text(C.forgetting_note, size="2", color_scheme="gray", max_width="40em"),
            align="center", spacing="5", wrap="wrap",
        ),
        rx.cond(
            C.heat.length() > 0,
            rx.scroll_area(
                rx.grid(rx.foreach(C.heat, heat_cell), columns=C.heat_columns, spacing="1",
                        data_testid="heatmap", width="fit-content"),
                type="auto", scrollbars="horizontal"),
            ui.empty_note("The heat-map fills in as runs finish: after every run, the adapter is evaluated on "
                          "the held-out validation slice of every chunk seen so far."),
        ),
        rx.text("Cells: validation loss on each chunk's held-out examples (never trained on) after each run; "
                "green is the lowest loss in the table, red the highest. The last row is how far each "
                "earlier chunk's loss rose since the run that trained on it.", size="1", color_scheme="gray"),
        title="Forgetting",
    )


def compare_card() -> rx.Component:
    side = lambda key, label: rx.vstack(  # noqa: E731
        rx.text(label, size="1", color_scheme="gray"),
        rx.text(S.cmp[key]["name"], weight="bold"),
        rx.badge(S.cmp[key]["mode"], variant="outline"),
        ui.stat("Average forgetting", S.cmp[key]["avg"], f"cmp-avg-{key}"),
        spacing="1",
    )
    row = lambda r: rx.table.row(  # noqa: E731
        rx.table.cell(r["chunk"]),
        rx.table.cell(rx.text(r["a"], weight=rx.cond(r["better"] == "a", "bold", "regular"),
                              color_scheme=rx.cond(r["better"] == "a", "green", "gray"))),
        rx.table.cell(rx.text(r["b"], weight=rx.cond(r["better"] == "b", "bold", "regular"),
                              color_scheme=rx.cond(r["better"] == "b", "green", "gray"))),
        data_testid="cmp-row",
    )
    return ui.card(
        rx.text("Two finished campaigns side by side, e.g. slao and sequential on the same data with the same "
                "settings: lower forgetting and lower final validation loss are better.", size="2"),
        rx.grid(picker(S.finished, S.compare_a, S.set_compare_a, "compare-a", "Campaign A"),
                picker(S.finished, S.compare_b, S.set_compare_b, "compare-b", "Campaign B"),
                columns="2", spacing="4", width="100%"),
        ui.error_callout(S.cmp_error, test_id="compare-error"),
        rx.cond(
            S.cmp_rows.length() > 0,
            rx.vstack(
                rx.grid(side("a", "A"), side("b", "B"), columns="2", spacing="4", width="100%"),
                rx.table.root(
                    rx.table.header(rx.table.row(rx.table.column_header_cell("Final validation loss"),
                                                 rx.table.column_header_cell("A"), rx.table.column_header_cell("B"))),
                    rx.table.body(rx.foreach(S.cmp_rows, row)),
                    size="1", width="100%", data_testid="compare-table"),
                rx.recharts.line_chart(
                    rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
                    rx.recharts.line(data_key="a", name="A: " + S.cmp["a"]["name"], stroke=rx.color("accent", 9),
                                     dot=False, is_animation_active=False, connect_nulls=True),
                    rx.recharts.line(data_key="b", name="B: " + S.cmp["b"]["name"], stroke=rx.color("orange", 9),
                                     dot=False, is_animation_active=False, connect_nulls=True),
                    rx.recharts.x_axis(data_key="step", type_="number", domain=["dataMin", "dataMax"]),
                    rx.recharts.y_axis(domain=["auto", "auto"], width=60),
                    rx.recharts.tooltip(), rx.recharts.legend(),
                    data=S.cmp_points, width="100%", height=260),
                spacing="3", width="100%", data_testid="comparison",
            ),
            ui.empty_note("Finish two campaigns to compare them here."),
        ),
        title="Compare campaigns",
    )


def multirun_page() -> rx.Component:
    return layout(
        "/multi-run", "Multi-Run",
        setup_card(),
        rx.cond(C.run_id != "",
                rx.vstack(campaign_card(), forgetting_card(), event_log(C), spacing="4", width="100%"),
                ui.card(ui.empty_note("No campaigns yet: pick a model and a dataset, then press Start campaign."))),
        compare_card(),
    )


PAGE = Page("/multi-run", "Multi-Run", multirun_page, [ShellState.watch, MultiRunState.load, CampaignRun.load])
