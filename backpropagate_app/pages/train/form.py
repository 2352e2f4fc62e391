"""The Train page's form: the plan's values and reasons, the person's edits, the memory note.

Plain functions over the engine's typed `Plan`, no Reflex. The State keeps the plan's
values as numbers (`planned`) and what it knows about memory as `MemoryFacts`; only the
input boxes hold text, because that is what a person types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backpropagate_core.config import LoraSettings, TrainingSettings
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.protocol import Plan
from backpropagate_core.training.preference import PREFERENCE_METHODS

FORM_FIELDS: list[tuple[str, str, type]] = [
    ("steps", "Steps", int),
    ("learning_rate", "Learning rate", float),
    ("batch_size", "Batch size", int),
    ("batch_tokens", "Tokens per micro-batch", int),
    ("grad_accum", "Gradient accumulation", int),
    ("max_seq_len", "Max sequence length", int),
    ("r", "LoRA rank", int),
    ("alpha", "LoRA alpha", int),
]
"""(config key, label, type) of the hyperparameters the Train page lets a person edit."""
PREFERENCE_FIELDS: list[tuple[str, str, type]] = [("beta", "Beta", float)]
"""Fields shown, beside the method, only for a preference dataset."""
ALL_FIELDS = FORM_FIELDS + PREFERENCE_FIELDS
_KINDS = {key: kind for key, _label, kind in ALL_FIELDS}
_CAPTIONED = [key for key, _label, _type in ALL_FIELDS] + ["method"]

_DESCRIPTIONS = {**{k: f.description for k, f in TrainingSettings.model_fields.items()},
                 **{k: f.description for k, f in LoraSettings.model_fields.items()}}


@dataclass
class MemoryFacts:
    """What the memory estimate needs from the last plan besides the form's numbers."""

    device: str = ""
    """"cuda", "mps" or "cpu"; empty before the first plan."""
    memory_gb: float = 0.0
    """Free GPU memory, or RAM on the CPU."""
    label_fraction: float = 1.0
    precision: str = "fp32"
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    pairs: bool = False
    """DPO or ORPO: each example is two sequences, its chosen and its rejected answer."""

    @classmethod
    def of(cls, plan: Plan) -> MemoryFacts:
        t = plan.config.training
        return cls(device=plan.device, memory_gb=plan.memory_gb, label_fraction=plan.label_fraction,
                   precision=t.precision, load_in_4bit=t.load_in_4bit,
                   gradient_checkpointing=bool(t.gradient_checkpointing), pairs=t.method in PREFERENCE_METHODS)


def plan_values(plan: Plan) -> dict[str, float]:
    """The plan's value for each form field (fields it leaves open are missing)."""
    chosen = {**plan.config.lora.model_dump(), **plan.config.training.model_dump()}
    return {key: chosen[key] for key, _label, _type in ALL_FIELDS if chosen.get(key) is not None}


def plan_captions(plan: Plan) -> dict[str, str]:
    """The caption under each field and the method: the plan's reason, else the setting's
    description."""
    return {key: plan.reasons.get(key) or _default_caption(key) for key in _CAPTIONED}


def as_text(value: float | None) -> str:
    """A number as the form shows it (blank for "choose for me")."""
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_field(key: str, text: str) -> float | None:
    """The number typed in a field; None when it is blank. ValueError when not a number of
    the field's kind."""
    kind = _KINDS[key]
    text = (text or "").strip()
    if not text:
        return None
    number = float(text)
    if kind is int:
        if not number.is_integer():
            raise ValueError(text)
        return int(number)
    return number


def edited(form: dict[str, str], planned: dict[str, float], key: str) -> bool:
    """Whether the person's text in a field says something other than the plan."""
    try:
        return parse_field(key, form.get(key, "")) != planned.get(key)
    except ValueError:
        return True


def merge_plan(form: dict[str, str], planned: dict[str, float], fresh: dict[str, float]) -> dict[str, str]:
    """The form after a new plan arrives: fields the person edited keep their text, the
    rest take the fresh plan's values."""
    return {key: form.get(key, "") if edited(form, planned, key) else as_text(fresh.get(key))
            for key, _label, _type in ALL_FIELDS}


def field_captions(form: dict[str, str], planned: dict[str, float], captions: dict[str, str]) -> dict[str, str]:
    """The caption under each field: the plan's reason, or what the plan would have used
    once the person typed their own value."""
    shown = {"method": captions.get("method", "")}
    for key, _label, _type in ALL_FIELDS:
        if key in planned and edited(form, planned, key):
            shown[key] = f"set by you; the plan chose {as_text(planned[key])} ({captions.get(key, '')})"
        else:
            shown[key] = captions.get(key, "")
    return shown


def default_captions() -> dict[str, str]:
    return {key: _default_caption(key) for key in _CAPTIONED}


def _default_caption(key: str) -> str:
    # The field docs speak of None; in the form a blank field means "choose for me".
    return (_DESCRIPTIONS.get(key) or "").replace("None ", "Blank ")


def form_overrides(form: dict[str, str], planned: dict[str, float], method: str = "",
                   pairs: bool = False) -> dict[str, Any]:
    """Overrides for `start_run`: the fields a person changed from the plan (blank = auto)
    and, for a preference dataset (`pairs`), the method they picked ("" = the plan's) and beta.

    Raises one CONFIG_INVALID listing every field that is not a number of the right kind.
    """
    # The plan was made with the picked method, so the method is sent whenever one was
    # picked, not only when it differs from the plan.
    overrides: dict[str, Any] = {"method": method} if pairs and method else {}
    problems = []
    for key, label, kind in ALL_FIELDS if pairs else FORM_FIELDS:
        text = (form.get(key) or "").strip()
        try:
            value = parse_field(key, text)
        except ValueError:
            problems.append(f"{label}: {text!r} is not {'a whole number' if kind is int else 'a number'}")
            continue
        if value is None or value == planned.get(key):
            continue
        if value <= 0:
            problems.append(f"{label}: must be greater than 0 (got {text})")
            continue
        overrides[key] = value
    if problems:
        raise BackpropError("CONFIG_INVALID", "; ".join(problems))
    return overrides


def memory_line(model: str, form: dict[str, str], planned: dict[str, float], facts: MemoryFacts) -> str:
    """What the form's settings need in memory (the engine's estimator), against what this
    machine has; recomputed as the person edits batch size, sequence length or rank."""
    from backpropagate_core.training.estimate import estimate, shape_of

    def chosen(key: str) -> int | None:  # what the run would use: the person's number, else the plan's
        try:
            number = parse_field(key, form.get(key, ""))
        except ValueError:
            return None
        number = planned.get(key) if number is None else number
        return int(number) if number and number > 0 else None

    seq, batch, r = chosen("max_seq_len"), chosen("batch_size"), chosen("r")
    if batch is None and seq and chosen("batch_tokens"):
        # A packed micro-batch of N tokens holds activations like N / seq rows of seq tokens.
        batch = -(-chosen("batch_tokens") // seq)
    if not (model and seq and batch and r and facts.device):
        return ""
    batch *= 2 if facts.pairs else 1
    try:
        shape = shape_of(model)
    except BackpropError:
        return "Memory: no estimate for this model until its config.json is on disk"
    device = "cuda" if facts.device == "cuda" else "cpu"
    est = estimate(None, seq, batch, shape=shape, dtype="4bit" if facts.load_in_4bit else facts.precision,
                   r=r, device=device, gradient_checkpointing=facts.gradient_checkpointing,
                   label_fraction=facts.label_fraction)
    where = "free on the GPU" if device == "cuda" else "of RAM"
    have = facts.memory_gb
    line = (f"Memory: about {est.total_gb:.1f} GB of {have:.1f} GB {where} (weights {est.weights_gb:.2f}, "
            f"LoRA + optimizer {est.lora_gb + est.optimizer_gb:.2f}, activations {est.activations_gb:.2f}, "
            f"logits {est.logits_gb:.2f}, runtime {est.overhead_gb:.2f})")
    if have and est.total_gb > have * 0.85:
        line += (" — may not fit: lower the batch size (gradient accumulation keeps the effective batch)"
                 " or the max sequence length")
    return line
