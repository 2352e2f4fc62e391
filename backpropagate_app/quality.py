"""Held-out answers and scores as the pages show them: the answers panel's vars (from a
run's newest `samples` event) and the Runs table's "Learned" column (from its summary).
Pure data; `answers` lays it out."""

from __future__ import annotations


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
