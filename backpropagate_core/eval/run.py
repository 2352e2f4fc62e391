"""`backprop eval`: how a trained run (and its GGUF, through llama.cpp) answers questions.

The questions are the run's own held-out split (the same split training used) or a file
of question/answer pairs in any supported dataset format. Every answer is greedy, from
the trained model, from the base model (the adapter switched off) and, when asked, from
the run's GGUF export, and is scored against the reference (`metrics`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from backpropagate_core.errors import BackpropError
from backpropagate_core.eval import metrics
from backpropagate_core.eval.answers import Probe, answer_budget, probes_from


@dataclass
class EvalReport:
    source: str
    questions: int
    model: dict
    """Summary of the trained model's answers (`metrics.summarise`)."""
    base: dict
    gguf: dict | None = None
    gguf_path: str | None = None
    agreement: float | None = None
    """Share of questions where the GGUF's answer text equals the trained model's."""
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_probes(run, limit: int) -> list[Probe]:
    """The run's held-out questions: its dataset split again with the run's seed."""
    from backpropagate_core.data.dataset import load, split
    from backpropagate_core.training.run_config import RunConfig

    config = RunConfig.model_validate(run.config)
    loaded = load(config.data, skip_bad_lines=True)
    _, val = split(loaded.examples, config.training.val_fraction, config.training.seed)
    if not val:
        raise BackpropError("INPUT_DATASET_EMPTY", f"run {run.id[:8]} has no held-out examples "
                            f"({len(loaded.examples)} examples, val_fraction {config.training.val_fraction})",
                            hint="Pass --data with a file of questions and answers to score it on.")
    return probes_from(val, limit)


def file_probes(path: str | Path, limit: int) -> list[Probe]:
    from backpropagate_core.data.dataset import load

    probes = probes_from(load(path).examples, limit)
    if not probes:
        raise BackpropError("INPUT_DATASET_EMPTY", f"{path} has no question/answer pairs to score",
                            hint="Each example needs a user turn followed by an assistant answer.")
    return probes


def evaluate(source: str, data: str | Path | None = None, gguf: bool = False,
             gguf_path: str | Path | None = None, limit: int = 64) -> EvalReport:
    """Score `source` (run id or prefix, or an adapter folder of a run) on held-out or given questions."""
    from backpropagate_core.eval.answers import greedy_answers
    from backpropagate_core.export.chat import ChatSession
    from backpropagate_core.runs.store import RunStore

    session = ChatSession(source, gguf=gguf_path, compare_gguf=gguf or gguf_path is not None)
    if data is not None:
        probes = file_probes(data, limit)
    elif session.source.run_id:
        probes = held_out_probes(RunStore().get(session.source.run_id), limit)
    else:
        raise BackpropError("CONFIG_INVALID", f"{source} is not a run: pass --data with questions to score")
    if (gguf or gguf_path) and session.llama is None:
        raise BackpropError("STATE_CHECKPOINT_INVALID", "this run has no GGUF export to evaluate",
                            hint="Export one first: backprop export RUN --format gguf")
    session.max_new_tokens = answer_budget(session.tokenizer, probes)
    mine = [session.ask(p.messages) for p in probes]
    if hasattr(session.model, "disable_adapter"):
        with session.model.disable_adapter():
            base = greedy_answers(session.model, session.tokenizer, probes, session.max_new_tokens)
    else:  # merged weights: the base model is not at hand
        base = [""] * len(probes)
    report = _report(str(source), probes, [a["transformers"].text for a in mine], base,
                     [a["llama.cpp"].text for a in mine] if session.llama is not None else None)
    report.gguf_path = str(session.gguf_path) if session.llama is not None else None
    return report


def _report(source: str, probes: list[Probe], model: list[str], base: list[str],
            gguf: list[str] | None) -> EvalReport:
    def scored(answers):
        return [metrics.score(a, p.reference, p.prompt) for p, a in zip(probes, answers)]

    mine, theirs = scored(model), scored(base)
    rows = [{"prompt": p.prompt, "reference": p.reference, "base": b, "answer": a,
             "learned": s.learned, "base_learned": t.learned}
            for p, a, b, s, t in zip(probes, model, base, mine, theirs)]
    report = EvalReport(source, len(probes), metrics.summarise(mine), metrics.summarise(theirs), rows=rows)
    if gguf is not None:
        report.gguf = metrics.summarise(scored(gguf))
        same = [metrics.normalise(a) == metrics.normalise(g) for a, g in zip(model, gguf)]
        report.agreement = sum(same) / len(same) if same else None
        for row, g, agree in zip(rows, gguf, same):
            row.update(gguf=g, gguf_agrees=agree)
    return report
