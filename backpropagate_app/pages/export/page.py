"""Export: pick a run (or checkpoint), a format and a quantization, export it in a worker
process, watch it verified, copy the Ollama command, and chat with the result.

An export is a run of its own in the store (kind "export", its parent the training run):
the page follows the training run's newest export run. The cards are in `export_cards`,
the chat panel in `export_chat`."""

from __future__ import annotations

import asyncio
import time

import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade
from backpropagate_app.pages.export import view
from backpropagate_app.display import error_view
from backpropagate_app.pages.export.cards import files_card, format_card, progress_card, result_card, source_card
from backpropagate_app.pages.export.chat import answer, chat_card
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_core.errors import BackpropError

POLL_S = 0.5
"""How often an open page reads the export run."""
_chat_slot = asyncio.Semaphore(1)
"""Each question loads a model in a process of its own; one at a time keeps the machine usable."""


# ---- engine side (blocking; called through asyncio.to_thread) ------------------------------------

def read_job(follow: view.ExportFollow) -> dict:
    """The view of the training run's newest export run, read from the store."""
    return follow.read(facade.store())


def launch(run_id: str, source: str, fmt: str, quantization: str, dtype: str, ollama_name: str) -> str:
    """Start the export worker; returns the export run's id."""
    quant = {"gguf": quantization, "merged": None if dtype == "auto" else dtype}.get(fmt)
    return facade.start_export(run_id, fmt, quant, None if source == view.FINAL else source,
                               ollama_name.strip() or None)


class ExportState(rx.State):
    runs: list[dict[str, str]] = []
    run_id: str = ""
    run_name: str = ""
    model: str = ""
    params: str = ""
    sources: list[dict[str, str]] = []
    source: str = view.FINAL
    format: str = "gguf"
    quantization: str = view.RECOMMENDED
    dtype: str = "auto"
    ollama_name: str = ""
    ollama_host: str = ""
    format_options: list[dict[str, str]] = []
    quant_options: list[dict[str, str]] = []
    dtype_options: list[dict[str, str]] = []
    files: list[dict[str, str]] = []
    ggufs: list[dict[str, str]] = []
    load_error: dict[str, str] = {}
    start_error: dict[str, str] = {}
    starting: bool = False
    # The run's newest export run, as view.ExportFollow.read() gives it.
    job: str = ""
    status: str = ""
    title: str = ""
    started: str = ""
    stages: list[dict[str, str]] = []
    progress: int = 0
    messages: list[dict[str, str]] = []
    error: dict[str, str] = {}
    result: dict[str, str] = {}
    checks: list[dict[str, str]] = []
    ollama: dict[str, str] = {}
    ollama_error: dict[str, str] = {}
    # Chat
    prompt: str = ""
    chat_gguf: str = view.NO_GGUF
    answers: list[dict[str, str]] = []
    verdict: str = ""
    chatting: bool = False
    chat_error: dict[str, str] = {}
    # Feedback on the fine-tuned model's answer to `asked`
    asked: str = ""
    rated: str = ""
    """The verdict given to the current answer: "", "up", "down" or "edit"."""
    editing: bool = False
    edit_text: str = ""
    feedback_pairs: int = 0
    feedback_message: str = ""
    feedback_error: dict[str, str] = {}
    training_feedback: bool = False

    @rx.event
    def load(self):
        self.ollama_host, self.load_error = facade.settings().ollama_host, {}
        try:
            self.runs = view.exportable_runs(facade.store())
        except BackpropError as err:  # the store cannot be read: say so, offer nothing
            self.runs, self.load_error = [], error_view(err)
        ids = [r["value"] for r in self.runs]
        wanted = self.router.url.query_parameters.get("run", "")
        match = [i for i in ids if wanted and i.startswith(wanted)]
        self.run_id = match[0] if match else self.run_id if self.run_id in ids else (ids[0] if ids else "")
        self._read_run()
        return ExportState.watch

    def _read_run(self) -> None:
        """Options, sizes and recorded exports of the selected run (a few small reads).
        Runs on load, on picking a run and when an export ends, so the chat panel then
        compares with the run's newest GGUF."""
        if not self.run_id:
            self.sources, self.files, self.ggufs = [], [], []
            return
        try:
            info = view.run_info(facade.store(), self.run_id)
        except BackpropError as err:
            self.load_error = error_view(err)
            return
        self.load_error = {}
        for key in ("run_name", "model", "params", "sources", "format_options", "quant_options",
                    "dtype_options", "files", "ggufs"):
            setattr(self, key, info["name" if key == "run_name" else key])
        if self.source not in {s["value"] for s in self.sources}:
            self.source = self.sources[0]["value"] if self.sources else view.FINAL
        self.chat_gguf = self.ggufs[0]["value"] if self.ggufs else view.NO_GGUF
        self._read_feedback()

    def _read_feedback(self) -> None:
        try:
            status = facade.feedback_status(self.run_id)
        except BackpropError as err:
            self.feedback_error = error_view(err)
            return
        self.feedback_pairs, self.feedback_message = status["pairs"], status["message"]

    @rx.event
    def set_run(self, value: str):
        self.run_id, self.answers, self.verdict, self.chat_error, self.start_error = value, [], "", {}, {}
        self.asked, self.rated, self.editing, self.feedback_error = "", "", False, {}
        self._read_run()

    @rx.event
    def set_source(self, value: str):
        self.source = value

    @rx.event
    def set_format(self, value: str):
        self.format = value

    @rx.event
    def set_quantization(self, value: str):
        self.quantization = value

    @rx.event
    def set_dtype(self, value: str):
        self.dtype = value

    @rx.event
    def set_ollama_name(self, value: str):
        self.ollama_name = value

    @rx.event
    def set_prompt(self, value: str):
        self.prompt = value

    @rx.event
    def set_chat_gguf(self, value: str):
        self.chat_gguf = value

    @rx.var
    def exporting(self) -> bool:
        return self.status == "running"

    @rx.var
    def chat_ggufs(self) -> list[dict[str, str]]:
        return [*self.ggufs, {"value": view.NO_GGUF, "label": "none: the fine-tuned model only"}]

    @rx.var
    def ollama_placeholder(self) -> str:
        return view.default_ollama_name(self.run_name, self.quantization)

    @rx.event(background=True)
    async def watch(self):
        """Follow the selected run's newest export run until the page's load chain is
        cancelled (navigation, disconnect); the lock is taken only to read the run id and
        to copy changes in."""
        follow: view.ExportFollow | None = None
        shown: dict | None = None
        while True:
            async with self:
                run_id = self.run_id
            if follow is None or follow.run_id != run_id:
                follow, shown = view.ExportFollow(run_id), None
            job, error = await attempt(read_job, follow) if run_id else (view.EMPTY_JOB, {})
            if error:  # show it and keep polling
                job = {**(shown or view.EMPTY_JOB), "error": error}
            if job != shown:
                ended = shown is not None and shown["status"] == "running" and job["status"] != "running"
                async with self:
                    if self.run_id == run_id:
                        for key, value in job.items():
                            setattr(self, key, value)
                        if ended:
                            self._read_run()  # list the new file, offer it to the chat panel
                shown = job
            await asyncio.sleep(POLL_S)

    @rx.event(background=True)
    async def start(self):
        async with self:
            if self.starting or self.exporting or not self.run_id:
                return
            self.starting, self.start_error = True, {}
            args = (self.run_id, self.source, self.format, self.quantization, self.dtype, self.ollama_name)
        job, error = await attempt(launch, *args)
        job = job or ""
        # The button stays busy until the watcher shows the new job.
        deadline = time.monotonic() + 10
        while job and time.monotonic() < deadline:
            async with self:
                if self.job == job:
                    break
            await asyncio.sleep(POLL_S)
        async with self:
            self.starting, self.start_error = False, error

    @rx.event(background=True)
    async def ask(self):
        async with self:
            if self.chatting or not self.run_id:
                return
            self.chatting, self.chat_error, self.answers, self.verdict = True, {}, [], ""
            self.asked, self.rated, self.editing, self.feedback_error = self.prompt, "", False, {}
            args = (self.run_id, self.source, self.chat_gguf, self.prompt)
        # The answers stream in: the engine thread hands each new set of cards to this task.
        loop, grown = asyncio.get_running_loop(), asyncio.Queue()
        on_cards = lambda cards: loop.call_soon_threadsafe(grown.put_nowait, cards)  # noqa: E731
        async with _chat_slot:
            work = asyncio.ensure_future(attempt(answer, *args, on_cards=on_cards))
            while not work.done():
                waiter = asyncio.ensure_future(grown.get())
                done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    async with self:
                        self.answers = waiter.result()
                else:
                    waiter.cancel()
            out, error = work.result()
        answers, verdict = out or ([], "")
        async with self:
            self.chatting, self.answers, self.verdict, self.chat_error = False, answers, verdict, error


    # ---- feedback on the fine-tuned answer ----

    def _trained_answer(self) -> str:
        return next((a["text"] for a in self.answers if a.get("engine") == "transformers"), "")

    async def _rate(self, verdict: str, edited: str | None = None):
        answer_text = self._trained_answer()
        if not answer_text or self.chatting:
            return
        source = self.run_id if self.source == view.FINAL else f"{self.run_id}:{self.source}"
        status, error = await attempt(facade.record_feedback, self.run_id, self.asked, answer_text, verdict,
                                      edited, source)
        self.feedback_error = error
        if status:
            self.rated, self.editing = verdict, False
            self.feedback_pairs, self.feedback_message = status["pairs"], status["message"]

    @rx.event
    async def rate_up(self):
        await self._rate("up")

    @rx.event
    async def rate_down(self):
        await self._rate("down")

    @rx.event
    def start_edit(self):
        self.editing, self.edit_text = True, self._trained_answer()

    @rx.event
    def cancel_edit(self):
        self.editing = False

    @rx.event
    def set_edit_text(self, value: str):
        self.edit_text = value

    @rx.event
    async def save_edit(self):
        await self._rate("edit", self.edit_text)

    @rx.event(background=True)
    async def train_on_feedback(self):
        async with self:
            if self.training_feedback or not self.run_id:
                return
            self.training_feedback, self.feedback_error, run_id = True, {}, self.run_id
        new_run, error = await attempt(facade.train_on_feedback, run_id)
        async with self:
            self.training_feedback, self.feedback_error = False, error
        if new_run:  # the Train page follows the newest active run: the one just started
            return rx.redirect("/train")


# ---- layout -------------------------------------------------------------------------------------

S = ExportState


def export_page() -> rx.Component:
    return layout(
        "/export", "Export",
        ui.error_callout(S.load_error, test_id="load-error"),
        rx.cond(
            S.runs.length() > 0,
            rx.vstack(
                source_card(S),
                format_card(S),
                rx.cond(S.status != "", progress_card(S)),
                rx.cond(S.status == "done", result_card(S)),
                chat_card(S),
                files_card(S),
                spacing="4", width="100%",
            ),
            ui.card(ui.empty_note("No finished runs yet. Train one on the Train page, then export it here.",
                                  test_id="export-empty")),
        ),
    )


PAGE = Page("/export", "Export", export_page, [ShellState.watch, ExportState.load])
