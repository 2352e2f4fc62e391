"""Preference training as the pages show it: which method a run trains with, the live
reward figures of a DPO or ORPO run, its headline in the Runs table, and a preference
dataset's answer pairs. Pure data, like `quality`; `live` and the pages lay it out."""

from __future__ import annotations

from backpropagate_core.data.formats import PREFERENCE_FORMATS
from backpropagate_core.training.campaign_state import KIND as CAMPAIGN_KIND
from backpropagate_core.training.preference import PREFERENCE_METHODS

DASH = "—"
METHODS: list[dict[str, str]] = [
    {"value": "sft", "label": "SFT",
     "note": "Learns the chosen answers as the ones to give; the rejected answers are ignored."},
    {"value": "dpo", "label": "DPO",
     "note": "Learns to prefer the chosen answer over the rejected one, staying near the model it starts from."},
    {"value": "orpo", "label": "ORPO",
     "note": "Learns the chosen answers and the preference together, with no reference model."},
]
"""The Train page's method choices for a preference dataset, each with its one-line why."""
LABELS = {m["value"]: m["label"] for m in METHODS}
LOPSIDED = 0.8
"""Share of pairs whose chosen answer is the longer (or the shorter) past which the Dataset
page warns: the model may learn length rather than what the pairs mean."""


def is_preference(data_format: str) -> bool:
    return data_format in PREFERENCE_FORMATS


def method_of(run: dict, started: dict | None = None, finished: dict | None = None) -> str:
    """How a run trains ("sft", "dpo" or "orpo") from `Run.to_dict()` and, when seen, its
    run_started and finished events; "" while a run asked for "auto" has not started."""
    if run.get("kind") == CAMPAIGN_KIND:
        return "sft"  # campaigns refuse preference data
    if finished and finished.get("method"):
        return finished["method"]
    for config in ((started or {}).get("config"), run.get("config")):
        if config:
            # Runs recorded before preference training existed have no method: they are SFT.
            method = (config.get("training") or {}).get("method") or "sft"
            if method != "auto":
                return method
    return ""


def fold(facts: dict, event: dict) -> None:
    """Fold one event into a run's {method, reward_accuracy}: the held-out reward accuracy
    of the newest evaluation, replaced by the kept adapter's once the run finished."""
    kind = event.get("type")
    if kind == "run_started":
        facts["started"] = {"config": event.get("config") or {}}
    elif kind == "eval" and event.get("reward_accuracy") is not None:
        facts["reward_accuracy"] = event["reward_accuracy"]
    elif kind == "finished":
        facts["finished"] = {"method": event.get("method")}
        if event.get("reward_accuracy") is not None:
            facts["reward_accuracy"] = event["reward_accuracy"]


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.0%}"


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def point_fields(event: dict) -> dict:
    """Chart values of a step or eval event (none for SFT): reward accuracy in percent,
    reward margin, and the log-probabilities of both answers; evals prefix theirs "eval_"."""
    prefix = "eval_" if event.get("type") == "eval" else ""
    out = {}
    if event.get("reward_accuracy") is not None:
        out[prefix + "reward_accuracy"] = round(100 * float(event["reward_accuracy"]), 1)
    if event.get("reward_margin") is not None:
        out[prefix + "reward_margin"] = round(float(event["reward_margin"]), 4)
    for key in ("chosen_logp", "rejected_logp"):
        if event.get(key) is not None:
            out[key] = round(float(event[key]), 3)
    return out


def live_view(method: str, last_step: dict | None, last_eval: dict | None, finished: dict | None) -> dict:
    """The run panel's method and reward figures: the newest step's, and the held-out
    reward accuracy of the newest evaluation (the kept adapter's once finished)."""
    step, evaluation = last_step or {}, last_eval or {}
    held_out, at = evaluation.get("reward_accuracy"), evaluation.get("step")
    if finished and finished.get("reward_accuracy") is not None:
        held_out, at = finished["reward_accuracy"], finished.get("best_step") or at
    return {
        "method": LABELS.get(method, ""),
        "preference": method in PREFERENCE_METHODS,
        "reward_accuracy": _pct(step.get("reward_accuracy")),
        "reward_margin": _num(step.get("reward_margin"), "+.3f"),
        "chosen_logp": _num(step.get("chosen_logp"), ".1f"),
        "rejected_logp": _num(step.get("rejected_logp"), ".1f"),
        "eval_reward_accuracy": _pct(held_out),
        "eval_reward_step": "" if held_out is None or at is None else str(at),
    }


def learned_cells(reward_accuracy: float | None) -> dict:
    """The Runs table's "Learned" column for a preference run: its held-out reward accuracy."""
    if reward_accuracy is None:
        return {"learned": DASH, "learned_note": "no held-out pairs scored yet"}
    return {"learned": f"{reward_accuracy:.0%} of pairs",
            "learned_note": "held-out pairs whose chosen answer the model prefers (reward accuracy)"}


def pair_view(pairs: dict | None) -> dict:
    """The Dataset page's pair figures from a report's `pairs`; empty for other formats."""
    if not pairs:
        return {"pairs": 0, "chosen_length": "", "rejected_length": "", "chosen_longer": "", "length_note": ""}
    unit = pairs.get("unit", "tokens")

    def length(side: dict) -> str:
        return f"mean {side.get('mean', 0):g} · p50 {side.get('p50', 0)} · max {side.get('max', 0)} {unit}"

    longer = float(pairs.get("chosen_longer") or 0.0)
    note = ""
    if pairs.get("count") and longer >= LOPSIDED:
        note = (f"The chosen answer is the longer one in {longer:.0%} of pairs: the model may learn to "
                "prefer long answers rather than what the pairs mean.")
    elif pairs.get("count") and longer <= 1 - LOPSIDED:
        note = (f"The chosen answer is the longer one in only {longer:.0%} of pairs: the model may learn to "
                "prefer short answers (fine if brevity is what the pairs teach).")
    return {"pairs": int(pairs.get("count") or 0), "chosen_length": length(pairs.get("chosen") or {}),
            "rejected_length": length(pairs.get("rejected") or {}), "chosen_longer": f"{longer:.0%}",
            "length_note": note}
