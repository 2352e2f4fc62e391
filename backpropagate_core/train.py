"""LoRA training: the public `Trainer` API and `execute_run`, which the CLI and the
worker process both call.

Training itself is transformers' `Trainer` (resume, gradient accumulation, schedulers,
mixed precision and accelerate come from there); this module prepares the data and
model, turns the Trainer's callbacks into our events, writes checkpoints atomically and
honours stop requests.

    trainer = Trainer("smollm2-135m")
    trainer.train("examples/quickstart.jsonl", steps=20)
    trainer.save("my-adapter")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from backpropagate_core import events as ev
from backpropagate_core import logs, platform_support
from backpropagate_core.config import (DEFAULT_MODEL, LoraSettings, TrainingSettings,
                                       describe_validation, load_settings)
from backpropagate_core.errors import BackpropError, is_disk_full
from backpropagate_core.runs import RunStore

_log = logs.get_logger(__name__)
CANCEL_FLAG = "CANCEL"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"


class RunConfig(BaseModel):
    """Everything needed to (re)build a run; stored as the run folder's config.json."""

    model: str = Field(DEFAULT_MODEL, description="Preset name, local folder, .gguf file or hub id.")
    data: str = Field(..., description="Dataset file or folder.")
    name: str | None = Field(None, description="Optional human-readable run name.")
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()


_LORA_KEYS = set(LoraSettings.model_fields)
_TRAIN_KEYS = set(TrainingSettings.model_fields)


def build_config(model: str | None, data: str, name: str | None = None,
                 **overrides: Any) -> RunConfig:
    """A RunConfig from env settings plus overrides given flat (`r=8, steps=20`) or nested
    (`lora={"r": 8}`); every invalid or unknown key is reported in one CONFIG_INVALID."""
    settings = load_settings()
    lora = settings.lora.model_dump()
    training = settings.training.model_dump()
    unknown = []
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("lora", "training") and isinstance(value, dict):
            (lora if key == "lora" else training).update(value)
        elif key in _LORA_KEYS:
            lora[key] = value
        elif key in _TRAIN_KEYS:
            training[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise BackpropError("CONFIG_INVALID", f"unknown setting(s): {', '.join(sorted(unknown))}")
    try:
        return RunConfig(model=model or settings.model, data=str(data), name=name,
                         lora=lora, training=training)
    except ValidationError as err:
        raise BackpropError("CONFIG_INVALID", describe_validation(err)) from None


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


class Trainer:
    """Three-line fine-tuning: `Trainer(model).train(data, steps=...)`, then `save(path)`.

    Runs train in this process and are recorded in the run store like any other run, so
    `backprop list-runs`, the UI and `backprop resume` see them.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, sink: ev.Sink | None = None,
                 home: str | Path | None = None, **overrides: Any) -> None:
        self.model = model
        self.overrides = overrides
        self.sink = sink
        self.store = RunStore(home)
        self.result: TrainResult | None = None

    def train(self, data: str | Path, steps: int | None = None, *, name: str | None = None,
              **overrides: Any) -> TrainResult:
        config = build_config(self.model, str(data), name,
                              **{**self.overrides, **overrides, "steps": steps})
        run = self.store.create_run(config=config.model_dump(mode="json"), model=config.model,
                                    dataset=config.data, name=name)
        self.result = execute_run(run.id, self.store, extra_sinks=[self.sink])
        return self.result

    def resume(self, run_id: str) -> TrainResult:
        self.result = execute_run(run_id, self.store, extra_sinks=[self.sink], resume=True)
        return self.result

    def multi_run(self, data: str | Path, num_runs: int = 5, steps_per_run: int = 100,
                  samples_per_run: int = 1000, merge_mode: str = "slao", **kw: Any):
        """Train a campaign of runs over successive chunks of `data`, merging the adapter
        between runs (SLAO) and measuring forgetting; `save`/`export` then use the merged
        adapter. `kw` takes campaign options (see `multirun.OPTIONS`) and training settings."""
        from backpropagate_core import multirun

        options = {k: kw.pop(k) for k in multirun.OPTIONS if k in kw}
        config = build_config(self.model, str(data), options.get("name"), **{**self.overrides, **kw})
        self.result = multirun.run_campaign(config, num_runs, steps_per_run, samples_per_run,
                                            merge_mode=merge_mode, store=self.store, sink=self.sink,
                                            **options)
        return self.result

    def save(self, path: str | Path) -> Path:
        """Copy the trained LoRA adapter (peft format) to `path`."""
        if self.result is None or self.result.adapter_path is None:
            raise BackpropError("STATE_CHECKPOINT_INVALID", "nothing trained yet",
                                hint="Call train() first; a cancelled run has checkpoints but no final adapter.")
        target = Path(path).expanduser()
        shutil.copytree(self.result.adapter_path, target, dirs_exist_ok=True)
        return target

    def export(self, format: str = "gguf", quantization: str | None = None, **kwargs: Any):
        """Export the trained run (adapter, merged or GGUF); see `backpropagate_core.export`."""
        from backpropagate_core.export import export_model

        if self.result is None:
            raise BackpropError("STATE_CHECKPOINT_INVALID", "nothing trained yet", hint="Call train() first.")
        return export_model(self.result.run_id, format=format, quantization=quantization, **kwargs)


def execute_run(run_id: str, store: RunStore, *, extra_sinks: list | tuple = (),
                resume: bool = False) -> TrainResult:
    """Train the run recorded in the store; the body of `backprop train` and of the worker.

    Every outcome ends in exactly one of Finished, Cancelled or Failed in the store.
    """
    from backpropagate_core import distributed

    run = store.get(run_id)
    config = RunConfig.model_validate(run.config)
    if distributed.is_main():
        sink = ev.fan_out(store.sink(), ev.JsonlSink(run.run_dir / "events.jsonl"), logs.log_event,
                          *extra_sinks)
        store.claim(run.id)
        (run.run_dir / CANCEL_FLAG).unlink(missing_ok=True)
    else:  # under accelerate launch only rank 0 writes to the store and the run folder
        sink = distributed.follower_sink(run.id)
    with distributed.log_context(logs.bind_run(run.id, run.run_dir / logs.RUN_LOG)):
        try:
            with _stop_on_signals(run.run_dir / CANCEL_FLAG):
                return _train(config, run.id, run.run_dir, sink, resume)
        except BackpropError as err:
            sink(ev.Failed(run.id, code=err.code, message=err.message, hint=err.hint))
            raise
        except Exception as err:  # noqa: BLE001 - the worker's outer edge: record a coded failure
            coded = _classify(err, run.run_dir)
            sink(ev.Failed(run.id, code=coded.code, message=coded.message, hint=coded.hint))
            _log.debug("traceback of the failure above", exc_info=err)
            raise coded from err


def _classify(err: Exception, run_dir: Path | None = None) -> BackpropError:
    text = f"{type(err).__name__}: {err}"
    if is_disk_full(err):
        from backpropagate_core.hf_trainer import checkpoint_step, complete_checkpoints

        done = sorted(complete_checkpoints(run_dir / CHECKPOINTS_DIR), key=checkpoint_step) if run_dir else []
        last = done[-1].name if done else "none"
        return BackpropError("STATE_DISK_FULL", f"the disk filled up while writing ({text}); "
                                                f"last complete checkpoint: {last}")
    if "out of memory" in text.lower():
        return BackpropError("RUNTIME_TRAINING_FAILED", f"out of memory: {text}",
                             hint="Lower the batch size or max sequence length, or enable gradient checkpointing.")
    return BackpropError("RUNTIME_TRAINING_FAILED", text)


class _stop_on_signals:
    """Ctrl-C / SIGTERM ask for a graceful stop (checkpoint, then stop) by writing the same
    flag file the UI's Stop button writes; a second Ctrl-C interrupts at once."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag
        self.previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.flag.exists() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag.touch()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in platform_support.stop_signals():
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class Prepared:
    """Data and settings ready for training: what `plan` shows and `_train` uses."""
    tokenizer: Any
    train_rows: list[dict]
    val_rows: list[dict]
    hardware: Any
    resolved: Any
    data_format: str
    n_examples: int


def prepare(config: RunConfig, log, resolved_file: Path | None = None,
            reuse_resolved: bool = False) -> Prepared:
    """Load and tokenize the data, then resolve every default against data and hardware."""
    from backpropagate_core import data as data_mod
    from backpropagate_core import defaults, model as model_mod
    from backpropagate_core import hf_trainer, token_cache

    log(f"loading dataset {config.data}")
    loaded = data_mod.load(config.data, skip_bad_lines=config.training.skip_bad_lines)
    for problem in loaded.problems:
        log(f"skipped [{problem.code}] {problem.message}", "WARNING")
    log(f"{len(loaded.examples)} examples in {loaded.format} format")

    log(f"loading tokenizer for {config.model}")
    tokenizer = model_mod.load_tokenizer(config.model, config.training.trust_remote_code)
    if data_mod.ensure_chat_template(tokenizer):
        log("the tokenizer has no chat template; using the built-in ChatML-style template", "WARNING")

    train_ex, val_ex = data_mod.split(loaded.examples, config.training.val_fraction, config.training.seed)
    max_cap = int(getattr(tokenizer, "model_max_length", 0) or 0)
    max_cap = max_cap if 0 < max_cap < 1_000_000 else 8192
    train_rows = token_cache.tokenize_all(train_ex, tokenizer, max_cap)
    val_rows = token_cache.tokenize_all(val_ex, tokenizer, max_cap)

    hw = defaults.detect_hardware()
    resolved = _resolve(config, resolved_file, reuse_resolved, hw, train_rows, max_cap)
    t = resolved.training
    return Prepared(tokenizer, hf_trainer.truncate(train_rows, t.max_seq_len),
                    hf_trainer.truncate(val_rows, t.max_seq_len), hw, resolved,
                    loaded.format, len(loaded.examples))


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
            "memory_gb": prep.hardware.memory_gb, "label_fraction": _label_fraction(prep.train_rows)}


def _label_fraction(rows: list[dict]) -> float:
    """Share of the training tokens that carry a label (the LM head runs on those only)."""
    total = sum(len(r["labels"]) for r in rows)
    from backpropagate_core.speed import IGNORE_INDEX

    return sum(label != IGNORE_INDEX for r in rows for label in r["labels"]) / total if total else 1.0


def _train(config: RunConfig, run_id: str, run_dir: Path, sink: ev.Sink, resume: bool) -> TrainResult:
    from backpropagate_core import backends, distributed
    from backpropagate_core.gpu import Sampler
    from backpropagate_core import hf_trainer as trainer_hf

    started = time.time()
    main = distributed.is_main()
    log = lambda msg, level="INFO": sink(ev.LogLine(run_id, message=msg, level=level))  # noqa: E731
    ckpt_root = run_dir / CHECKPOINTS_DIR
    with distributed.main_first():  # rank 0 cleans up and writes resolved.json; the others read it
        if main:
            checkpoint = trainer_hf.prepare_checkpoints(ckpt_root) if resume else None
            if resume:
                _remove_partials(run_dir)
        else:
            done = sorted(trainer_hf.complete_checkpoints(ckpt_root), key=trainer_hf.checkpoint_step)
            checkpoint = done[-1] if resume and done else None
        if resume and checkpoint is None:
            log("no complete checkpoint found; starting from step 0", "WARNING")
        prep = prepare(config, log, run_dir / "resolved.json", reuse_resolved=checkpoint is not None or not main)
    t = prep.resolved.training
    for name, reason in prep.resolved.reasons.items():
        log(f"{name} = {getattr(t, name)} ({reason})")

    platform_support.configure_attention(prep.hardware.device, prep.hardware.name)
    choice = backends.choose(t.backend, prep.hardware.device)
    log(f"loading model {config.model} (backend {choice.backend}: {choice.reason})")
    peft_model = backends.load_model(
        config.model, choice, dtype=trainer_hf.weight_dtype(t.precision, prep.hardware.device),
        lora=config.lora, max_seq_len=t.max_seq_len, load_in_4bit=t.load_in_4bit,
        gradient_checkpointing=bool(t.gradient_checkpointing), trust_remote_code=t.trust_remote_code,
        seed=t.seed)
    resumed_step = trainer_hf.checkpoint_step(checkpoint) if checkpoint else 0
    sink(ev.RunStarted(run_id, config={**config.model_dump(mode="json"),
                                       "training": t.model_dump(mode="json"),
                                       "device": prep.hardware.device},
                       reasons=prep.resolved.reasons, total_steps=t.steps, resumed_from_step=resumed_step))

    gpu_settings = load_settings().gpu
    with Sampler(run_id, sink, interval=gpu_settings.interval_s, settings=gpu_settings) as sampler:
        outcome = trainer_hf.fit(peft_model, prep.tokenizer, prep.train_rows, prep.val_rows, t,
                                 run_id=run_id, output_dir=ckpt_root, sink=sink,
                                 resume_from=checkpoint, cancel_flag=run_dir / CANCEL_FLAG,
                                 guard=sampler.guard)
    wall = time.time() - started
    if not main:
        sink(ev.Finished(run_id, final_loss=outcome.final_loss, steps=outcome.step,
                         tokens_per_s=outcome.tokens_per_s, wall_s=wall))
        return TrainResult(run_id, "completed", outcome.final_loss, outcome.step, run_dir, None,
                           outcome.tokens_per_s, wall)
    if outcome.cancelled:
        sink(ev.Cancelled(run_id, step=outcome.step, checkpoint=outcome.last_checkpoint))
        return TrainResult(run_id, "cancelled", outcome.final_loss, outcome.step, run_dir, None,
                           outcome.tokens_per_s, wall)
    adapter = trainer_hf.save_adapter(peft_model, prep.tokenizer, run_dir / ADAPTER_DIR,
                                      {"model": config.model, "run_id": run_id, "step": outcome.step})
    artifacts = {"adapter": str(adapter)}
    if outcome.last_checkpoint:
        artifacts["checkpoint"] = outcome.last_checkpoint
    sink(ev.Finished(run_id, final_loss=outcome.final_loss, steps=outcome.step, artifacts=artifacts,
                     tokens_per_s=outcome.tokens_per_s, wall_s=wall))
    return TrainResult(run_id, "completed", outcome.final_loss, outcome.step, run_dir, adapter,
                       outcome.tokens_per_s, wall)


def _remove_partials(folder: Path) -> None:
    """Drop what an interrupted write left (an `adapter.partial` cut short by a full disk)."""
    for partial in folder.glob("*.partial"):
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def _resolve(config: RunConfig, saved: Path | None, reuse: bool, hw, train_tok: list[dict],
             max_cap: int):
    """Resolved defaults; a resumed run reuses the ones it started with so steps line up."""
    from backpropagate_core import defaults, model as model_mod

    if reuse and saved is not None and saved.is_file():
        data = json.loads(saved.read_text())
        return defaults.Resolved(TrainingSettings(**data["training"]), config.lora,
                                 data["reasons"], data.get("device", hw.device))
    resolved_spec = model_mod.resolve_model(config.model)
    params_b = resolved_spec.preset.params_b if resolved_spec.preset else _guess_params_b(config.model)
    resolved = defaults.resolve(config.training, config.lora, hw, n_train=len(train_tok),
                                token_lengths=[x["n_tokens"] for x in train_tok],
                                model_params_b=params_b, model_max_len=max_cap)
    if saved is None:
        return resolved
    tmp = saved.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"training": resolved.training.model_dump(mode="json"),
                               "reasons": resolved.reasons, "device": resolved.device}, indent=2))
    os.replace(tmp, saved)
    return resolved


def _guess_params_b(spec: str) -> float:
    """Parameter count from a local config (no weights loaded); 1B when unknown."""
    cfg = Path(spec).expanduser() / "config.json"
    if not cfg.is_file():
        return 1.0
    c = json.loads(cfg.read_text())
    h, n, v = c.get("hidden_size", 0), c.get("num_hidden_layers", 0), c.get("vocab_size", 0)
    inter = c.get("intermediate_size", 4 * h)
    return max(1e-6, (n * (4 * h * h + 3 * h * inter) + v * h) / 1e9)
