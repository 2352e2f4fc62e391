"""Dataset: upload a file or pick one from the workspace, and read the engine's report."""

from __future__ import annotations

import asyncio
from pathlib import Path

from urllib.parse import quote

import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade
from backpropagate_app.display import ReportSummary, error_view, report_view
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_core.errors import BackpropError

UPLOAD_ID = "dataset_upload"
ACCEPT = {"application/json": [".json", ".jsonl"], "application/x-ndjson": [".jsonl"],
          "text/csv": [".csv"], "application/octet-stream": [".parquet", ".jsonl"]}


UPLOAD_CHUNK = 1 << 20


async def _stream_to_disk(upload) -> Path:
    """The upload, a megabyte at a time, into the uploads folder (never whole in memory)."""
    target = facade.upload_file(upload.name or "")
    try:
        while chunk := await upload.read(UPLOAD_CHUNK):
            target.write(chunk)
        return await asyncio.to_thread(target.finish)
    except BaseException:
        target.abort()
        raise


class DatasetState(rx.State):
    files: list[dict[str, str]] = []
    path: str = ""
    tokenizer: str = ""
    max_upload_mb: int = 200
    upload_error: dict[str, str] = {}
    analysing: bool = False
    error: dict[str, str] = {}
    report: ReportSummary = ReportSummary()
    histogram: list[dict] = []
    problems: list[dict[str, str]] = []
    problem_count: int = 0
    preview: list[list[dict[str, str]]] = []

    @rx.event
    def load(self):
        settings = facade.settings()
        self.max_upload_mb = settings.ui.max_upload_mb
        self.files = facade.workspace_files()
        if not self.tokenizer:
            self.tokenizer = settings.model
        wanted = self.router.url.query_parameters.get("path", "")
        if wanted and wanted != self.path:
            self.path = wanted
            return DatasetState.analyse

    @rx.event
    async def handle_upload(self, files: list[rx.UploadFile]):
        """Save the dropped file under the uploads folder, then report on it."""
        self.upload_error = {}
        if not files:
            return
        upload = files[0]
        try:
            limit = self.max_upload_mb * 1024 * 1024
            if upload.size is not None and upload.size > limit:
                raise BackpropError("INPUT_UPLOAD_TOO_LARGE",
                                    f"{upload.name} is {upload.size / 2**20:.1f} MB; the limit is {self.max_upload_mb} MB")
            saved = await _stream_to_disk(upload)
        except BackpropError as err:
            self.upload_error = error_view(err)
            return
        self.files = facade.workspace_files()
        self.path = str(saved)
        return DatasetState.analyse

    @rx.event
    def pick(self, value: str):
        self.path = value
        return DatasetState.analyse

    @rx.event
    def set_tokenizer(self, value: str):
        self.tokenizer = value

    @rx.event(background=True)
    async def analyse(self):
        """Ask the engine helper for the chosen file's report (`backprop data report`)."""
        async with self:
            if not self.path:
                return
            path, model = self.path, self.tokenizer.strip()
            self.analysing, self.error, self.report = True, {}, ReportSummary()
            self.histogram, self.problems, self.preview, self.problem_count = [], [], [], 0
        report, error = await attempt(facade.dataset_report, path, model)
        view = report_view(report) if report is not None else None
        async with self:
            if self.path != path:
                return  # another file was picked meanwhile; its own analysis reports
            self.analysing, self.error = False, error
            if view is not None:
                self.report = view["summary"]
                self.histogram = view["histogram"]
                self.problems = view["problems"]
                self.preview = view["preview"]
                self.problem_count = view["problem_count"]

    @rx.var
    def train_href(self) -> str:
        return "/train?data=" + quote(self.path)


# ---- layout -------------------------------------------------------------------------------

def upload_zone() -> rx.Component:
    S = DatasetState
    return rx.upload(
        rx.vstack(
            rx.icon("upload", size=28),
            rx.text("Drop a dataset here, or click to choose one", weight="bold"),
            rx.text(".jsonl, .json, .csv or .parquet, up to ", S.max_upload_mb, " MB", size="1",
                    color_scheme="gray"),
            align="center", spacing="1",
        ),
        id=UPLOAD_ID, accept=ACCEPT, max_files=1, multiple=False,
        max_size=S.max_upload_mb * 1024 * 1024,
        on_drop=S.handle_upload(rx.upload_files(upload_id=UPLOAD_ID)),
        border=f"2px dashed {rx.color('gray', 7)}", border_radius="var(--radius-3)",
        padding="1.5em", width="100%", cursor="pointer", data_testid="upload",
    )


def chooser_card() -> rx.Component:
    S = DatasetState
    return ui.card(
        upload_zone(),
        ui.error_callout(S.upload_error, test_id="upload-error"),
        rx.grid(
            rx.vstack(
                rx.text("Or pick a file from the workspace", size="2", weight="bold"),
                rx.select.root(
                    rx.select.trigger(placeholder="Choose a dataset", width="100%", data_testid="dataset-pick"),
                    rx.select.content(rx.foreach(S.files, lambda f: rx.select.item(f["label"], value=f["path"]))),
                    value=S.path, on_change=S.pick,
                ),
                spacing="1", width="100%",
            ),
            rx.vstack(
                rx.text("Count tokens with (preset or model path)", size="2", weight="bold"),
                rx.hstack(
                    rx.input(value=S.tokenizer, on_change=S.set_tokenizer, width="100%",
                             data_testid="tokenizer"),
                    rx.button("Re-check", on_click=S.analyse, variant="soft", disabled=S.path == ""),
                    width="100%",
                ),
                spacing="1", width="100%",
            ),
            columns=rx.breakpoints(initial="1", md="2"), spacing="4", width="100%",
        ),
        title="Choose a dataset",
    )


def summary_card() -> rx.Component:
    S = DatasetState
    r = S.report
    return ui.card(
        rx.hstack(ui.code_text(S.path), rx.spacer(),
                  rx.link(rx.button(rx.icon("flame"), "Train on this dataset", size="2"), href=S.train_href),
                  align="center", width="100%", wrap="wrap"),
        rx.flex(
            ui.stat("Format", r.format, "report-format"),
            ui.stat("Examples", r.examples, "report-examples"),
            ui.stat("Tokens per example", r.tokens, "report-tokens"),
            ui.stat("Total tokens", r.total_tokens),
            ui.stat("Duplicates", r.duplicates),
            ui.stat("Empty replies", r.empty),
            ui.stat("Over max length", r.over_long),
            wrap="wrap", spacing="6",
        ),
        rx.cond(r.pairs > 0, pairs_block()),
        title="Report",
    )


def pairs_block() -> rx.Component:
    """A preference dataset's pairs: how long chosen and rejected answers are, since a
    preference the pairs teach by accident (always the longer answer) is learned too."""
    r = DatasetState.report
    return rx.vstack(
        rx.separator(size="4"),
        rx.flex(
            ui.stat("Answer pairs", r.pairs, "report-pairs"),
            ui.stat("Chosen answers", r.chosen_length, "report-chosen-length"),
            ui.stat("Rejected answers", r.rejected_length, "report-rejected-length"),
            ui.stat("Chosen is the longer", r.chosen_longer, "report-chosen-longer"),
            wrap="wrap", spacing="6",
        ),
        rx.cond(r.length_note != "",
                rx.callout(r.length_note, icon="ruler", size="1", color_scheme="orange", variant="surface",
                           data_testid="length-note")),
        spacing="3", width="100%", data_testid="pairs",
    )


def histogram_card() -> rx.Component:
    S = DatasetState
    return ui.card(
        rx.cond(
            S.histogram.length() > 0,
            rx.box(
                rx.recharts.bar_chart(
                    rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
                    rx.recharts.bar(data_key="count", fill=rx.color("accent", 9), is_animation_active=False),
                    rx.recharts.x_axis(data_key="range"),
                    rx.recharts.y_axis(allow_decimals=False, width=40),
                    rx.recharts.tooltip(),
                    data=S.histogram, width="100%", height=220,
                ),
                width="100%", data_testid="histogram",
            ),
            ui.empty_note("No token counts (no tokenizer)."),
        ),
        title="Tokens per example",
    )


def problems_card() -> rx.Component:
    S = DatasetState
    row = lambda p: rx.table.row(rx.table.cell(p["line"]), rx.table.cell(rx.code(p["code"], size="1")),
                                 rx.table.cell(p["message"]))  # noqa: E731
    return ui.card(
        rx.cond(
            S.problem_count > 0,
            rx.vstack(
              rx.text(S.problem_count, rx.cond(S.problem_count == 1, " line", " lines"), " skipped or rejected",
                      size="2", data_testid="problem-count"),
              rx.scroll_area(
                rx.table.root(
                    rx.table.header(rx.table.row(rx.table.column_header_cell("Line"),
                                                 rx.table.column_header_cell("Code"),
                                                 rx.table.column_header_cell("Problem"))),
                    rx.table.body(rx.foreach(S.problems, row)),
                    size="1", width="100%", data_testid="problems",
                ),
                type="auto", scrollbars="vertical", style={"max_height": "16em"},
              ),
              width="100%",
            ),
            rx.hstack(rx.icon("circle-check", color=rx.color("green", 9)),
                      rx.text("No problems found.", size="2"), data_testid="no-problems"),
        ),
        title="Problems",
    )


def bubble(message) -> rx.Component:
    """One message; a preference pair's two answers are marked chosen (green, ✓) and
    rejected (red, ✗) so the pair reads at a glance."""
    role = message["role"]
    is_user = role == "user"
    return rx.flex(
        rx.box(
            rx.text(rx.match(role, ("chosen", "✓ chosen"), ("rejected", "✗ rejected"), role), size="1",
                    weight="bold", color_scheme=rx.match(role, ("chosen", "green"), ("rejected", "red"), "gray")),
            rx.text(message["content"], size="2", white_space="pre-wrap"),
            background=rx.match(role, ("user", rx.color("accent", 4)), ("assistant", rx.color("gray", 3)),
                                ("chosen", rx.color("green", 3)), ("rejected", rx.color("red", 3)),
                                rx.color("amber", 3)),
            border_left=rx.match(role, ("chosen", f"3px solid {rx.color('green', 9)}"),
                                 ("rejected", f"3px solid {rx.color('red', 9)}"), "none"),
            padding="0.5em 0.8em", border_radius="var(--radius-4)", max_width="80%",
        ),
        justify=rx.cond(is_user, "end", "start"), width="100%", data_role=role,
    )


def preview_card() -> rx.Component:
    S = DatasetState
    example = lambda messages: rx.card(rx.vstack(rx.foreach(messages, bubble), spacing="2", width="100%"),
                                       width="100%", variant="surface")  # noqa: E731
    return ui.card(rx.vstack(rx.foreach(S.preview, example), spacing="3", width="100%",
                             data_testid="preview"),
                   title="First examples")


def dataset_page() -> rx.Component:
    S = DatasetState
    return layout(
        "/dataset", "Dataset",
        chooser_card(),
        rx.cond(S.analysing,
                ui.card(rx.hstack(rx.spinner(), rx.text("Reading the dataset and counting tokens…"),
                                  data_testid="analysing"))),
        ui.error_callout(S.error, test_id="report-error"),
        rx.cond(
            S.report.format != "",
            rx.vstack(
                summary_card(),
                rx.grid(histogram_card(), problems_card(), columns=rx.breakpoints(initial="1", lg="2"),
                        spacing="4", width="100%"),
                preview_card(),
                spacing="4", width="100%",
            ),
        ),
    )


PAGE = Page("/dataset", "Dataset", dataset_page, [ShellState.watch, DatasetState.load])
