"""What the model answers to held-out prompts while it trains, and which step was best.

At each evaluation the trainer asks `Probing.evaluate` for greedy answers to up to
`eval_samples` held-out prompts and scores them (`eval.metrics`); the base model's
answers (the adapter switched off) are computed once when training starts. `judge` keeps
the best evaluation (by answer score, then held-out loss), saves its adapter to the run's
`best/` folder and says when `patience` evaluations in a row brought no improvement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backpropagate_core.eval import answers as answers_mod
from backpropagate_core.eval.answers import Probe
from backpropagate_core.runs.layout import MANIFEST


@dataclass
class Verdict:
    best: bool
    stop: bool


@dataclass
class Probing:
    tokenizer: Any
    probes: list[Probe]
    best_dir: Path
    patience: int
    early_stopping: bool
    meta: dict = field(default_factory=dict)
    """Written into the best adapter's manifest (the base model spec, the run id)."""
    base: list[str] = field(default_factory=list)
    base_score: float | None = None
    last: dict = field(default_factory=dict)
    """Metrics of the latest evaluation (answer_score, f1, rouge_l, exact_match)."""
    samples: list[dict] = field(default_factory=list)
    best_key: tuple | None = None
    best_step: int | None = None
    best_score: float | None = None
    misses: int = 0
    stopped_early: bool = False
    by_loss: bool = False
    """Judge by held-out loss alone (preference runs: their loss is the pair objective)."""
    best_reward_accuracy: float | None = None

    def __post_init__(self) -> None:
        self.budget = answers_mod.answer_budget(self.tokenizer, self.probes) if self.probes else 0
        manifest = self.best_dir / MANIFEST
        if manifest.is_file():  # a resumed run keeps comparing against the best it had
            meta = json.loads(manifest.read_text())
            self.best_key, self.best_step = tuple(meta["key"]), meta["step"]
            self.best_score = meta.get("answer_score")
            self.best_reward_accuracy = meta.get("reward_accuracy")

    def start(self, model) -> None:
        """The base model's answers, once, with the adapter switched off."""
        if not self.probes or self.base:
            return
        with _starting_point(model):
            self.base = answers_mod.greedy_answers(model, self.tokenizer, self.probes, self.budget)
        self.base_score = answers_mod.score_answers(self.probes, self.base)[0].get("answer_score")

    def evaluate(self, model) -> dict[str, float]:
        if not self.probes:
            return {}
        now = answers_mod.greedy_answers(model, self.tokenizer, self.probes, self.budget)
        self.last, scores = answers_mod.score_answers(self.probes, now)
        base = self.base or [""] * len(now)
        self.samples = [{"prompt": p.prompt, "reference": p.reference, "base": b, "answer": a,
                         "score": round(s.fact_recall, 3), "learned": s.learned}
                        for p, b, a, s in zip(self.probes, base, now, scores)]
        return self.last

    def judge(self, step: int, loss: float, save, reward_accuracy: float | None = None) -> Verdict:
        """Keep this evaluation if it is the best so far (`save(path, meta)` writes the
        adapter); count it against the patience otherwise."""
        key = (-loss,) if self.by_loss else (round(self.last.get("answer_score", 0.0), 6), -loss)
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_step, self.misses = key, step, 0
            self.best_score = self.last.get("answer_score")
            self.best_reward_accuracy = reward_accuracy
            save(self.best_dir, {**self.meta, "step": step, "key": list(key),
                                 "answer_score": self.best_score, "eval_loss": loss,
                                 "reward_accuracy": reward_accuracy})
            return Verdict(best=True, stop=False)
        self.misses += 1
        self.stopped_early = self.early_stopping and self.misses >= self.patience
        return Verdict(best=False, stop=self.stopped_early)


def _starting_point(model):
    """The model as training found it: the adapter a run started from (kept as the DPO
    reference) or, without one, no adapter at all."""
    from contextlib import contextmanager

    from backpropagate_core.training.preference import REFERENCE_ADAPTER

    @contextmanager
    def switched():
        active = model.active_adapter
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter(active)

    if REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {}):
        return switched()
    return model.disable_adapter()
