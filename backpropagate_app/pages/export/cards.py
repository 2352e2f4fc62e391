"""The Export page's cards: what to export, the format, the export run's progress and
result, the run's files. Pure functions of the page's State class `S`, which they only
read from and send events to."""

from __future__ import annotations

import reflex as rx

from backpropagate_app import components as ui


def labelled(label: str, *children, **props) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="bold"), *children, spacing="1", width="100%", **props)


def picker(items, value, on_change, test_id: str, placeholder: str = "", disabled=False) -> rx.Component:
    return rx.select.root(
        rx.select.trigger(placeholder=placeholder, width="100%", data_testid=test_id),
        rx.select.content(rx.foreach(items, lambda o: rx.select.item(o["label"], value=o["value"]))),
        value=value, on_change=on_change, disabled=disabled,
    )


def source_card(S) -> rx.Component:
    return ui.card(
        rx.grid(
            labelled("Run", picker(S.runs, S.run_id, S.set_run, "export-run-select", "Pick a finished run",
                                     S.exporting)),
            labelled("Adapter", picker(S.sources, S.source, S.set_source, "export-source-select",
                                         disabled=S.exporting)),
            columns=rx.breakpoints(initial="1", md="2"), spacing="4", width="100%",
        ),
        rx.text("Base model ", rx.code(S.model, variant="ghost"), " · ", S.params, size="1", color_scheme="gray"),
        title="What to export",
    )


def option_row(o, group: str) -> rx.Component:
    """A radio item with its one-line explanation and the size the file will have."""
    return rx.el.label(
        rx.hstack(
            rx.radio_group.item(value=o["value"], data_testid=f"{group}-{o['value']}"),
            rx.text(o["label"], size="2", weight="bold", font_family="monospace", min_width="5.5em"),
            rx.text(o["note"], size="2", color_scheme="gray", flex="1"),
            rx.cond(o["recommended"] == "yes", rx.badge("recommended", size="1", variant="soft")),
            rx.text(o["size"], size="2", white_space="nowrap", data_testid=f"{group}-size-{o['value']}"),
            align="center", spacing="3", width="100%",
        ),
        style={"cursor": "pointer", "width": "100%"},
    )


def options_list(items, value, on_change, group: str, disabled) -> rx.Component:
    return rx.radio_group.root(
        rx.vstack(rx.foreach(items, lambda o: option_row(o, group)), spacing="2", width="100%"),
        value=value, on_change=on_change, disabled=disabled, width="100%",
    )


def format_card(S) -> rx.Component:
    def format_item(o) -> rx.Component:
        return rx.radio_cards.item(
            rx.vstack(rx.hstack(rx.text(o["label"], weight="bold"), rx.spacer(),
                                rx.text(o["size"], size="1", color_scheme="gray"), width="100%"),
                      rx.text(o["note"], size="1", color_scheme="gray"), spacing="1", align="start",
                      width="100%"),
            value=o["value"], data_testid=f"format-{o['value']}",
        )

    return ui.card(
        rx.radio_cards.root(rx.foreach(S.format_options, format_item), value=S.format,
                            on_value_change=S.set_format, disabled=S.exporting,
                            columns=rx.breakpoints(initial="1", md="3"), width="100%"),
        rx.match(
            S.format,
            ("gguf", labelled("Quantization", options_list(S.quant_options, S.quantization, S.set_quantization,
                                                           "quant", S.exporting))),
            ("merged", labelled("Weights dtype", options_list(S.dtype_options, S.dtype, S.set_dtype, "dtype", S.exporting))),
            rx.fragment(),
        ),
        rx.cond(S.format == "gguf", labelled(
            "Register with Ollama (optional)",
            rx.input(value=S.ollama_name, on_change=S.set_ollama_name, placeholder=S.ollama_placeholder,
                     disabled=S.exporting, max_length=120, width="100%", data_testid="ollama-name"),
            rx.text("A model name registers the GGUF with the Ollama server at ", rx.code(S.ollama_host),
                    " once it is verified; leave it empty to only write the file.", size="1",
                    color_scheme="gray"),
        )),
        ui.error_callout(S.start_error, test_id="start-error"),
        rx.button(rx.icon("package"), "Export", on_click=S.start, size="3", loading=S.starting | S.exporting,
                  disabled=(S.run_id == "") | (S.sources.length() == 0), data_testid="export-start"),
        title="Format",
    )


def stage_chip(s) -> rx.Component:
    icon = rx.match(s["status"], ("done", rx.icon("circle-check", size=14, color=rx.color("green", 10))),
                    ("active", rx.spinner(size="1")),
                    ("failed", rx.icon("circle-x", size=14, color=rx.color("red", 10))),
                    rx.icon("circle", size=14, color=rx.color("gray", 8)))
    return rx.hstack(icon, rx.text(s["label"], size="2"), align="center", spacing="1",
                     data_status=s["status"], data_testid="export-stage")


def progress_card(S) -> rx.Component:
    line = lambda m: rx.hstack(  # noqa: E731
        rx.text(m["time"], size="1", color_scheme="gray", font_family="monospace"),
        rx.badge(m["stage"], variant="outline", size="1"),
        rx.text(m["text"], size="1", style={"word_break": "break-all"}), spacing="2", align="center")
    return ui.card(
        rx.hstack(rx.text(S.title, weight="bold"), rx.text("started ", S.started, size="1", color_scheme="gray"),
                  rx.spacer(), ui.status_badge(rx.match(S.status, ("done", "completed"), S.status),
                                               data_testid="export-state"),
                  align="center", width="100%"),
        rx.flex(rx.foreach(S.stages, stage_chip), wrap="wrap", spacing="4"),
        rx.progress(value=S.progress, max=100, width="100%"),
        rx.cond(S.exporting, rx.vstack(rx.foreach(S.messages, line), spacing="1", data_testid="export-messages")),
        ui.error_callout(S.error, test_id="export-error"),
        title="Export progress",
    )


def check_row(c) -> rx.Component:
    icon = rx.match(c["status"], ("ok", rx.icon("check", size=16, color=rx.color("green", 10))),
                    ("bad", rx.icon("x", size=16, color=rx.color("red", 10))),
                    rx.icon("info", size=16, color=rx.color("gray", 9)))
    return rx.table.row(rx.table.cell(icon, width="2em"),
                        rx.table.cell(rx.text(c["label"], size="2"), white_space="nowrap", width="14em"),
                        rx.table.cell(rx.text(c["value"], size="2")), data_status=c["status"])


def ollama_block(S) -> rx.Component:
    return rx.vstack(
        rx.text(rx.cond(S.ollama["registered"] == "yes",
                        rx.fragment("Registered with Ollama at ", rx.code(S.ollama["host"]), ". Run it:"),
                        "Not registered with Ollama. To use it there:"), size="2"),
        rx.hstack(
            rx.code(S.ollama["command"], size="2", style={"word_break": "break-all", "padding": "0.5em"},
                    data_testid="ollama-command"),
            rx.tooltip(rx.icon_button(rx.icon("copy", size=16), on_click=rx.set_clipboard(S.ollama["command"]),
                                      variant="soft", data_testid="copy-ollama"), content="Copy"),
            align="center", spacing="2", width="100%",
        ),
        ui.error_callout(S.ollama_error, test_id="ollama-error"),
        spacing="2", width="100%",
    )


def result_card(S) -> rx.Component:
    return ui.card(
        rx.callout.root(
            rx.callout.icon(rx.icon("circle-check")),
            rx.callout.text(rx.text.strong(S.result["verified"], data_testid="export-verified"), " · ",
                            S.result["size"], " · ", S.result["seconds"]),
            color_scheme=rx.cond(S.result["verified"] == "verified", "green", "orange"), width="100%",
        ),
        labelled("File", ui.code_text(S.result["path"]), data_testid="export-path"),
        rx.cond(S.checks.length() > 0,
                rx.table.root(rx.table.body(rx.foreach(S.checks, check_row)), size="1", width="100%",
                              data_testid="export-checks")),
        rx.cond(S.ollama.contains("command"), ollama_block(S)),
        title="Result",
        data_testid="export-result",
    )


def files_card(S) -> rx.Component:
    row = lambda e: rx.table.row(  # noqa: E731
        rx.table.cell(rx.badge(e["key"], variant="soft")),
        rx.table.cell(rx.text(e["size"], size="2", white_space="nowrap")),
        rx.table.cell(rx.cond(e["verified"] != "", rx.badge(
            e["verified"], color_scheme=rx.cond(e["verified"] == "verified", "green", "gray"), variant="outline"))),
        rx.table.cell(ui.code_text(e["path"])),
    )
    return ui.card(
        rx.cond(S.files.length() > 0,
                rx.table.root(rx.table.body(rx.foreach(S.files, row)), size="1", width="100%"),
                ui.empty_note("This run has no adapter or exports on disk.")),
        title="Files of this run", data_testid="export-run",
    )
