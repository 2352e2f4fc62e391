"""The transformers `Trainer` wired to our events, atomic checkpoints and stop flag.

`fit` runs one training job on pre-tokenized examples. Checkpoints are written to
`checkpoint-N.partial/` and renamed to `checkpoint-N/` only when complete, with a
`backpropagate.json` manifest, so a crash mid-save never leaves a folder that looks good.

The step itself uses the levers in `speed` (padding-free rows with per-example attention,
the loss on labelled positions only, fused AdamW); a CUDA out-of-memory error retries
with a smaller batch (`oom`), and the GPU guard can pause between steps (`gpu`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from backpropagate_core import platform_support
from backpropagate_core.training import distributed
from backpropagate_core.runs import events as ev
from backpropagate_core.config import TrainingSettings
from backpropagate_core.runs.layout import IGNORE_INDEX, MANIFEST
from backpropagate_core.training import checkpoints
from backpropagate_core.training.preference import PREFERENCE_METHODS

OPTIMIZER = "adamw_torch_fused"
"""One fused AdamW kernel over all LoRA tensors instead of a loop over hundreds of small ones."""


@dataclass
class FitOutcome:
    step: int
    final_loss: float | None
    cancelled: bool
    last_checkpoint: str | None
    tokens_per_s: float | None
    tokens: int = 0
    """Real (non-padding) tokens trained on in this call."""
    probing: object | None = None
    """The `probing.Probing` of the run: best step, scores, whether it stopped early."""


def weight_dtype(precision: str, device: str):
    """dtype to load the frozen base weights in: the training precision, so autocast does not
    cast every weight again in every step. The LoRA weights stay fp32 either way (peft
    upcasts adapters), so their updates keep full precision. fp16 only on GPUs."""
    import torch

    if precision == "bf16":
        return torch.bfloat16
    if device == "cuda" and precision == "fp16":
        return torch.float16
    return torch.float32


class Collator:
    """Makes a batch: padded rows, or (`pack`) one padding-free row per micro-batch (see
    `speed.pack_batch`). `trained` counts the real tokens that went through training
    steps (the trainer adds them as each step consumes a batch, so prefetching and
    evaluation batches do not skew tokens/s)."""

    def __init__(self, pad_id: int, pack: bool = False, label_index: bool = False) -> None:
        self.pad_id = pad_id
        self.pack = pack
        self.lengths = False
        """Also send the packed examples' lengths (set while `speed.varlen_sdpa` is the attention)."""
        self.label_index = label_index
        """Also send the labelled positions, computed here on the CPU (see `speed.labelled_loss`)."""
        self.trained = 0

    def __call__(self, batch: list) -> dict:
        from backpropagate_core.training import speed

        if batch and isinstance(batch[0], list):  # whole micro-batches (`batching.Groups`)
            batch = [row for group in batch for row in group]
        out = speed.pack_batch(batch, self.lengths) if self.pack else self._pad(batch)
        if self.label_index:
            out[speed.LABEL_INDEX] = speed.label_index(out["labels"])
        return out

    def _pad(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    @staticmethod
    def count(batch: dict) -> int:
        """Real (non-padding) tokens in a collated batch."""
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


class _ListDataset:
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def checkpointing_mixin():
    """What every trainer of ours adds to its transformers (or TRL) trainer: atomic
    checkpoints, the held-out answers at each evaluation, and counting trained tokens."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class AtomicCheckpoints:
        """Writes each checkpoint under a `.partial` folder and renames it when complete."""

        run_id: str = ""
        probing = None
        """Answers held-out prompts at each evaluation (`probing.Probing`)."""
        _staging: str | None = None

        def evaluation_loop(self, *args, **kwargs):
            output = super().evaluation_loop(*args, **kwargs)
            if self.probing is not None:
                prefix = kwargs.get("metric_key_prefix", "eval")
                for key, value in self.probing.evaluate(self.model).items():
                    output.metrics[f"{prefix}_{key}"] = value
            return output

        def training_step(self, model, inputs, *args, **kwargs):
            # The batch is still on the CPU here, so counting costs no device sync.
            self.data_collator.trained += self.data_collator.count(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

        def _get_output_dir(self, trial):
            return self._staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            real = Path(self.args.output_dir)
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            staging = real / f"{name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            if not self.args.should_save:
                return
            (staging / name / MANIFEST).write_text(json.dumps(
                {"run_id": self.run_id, "step": self.state.global_step, "complete": True}))
            final = real / name
            shutil.rmtree(final, ignore_errors=True)
            platform_support.replace(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            checkpoints.rotate(real, self.args.save_total_limit)

    return AtomicCheckpoints


def _trainer_class():
    from transformers import Trainer

    class AtomicCheckpointTrainer(checkpointing_mixin(), Trainer):
        labelled_loss: bool = False
        """Compute the loss with `speed.labelled_loss` (plain-head causal LMs)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from backpropagate_core.training import speed

            if not self.labelled_loss:
                inputs.pop(speed.LABEL_INDEX, None)
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # accelerate puts autocast around model.forward; this path calls the decoder itself.
            with self.accelerator.autocast():
                loss = speed.labelled_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every process's tokens and DDP averages gradients.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

    return AtomicCheckpointTrainer


def fit(model, tokenizer, train_rows: list[dict], val_rows: list[dict], t: TrainingSettings, *,
        run_id: str, output_dir: Path, sink: ev.Sink, resume_from: Path | None,
        cancel_flag: Path, guard=None, probing=None) -> FitOutcome:
    """Train `model` (a peft model) and report progress through `sink`.

    `probing` (a `probing.Probing`) answers held-out prompts at each evaluation, keeps the
    best adapter and ends the run early when the held-out result stops improving.

    `guard` (a `gpu.Guard`) can pause training between steps while the GPU cools. On a
    CUDA out-of-memory error, with `t.oom_recovery`, the batch is halved and accumulation
    doubled (the effective batch stays the same) and training continues from the step it
    had reached, at most `oom.MAX_RETRIES` times.
    """
    from backpropagate_core.training import backends
    from backpropagate_core.training import speed

    # An Unsloth model keeps its own (patched) forward and loss, on padded batches. Under
    # DDP the loss must go through the wrapper's forward, or gradients are not all-reduced.
    own = getattr(model, backends.BACKEND_ATTR, None) != "unsloth"
    if t.method in PREFERENCE_METHODS:
        # TRL's trainers compute their own losses on chosen and rejected rows side by side.
        from backpropagate_core.training.preference import PairCollator

        collator, labelled = PairCollator(), False
    else:
        labelled = own and speed.plain_lm_head(model) and not _liger() and distributed.world_size() == 1
        collator = Collator(tokenizer.pad_token_id, pack=t.packing and own, label_index=labelled)
    from backpropagate_core.training.callbacks import EventCallback

    callback = EventCallback(run_id, sink, collator, cancel_flag, output_dir, guard, probing)
    # The attention of a packed row runs per example (a model loaded with flash-attention
    # uses its own varlen kernel instead).
    attention = speed.use_varlen_attention(model) if collator.pack else None
    collator.lengths = attention is not None
    casting = speed.skip_input_casts(model, t.precision != "fp32")
    try:
        trainer = _train_with_oom_recovery(model, tokenizer, train_rows, val_rows, t, run_id=run_id, sink=sink,
                                           output_dir=output_dir, resume_from=resume_from,
                                           collator=collator, callback=callback, labelled=labelled,
                                           probing=probing)
    finally:
        speed.restore_attention(model, attention)
        speed.restore_input_casts(casting)
    if callback.overheat is not None:
        raise callback.overheat
    if callback.nonfinite is not None:
        raise callback.nonfinite
    return FitOutcome(trainer.state.global_step, callback.last_loss, callback.cancelled,
                      callback.last_checkpoint, _overall_rate(collator, callback), collator.trained, probing)


def _train_with_oom_recovery(model, tokenizer, train_rows, val_rows, t: TrainingSettings, *, run_id: str,
                             sink: ev.Sink, output_dir: Path, resume_from: Path | None,
                             collator: Collator, callback, labelled: bool, probing=None):
    from backpropagate_core.training import oom

    size, accum, resume = MicroBatch(t.batch_size, t.batch_tokens), t.grad_accum, resume_from
    for attempt in range(oom.MAX_RETRIES + 1):
        trainer = _build_trainer(model, tokenizer, train_rows, val_rows, t, size, accum, run_id=run_id,
                                 output_dir=output_dir, collator=collator, callback=callback,
                                 labelled=labelled)
        trainer.probing = probing
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            return trainer
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled; the rest re-raise
            if not (oom.is_oom(err) and t.oom_recovery and oom.single_process()):
                raise
            if attempt == oom.MAX_RETRIES or size.smallest:
                raise oom.exhausted(err, size.examples or size.tokens, attempt) from err
        # Out here the failed step's traceback, and the activations its frames held, are gone.
        resume = oom.rescue(trainer, output_dir) or resume
        size, accum = size.halved(), accum * 2
        sink(ev.LogLine(run_id, level="WARNING", message=(
            f"out of memory at step {trainer.state.global_step}; retrying with {size} x "
            f"accumulation {accum} (same effective batch), attempt {attempt + 1} of {oom.MAX_RETRIES}")))
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass(frozen=True)
class MicroBatch:
    """What one device step holds: `examples` exactly, or (examples None) rows grouped up to
    `tokens` tokens (`batching`)."""

    examples: int | None
    tokens: int | None

    @property
    def smallest(self) -> bool:
        return self.examples == 1 or (self.examples is None and self.budget <= MIN_TOKENS)

    @property
    def budget(self) -> int:
        from backpropagate_core.training import batching

        return self.tokens or batching.CPU_TOKENS

    def halved(self) -> "MicroBatch":
        if self.examples is not None:
            return MicroBatch(self.examples // 2, None)
        return MicroBatch(None, max(MIN_TOKENS, self.budget // 2))

    def __str__(self) -> str:
        return f"batch {self.examples}" if self.examples is not None else f"micro-batches of {self.budget} tokens"


MIN_TOKENS = 64
"""Smallest token budget an out-of-memory retry halves to."""


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _liger() -> bool:
    """Liger kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) on CUDA when installed."""
    from backpropagate_core.training import speed

    return speed.liger_available("cuda" if _on_cuda() else "cpu")


def _build_trainer(model, tokenizer, train_rows, val_rows, t: TrainingSettings, size: MicroBatch, accum: int, *,
                   run_id: str, output_dir: Path, collator, callback, labelled: bool):
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from backpropagate_core.training import trackers

    on_cuda = torch.cuda.is_available()
    evaluate = bool(val_rows)
    report_to, tracker_callbacks = trackers.setup(t.report_to, output_dir.parent)
    common = dict(
        output_dir=str(output_dir), max_steps=t.steps, per_device_train_batch_size=size.examples or 1,
        per_device_eval_batch_size=size.examples or 1, gradient_accumulation_steps=accum,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay, logging_steps=t.logging_steps, save_strategy="steps",
        save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        eval_strategy="steps" if evaluate else "no", eval_steps=t.eval_steps or t.save_steps,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", use_cpu=not on_cuda,
        **_checkpointing_arg(bool(t.gradient_checkpointing)), seed=t.seed, data_seed=t.seed,
        optim=OPTIMIZER,
        # Evaluation only needs the loss; gathering logits would hold batch x length x vocab floats.
        prediction_loss_only=True, use_liger_kernel=_liger(),
        # transformers would log the mean of earlier losses in place of a NaN one; we stop instead.
        logging_nan_inf_filter=False,
        report_to=report_to, run_name=run_id, disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=platform_support.dataloader_workers(), logging_first_step=True,
        ddp_find_unused_parameters=False,
    )
    if t.method in PREFERENCE_METHODS:
        from backpropagate_core.training import preference

        trainer = preference.build_trainer(model, tokenizer, train_rows, val_rows, t, common, collator,
                                           [callback, *tracker_callbacks], checkpointing_mixin())
    else:
        trainer = _trainer_class()(
            model=model, args=TrainingArguments(**common), train_dataset=_dataset(train_rows, size, t.seed, collator),
            eval_dataset=_dataset(val_rows, size, t.seed, collator) if evaluate else None,
            data_collator=collator, callbacks=[callback, *tracker_callbacks])
        trainer.labelled_loss = labelled
    trainer.run_id = run_id
    trainer.remove_callback(PrinterCallback)
    return trainer


def _dataset(rows: list[dict], size: MicroBatch, seed: int, collator):
    """The rows one by one for a fixed batch, else whole micro-batches filled to the budget."""
    if size.examples is not None:
        return _ListDataset(rows)
    from backpropagate_core.training import batching

    lengths = [len(row["input_ids"]) for row in rows]
    groups = batching.token_groups(lengths, size.budget, seed, device="cuda" if _on_cuda() else "cpu",
                                   padded=not getattr(collator, "pack", False))
    return batching.Groups(rows, groups)


def _checkpointing_arg(enabled: bool) -> dict:
    """transformers 5 renamed gradient to activation checkpointing; pass it only when on."""
    if not enabled:
        return {}
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": True}


def _overall_rate(collator: Collator, callback) -> float | None:
    """Non-padding tokens per second of training steps (evaluation batches excluded)."""
    trained = collator.trained
    return trained / callback.step_time if callback.step_time > 0 and trained else None
