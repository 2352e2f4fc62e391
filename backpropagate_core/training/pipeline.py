"""The one training path: `prepare` → `load_model` → `fit`, inside a run session.

Every training run goes through here: `execute_run` (a single run: the body of `backprop
train` and of the worker) and each run of a multi-run campaign (`campaign`) both prepare
their data with `prepare`, build the model with `load_model` and train with `fit`, so the
token cache, the backends, OOM recovery and the GPU guard apply to all of them.

Training itself is transformers' `Trainer` (see `trainer`); this module turns a stored
run config into data, model and settings, and reports the outcome.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from backpropagate_core import logs, platform_support
from backpropagate_core.config import TrainingSettings, load_settings
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import IGNORE_INDEX, RunDir
from backpropagate_core.runs.store import RunStore
from backpropagate_core.errors import BackpropError
from backpropagate_core.training import preference
from backpropagate_core.training.preference import PREFERENCE_METHODS
from backpropagate_core.training.run_config import RunConfig
from backpropagate_core.training.probing import Probing
from backpropagate_core.training.session import remove_partials, run_session

_log = logs.get_logger(__name__)
Log = Callable[..., None]
"""`log(message, level="INFO")`."""


@dataclass
class TrainResult:
    run_id: str
    status: str
    """completed or cancelled."""
    final_loss: float | None
    steps: int
    run_dir: Path
    adapter_path: Path | None
    tokens_per_s: float | None
    wall_s: float


@dataclass
class Part:
    """One slice of the data to train on, tokenized and cut to max_seq_len."""
    train: list[dict]
    val: list[dict]
    """Held out: only ever evaluated on."""


@dataclass
class Prepared:
    """Data and settings ready for training: what `plan` shows and `fit` uses."""
    tokenizer: Any
    parts: list[Part]
    """One part for a single run; one per run of a campaign."""
    hardware: Any
    resolved: Any
    data_format: str
    n_examples: int
    dropped: int = 0
    """Examples left out because none of their answer tokens fit in max_seq_len."""
    probes: list = field(default_factory=list)
    """Held-out prompts with reference answers, answered at each evaluation."""

    @property
    def train_rows(self) -> list[dict]:
        return [row for part in self.parts for row in part.train]

    @property
    def val_rows(self) -> list[dict]:
        return [row for part in self.parts for row in part.val]


Splitter = Callable[[list], list[tuple[list, list]]]
"""Examples → (train, validation) pairs; a single run has one, a campaign one per run."""


def prepare(config: RunConfig, log: Log, files: RunDir | None = None, reuse_resolved: bool = False,
            splitter: Splitter | None = None) -> Prepared:
    """Load and tokenize the data, then resolve every default against data and hardware.

    `files` given: the resolved settings are written to its resolved.json (or, with
    `reuse_resolved`, read back from it so a resumed run keeps its steps and batch)."""
    from backpropagate_core.data import dataset as data_mod
    from backpropagate_core.data import templates, token_cache
    from backpropagate_core.model import loader
    from backpropagate_core.training import defaults

    log(f"loading dataset {config.data}")
    loaded = data_mod.load(config.data, skip_bad_lines=config.training.skip_bad_lines)
    for problem in loaded.problems:
        log(f"skipped [{problem.code}] {problem.message}", "WARNING")
    log(f"{len(loaded.examples)} examples in {loaded.format} format")

    log(f"loading tokenizer for {config.model}")
    tokenizer = loader.load_tokenizer(config.model, config.training.trust_remote_code)
    if templates.ensure_chat_template(tokenizer):
        log("the tokenizer has no chat template; using the built-in ChatML-style template", "WARNING")

    method, method_reason = preference.method_for(config.training.method, loaded.format)
    # The caller's config keeps what was asked ("auto"); the defaults see what is trained.
    config = config.model_copy(update={"training": config.training.model_copy(update={"method": method})})
    t = config.training
    pairs = (splitter or (lambda ex: [data_mod.split(ex, t.val_fraction, t.seed)]))(loaded.examples)
    max_cap = int(getattr(tokenizer, "model_max_length", 0) or 0)
    max_cap = max_cap if 0 < max_cap < 1_000_000 else 8192
    if method in PREFERENCE_METHODS:
        tokenized = [(_pair_rows(tr, tokenizer), _pair_rows(va, tokenizer)) for tr, va in pairs]
    else:
        tokenized = [(token_cache.tokenize_all(tr, tokenizer, max_cap), token_cache.tokenize_all(va, tokenizer, max_cap))
                     for tr, va in pairs]

    hw = defaults.detect_hardware()
    every_train = [row for tr, _ in tokenized for row in tr]
    resolved = _resolve(config, files.resolved if files else None, reuse_resolved, hw, every_train, max_cap)
    resolved.reasons.setdefault("method", method_reason)
    n, dropped, parts = resolved.training.max_seq_len, 0, []
    for tr, va in tokenized:
        if method in PREFERENCE_METHODS:  # TRL cuts each side to max_seq_len itself
            parts.append(Part(tr, va))
            continue
        (tr, d1), (va, d2) = truncate(tr, n), truncate(va, n)
        dropped += d1 + d2
        parts.append(Part(tr, va))
    if dropped:
        log(f"{dropped} example(s) left out: none of their answer tokens fit in max_seq_len={n} "
            "(raise --max-seq-len to keep them)", "WARNING")
    from backpropagate_core.eval.answers import probes_from

    probes = probes_from([ex for _, va in pairs for ex in va], t.eval_samples) if len(pairs) == 1 else []
    return Prepared(tokenizer, parts, hw, resolved, loaded.format, len(loaded.examples), dropped, probes)


def _pair_rows(examples: list, tokenizer) -> list[dict]:
    """TRL rows for answer pairs, measured with the model's chat template."""
    from backpropagate_core.data import templates

    counts, refused = templates.count_tokens(tokenizer, examples)
    if refused:
        i, message = next(iter(refused.items()))
        raise BackpropError("INPUT_DATASET_INVALID", f"line {examples[i].line}: {message}",
                            hint="Fix the pair or choose a model whose chat template accepts it.")
    return preference.rows(examples, counts)


def truncate(rows: list[dict], max_len: int) -> tuple[list[dict], int]:
    """Rows cut to `max_len` tokens, and how many were dropped because no label was left."""
    out = []
    for row in rows:
        if len(row["input_ids"]) > max_len:
            row = {**row, "input_ids": row["input_ids"][:max_len], "labels": row["labels"][:max_len],
                   "n_tokens": max_len, "truncated": True}
        if any(label != IGNORE_INDEX for label in row["labels"]):
            out.append(row)
    return out, len(rows) - len(out)


def load_model(config: RunConfig, prep: Prepared, log: Log):
    """The peft LoRA model, built by the backend chosen for this device."""
    from backpropagate_core.training import backends
    from backpropagate_core.training.trainer import weight_dtype

    t = prep.resolved.training
    platform_support.configure_attention(prep.hardware.device, prep.hardware.name)
    if t.method in PREFERENCE_METHODS and t.backend == "auto":
        choice = backends.Choice("transformers", "TRL's preference trainers run on plain transformers models")
    else:
        choice = backends.choose(t.backend, prep.hardware.device)
    log(f"loading model {config.model} (backend {choice.backend}: {choice.reason})")
    model = backends.load_model(
        config.model, choice, dtype=weight_dtype(t.precision, prep.hardware.device),
        lora=config.lora, max_seq_len=t.max_seq_len, load_in_4bit=t.load_in_4bit,
        gradient_checkpointing=bool(t.gradient_checkpointing), trust_remote_code=t.trust_remote_code,
        seed=t.seed)
    if config.start_from is not None:
        log(f"starting from the adapter of run {config.start_from.run}"
            + (" (also kept, frozen, as the DPO reference)" if t.method == "dpo" else ""))
        preference.load_start(model, config.start_from.adapter)
    return model


def hardware_sampler(run_id: str, sink: ev.Sink):
    """Hardware samples every few seconds and the GPU guard, with the user's thresholds."""
    from backpropagate_core.hardware.gpu import Sampler

    settings = load_settings().gpu
    return Sampler(run_id, sink, interval=settings.interval_s, settings=settings)


def plan_run(config: RunConfig) -> dict:
    """What a run with this config would use, and why; nothing is trained or written."""
    lines: list[str] = []
    prep = prepare(config, lambda msg, level="INFO": lines.append(msg))
    return {"config": {"model": config.model, "data": config.data,
                       "training": prep.resolved.training.model_dump(mode="json"),
                       "lora": config.lora.model_dump(mode="json")},
            "reasons": prep.resolved.reasons, "device": prep.hardware.device,
            "format": prep.data_format, "examples": prep.n_examples,
            "train_examples": len(prep.train_rows), "val_examples": len(prep.val_rows),
            "dropped_examples": prep.dropped,
            "memory_gb": prep.hardware.memory_gb, "label_fraction": _label_fraction(prep.train_rows)}


def _label_fraction(rows: list[dict]) -> float:
    """Share of the training tokens that carry a label (the LM head runs on those only)."""
    rows = [r for r in rows if "labels" in r]  # answer pairs: TRL masks their prompts itself
    total = sum(len(r["labels"]) for r in rows)
    return sum(label != IGNORE_INDEX for r in rows for label in r["labels"]) / total if total else 1.0


def execute_run(run_id: str, store: RunStore, *, extra_sinks: list | tuple = (),
                resume: bool = False) -> TrainResult:
    """Train the run recorded in the store; the body of `backprop train` and of the worker.

    Every outcome ends in exactly one of Finished, Cancelled or Failed in the store.
    """
    run = store.get(run_id)
    with run_session(store, run, extra_sinks) as sink:
        return _train(RunConfig.model_validate(run.config), run.id, RunDir(run.run_dir), sink, resume)


def _train(config: RunConfig, run_id: str, files: RunDir, sink: ev.Sink, resume: bool) -> TrainResult:
    from backpropagate_core.training import distributed
    from backpropagate_core.training import checkpoints
    from backpropagate_core.training import trainer as trainer_hf

    started = time.time()
    main = distributed.is_main()
    log = lambda msg, level="INFO": sink(ev.LogLine(run_id, message=msg, level=level))  # noqa: E731
    with distributed.main_first():  # rank 0 cleans up and writes resolved.json; the others read it
        if main:
            checkpoint = checkpoints.prepare_checkpoints(files.checkpoints) if resume else None
            if resume:
                remove_partials(files.path)
        else:
            done = sorted(checkpoints.complete_checkpoints(files.checkpoints), key=checkpoints.checkpoint_step)
            checkpoint = done[-1] if resume and done else None
        if resume and checkpoint is None:
            log("no complete checkpoint found; starting from step 0", "WARNING")
        prep = prepare(config, log, files, reuse_resolved=checkpoint is not None or not main)
    t = prep.resolved.training
    for name, reason in prep.resolved.reasons.items():
        log(f"{name} = {getattr(t, name)} ({reason})")

    peft_model = load_model(config, prep, log)
    resumed_step = checkpoints.checkpoint_step(checkpoint) if checkpoint else 0
    sink(ev.RunStarted(run_id, config={**config.model_dump(mode="json"),
                                       "training": t.model_dump(mode="json"),
                                       "device": prep.hardware.device},
                       reasons=prep.resolved.reasons, total_steps=t.steps, resumed_from_step=resumed_step,
                       dropped_examples=prep.dropped))

    probing = Probing(prep.tokenizer, prep.probes, files.best, t.patience, t.early_stopping,
                      meta={"model": config.model, "run_id": run_id},
                      by_loss=t.method in PREFERENCE_METHODS) if prep.val_rows else None
    with hardware_sampler(run_id, sink) as sampler:
        outcome = trainer_hf.fit(peft_model, prep.tokenizer, prep.train_rows, prep.val_rows, t,
                                 run_id=run_id, output_dir=files.checkpoints, sink=sink,
                                 resume_from=checkpoint, cancel_flag=files.cancel_flag,
                                 guard=sampler.guard, probing=probing)
    wall = time.time() - started
    result = TrainResult(run_id, "completed", outcome.final_loss, outcome.step, files.path, None,
                         outcome.tokens_per_s, wall)
    if not main:
        sink(ev.Finished(run_id, final_loss=outcome.final_loss, steps=outcome.step,
                         tokens_per_s=outcome.tokens_per_s, wall_s=wall))
        return result
    if outcome.cancelled:
        sink(ev.Cancelled(run_id, step=outcome.step, checkpoint=outcome.last_checkpoint))
        result.status = "cancelled"
        return result
    result.adapter_path = _save_result(peft_model, prep.tokenizer, config, files, run_id, outcome.step,
                                       probing if t.early_stopping else None, log)
    artifacts = {"adapter": str(result.adapter_path)}
    if outcome.last_checkpoint:
        artifacts["checkpoint"] = outcome.last_checkpoint
    sink(ev.Finished(run_id, final_loss=outcome.final_loss, steps=outcome.step, artifacts=artifacts,
                     tokens_per_s=outcome.tokens_per_s, wall_s=wall,
                     best_step=probing.best_step if probing else None,
                     best_score=probing.best_score if probing else None,
                     base_score=probing.base_score if probing else None,
                     stopped_early=bool(probing and probing.stopped_early), method=t.method,
                     reward_accuracy=_kept_reward_accuracy(probing, t)))
    return result


def _kept_reward_accuracy(probing: Probing | None, t: TrainingSettings) -> float | None:
    """The held-out reward accuracy of the adapter the run keeps (the best evaluation's)."""
    if probing is None or t.method not in PREFERENCE_METHODS:
        return None
    return probing.best_reward_accuracy


def _save_result(peft_model, tokenizer, config: RunConfig, files: RunDir, run_id: str, step: int,
                 probing: Probing | None, log: Log) -> Path:
    """The run's adapter: the best held-out evaluation's when one was kept, else the last step's."""
    from backpropagate_core.training import checkpoints

    if probing is not None and probing.best_step is not None:
        log(f"kept the adapter of step {probing.best_step} (best held-out result)")
        return checkpoints.promote(files.best, files.adapter)
    return checkpoints.save_adapter(peft_model, tokenizer, files.adapter,
                                    {"model": config.model, "run_id": run_id, "step": step})


def _resolve(config: RunConfig, saved: Path | None, reuse: bool, hw, train_tok: list[dict],
             max_cap: int):
    """Resolved defaults; a resumed run reuses the ones it started with so steps line up."""
    from backpropagate_core.model import presets
    from backpropagate_core.training import defaults

    if reuse and saved is not None and saved.is_file():
        data = json.loads(saved.read_text())
        return defaults.Resolved(TrainingSettings(**data["training"]), config.lora,
                                 data["reasons"], data.get("device", hw.device))
    resolved = defaults.resolve(config.training, config.lora, hw, n_train=len(train_tok),
                                token_lengths=[x["n_tokens"] for x in train_tok],
                                model_params_b=presets.params_b_of(config.model), model_max_len=max_cap)
    if saved is None:
        return resolved
    tmp = saved.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"training": resolved.training.model_dump(mode="json"),
                               "reasons": resolved.reasons, "device": resolved.device}, indent=2))
    os.replace(tmp, saved)
    return resolved
