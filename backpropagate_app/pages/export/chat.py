"""The Export page's chat panel: one question answered greedily by the trained model and
by its GGUF in llama.cpp, in the engine helper process (which keeps the model loaded for
the next question), and the card showing both."""

from __future__ import annotations

from typing import Callable

import reflex as rx

from backpropagate_app import components as ui
from backpropagate_app import facade
from backpropagate_app.pages.export import view
from backpropagate_app.pages.export.cards import labelled, picker
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.layout import RunDir

MAX_PROMPT = 4000
CHAT_TOKENS = 128


def answer(run_id: str, source: str, gguf_key: str, prompt: str,
           on_cards: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], str]:
    """Answer cards and verdict for one prompt, from the base model, the run's adapter (or
    checkpoint) and GGUF; blocking (the State calls it off the event loop). `on_cards`
    gets the cards as the answers grow, token by token."""
    if not prompt.strip():
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "type a question first")
    if len(prompt) > MAX_PROMPT:
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", f"the question is {len(prompt)} characters; "
                                                           f"the limit is {MAX_PROMPT}")
    run = facade.store().get(run_id)
    target = run.id
    if source != view.FINAL:
        if source not in {o["value"] for o in view.source_options(run)}:
            raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"{source!r} is not a checkpoint of this run")
        target = str(RunDir(run.run_dir).checkpoint(source))
    gguf = view.gguf_path(run.summary, gguf_key)  # a key of the run's exports, never a browser path
    label = gguf_key if gguf else ""
    grown: dict[str, dict] = {}

    def partial(body: dict) -> None:
        grown[body["engine"]] = {"text": body["text"], "tokens": [], "seconds": 0.0}
        on_cards(view.chat_view({"answers": grown}, label, streaming=True)[0])

    out = facade.chat_once(target, prompt, gguf, CHAT_TOKENS, on_partial=partial if on_cards else None)
    return view.chat_view(out.model_dump(), label)


def chat_card(S) -> rx.Component:
    answer = lambda a: rx.card(  # noqa: E731
        rx.vstack(rx.hstack(rx.text(a["label"], size="2", weight="bold"), rx.spacer(),
                            rx.text(a["meta"], size="1", color_scheme="gray"), width="100%"),
                  rx.text(a["text"], size="2", white_space="pre-wrap", style={"word_break": "break-word"}),
                  spacing="2", width="100%"),
        width="100%", data_testid=f"answer-{a['engine']}")
    return ui.card(
        rx.text("Ask the base model, the fine-tuned model and its GGUF the same question: each answers "
                "greedily from the same prompt tokens, so a good export answers like the model that was "
                "trained. The models stay loaded between questions; the first one loads them.", size="2"),
        rx.grid(
            labelled("Compare with", picker(S.chat_ggufs, S.chat_gguf, S.set_chat_gguf, "chat-gguf",
                                             disabled=S.exporting)),
            columns=rx.breakpoints(initial="1", md="2"), width="100%",
        ),
        rx.text_area(value=S.prompt, on_change=S.set_prompt, placeholder="Ask something from your training data…",
                     max_length=MAX_PROMPT, rows="3", width="100%", data_testid="chat-prompt"),
        rx.button(rx.icon("message-circle"), "Ask", on_click=S.ask, loading=S.chatting,
                  disabled=S.run_id == "", data_testid="chat-ask"),
        ui.error_callout(S.chat_error, test_id="chat-error"),
        rx.cond(S.answers.length() > 0, rx.vstack(
            rx.grid(rx.foreach(S.answers, answer), columns=rx.breakpoints(initial="1", md="2"), spacing="3",
                    width="100%"),
            rx.cond(S.verdict != "", rx.badge(S.verdict, color_scheme=rx.cond(S.verdict == "identical answers",
                                                                               "green", "orange"),
                                              data_testid="chat-verdict")),
            rx.cond(~S.chatting, feedback_bar(S)),
            spacing="2", width="100%")),
        feedback_footer(S),
        title="Chat with the result",
    )


def feedback_bar(S) -> rx.Component:
    """Rate the fine-tuned model's answer, or write the answer it should have given."""
    rated = lambda verdict, label: rx.cond(S.rated == verdict, rx.badge(label, color_scheme="green",  # noqa: E731
                                                                          data_testid="feedback-saved"))
    return rx.vstack(
        rx.hstack(
            rx.text("Was the fine-tuned answer right?", size="2"),
            rx.button(rx.icon("thumbs-up"), on_click=S.rate_up, variant="soft", color_scheme="green",
                      size="1", aria_label="Good answer", data_testid="feedback-up"),
            rx.button(rx.icon("thumbs-down"), on_click=S.rate_down, variant="soft", color_scheme="red",
                      size="1", aria_label="Bad answer", data_testid="feedback-down"),
            rx.button(rx.icon("pencil"), "Edit", on_click=S.start_edit, variant="soft", size="1",
                      data_testid="feedback-edit"),
            rated("up", "marked good"), rated("down", "marked wrong"), rated("edit", "correction saved"),
            align="center", spacing="2", wrap="wrap"),
        rx.cond(S.editing, rx.vstack(
            rx.text("Write the answer you wanted; it is kept as the preferred answer, the model's as the "
                    "rejected one.", size="1", color_scheme="gray"),
            rx.text_area(value=S.edit_text, on_change=S.set_edit_text, rows="3", width="100%",
                         max_length=MAX_PROMPT, data_testid="feedback-edit-text"),
            rx.hstack(rx.button("Save correction", on_click=S.save_edit, size="1",
                                data_testid="feedback-edit-save"),
                      rx.button("Cancel", on_click=S.cancel_edit, size="1", variant="soft", color_scheme="gray")),
            width="100%", spacing="2")),
        width="100%", spacing="2")


def feedback_footer(S) -> rx.Component:
    """How much feedback this run has, and the button that trains on it."""
    return rx.vstack(
        rx.hstack(
            rx.text(S.feedback_pairs, " preference pairs from your feedback on this run", size="2",
                    data_testid="feedback-pairs"),
            rx.spacer(),
            rx.button(rx.icon("sparkles"), "Train on my feedback", on_click=S.train_on_feedback,
                      loading=S.training_feedback, disabled=(S.feedback_message != "") | (S.run_id == ""),
                      data_testid="feedback-train"),
            width="100%", align="center"),
        rx.cond(S.feedback_message != "", rx.text(S.feedback_message, size="1", color_scheme="gray",
                                                  data_testid="feedback-message")),
        rx.text("Trains a DPO run that starts from this run's adapter: your corrections and the answers you "
                "marked good are preferred over the ones you marked wrong.", size="1", color_scheme="gray"),
        ui.error_callout(S.feedback_error, test_id="feedback-error"),
        width="100%", spacing="1")
