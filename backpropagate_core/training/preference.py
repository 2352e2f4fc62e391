"""Preference training: DPO and ORPO through TRL's trainers, on the one training path.

A preference run is prepared, loaded and fitted like any other (`pipeline`, `trainer`):
the same events, checkpoints, resume, stop flag, OOM recovery and GPU guard. What differs
is here: the rows are answer pairs in TRL's conversational format (TRL applies the chat
template and masks the prompt), and the trainer is TRL's, with our checkpointing mixed in.

DPO's reference is never a second copy of the model: TRL copies the model's LoRA adapter,
as it is when the trainer is built, into a frozen second adapter named `ref` and switches
to it for the reference. For a new run that copy starts at zero, so the reference is the
base model; for a run that starts from an earlier run's adapter (`--from`) it is that
adapter. ORPO needs no reference at all.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from backpropagate_core.config import TrainingSettings
from backpropagate_core.errors import BackpropError

PREFERENCE_METHODS = ("dpo", "orpo")
"""Methods that learn from answer pairs, through TRL's trainers."""
REFERENCE_ADAPTER = "ref"
"""The adapter name TRL's DPO trainer uses as the reference when the model has one."""

METRICS = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
           "logps/chosen": "chosen_logp", "logps/rejected": "rejected_logp"}
"""TRL's logged preference metrics (both trainers) → our event fields."""


def method_for(requested: str, data_format: str) -> tuple[str, str]:
    """The training method to use, and why: `auto` trains DPO on answer pairs and SFT on
    anything else; DPO and ORPO need answer pairs."""
    from backpropagate_core.data.formats import PREFERENCE_FORMATS

    pairs = data_format in PREFERENCE_FORMATS
    if requested == "auto":
        if pairs:
            return "dpo", "the dataset holds chosen/rejected answer pairs"
        return "sft", "the dataset holds answers to learn"
    if requested in PREFERENCE_METHODS and not pairs:
        raise BackpropError(
            "CONFIG_INVALID", f"--method {requested} needs a preference dataset (prompt, chosen, rejected); "
                              f"this one is in {data_format} format",
            hint="Use --method sft for this dataset, or give pairs: one JSON object per line with "
                 "\"prompt\", \"chosen\" and \"rejected\" (see docs/datasets.md).")
    if requested == "sft" and pairs:
        return "sft", "set by you: learns the chosen answers, ignores the rejected ones"
    return requested, "set by you"


def rows(examples, counts: list[int | None]) -> list[dict]:
    """TRL rows for preference examples, with `n_tokens` for the defaults and the plan."""
    return [{"prompt": [dict(m) for m in ex.prompt], "chosen": [dict(m) for m in ex.chosen],
             "rejected": [dict(m) for m in ex.rejected], "n_tokens": n or 0, "line": ex.line}
            for ex, n in zip(examples, counts)]


class PairCollator:
    """TRL's collator for the method (set once the trainer has built it), counting the real
    tokens of each batch for tokens/s like the SFT collator does."""

    pack = False
    """Pairs are padded by TRL's collator; the packed-row levers of SFT do not apply."""

    def __init__(self) -> None:
        self.inner = None
        self.trained = 0

    def __call__(self, batch: list[dict]) -> dict:
        return self.inner(batch)

    @staticmethod
    def count(batch: dict) -> int:
        """Real tokens of both sides (DPO stacks chosen over rejected rows in one mask; ORPO
        keeps a mask per side, the prompt inside each)."""
        masks = [v for k, v in batch.items()
                 if k.endswith("attention_mask") and not k.startswith("prompt") and hasattr(v, "sum")]
        return int(sum(int(m.sum()) for m in masks))


def build_trainer(model, tokenizer, train_rows: list[dict], val_rows: list[dict], t: TrainingSettings,
                  common: dict, collator: PairCollator, callbacks: list, mixin: type):
    """TRL's DPO or ORPO trainer for these rows, with `mixin` (our atomic checkpoints,
    held-out answers and token counting, see `trainer`) mixed in."""
    import datasets

    # Progress bars of dataset mapping and of the reference pass would only clutter the
    # run's log; the run reports its own progress as events.
    datasets.disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")
    fields = ("prompt", "chosen", "rejected")
    train = datasets.Dataset.from_list([{k: r[k] for k in fields} for r in train_rows])
    val = datasets.Dataset.from_list([{k: r[k] for k in fields} for r in val_rows]) if val_rows else None
    args = dict(common)
    if not any(k in args for k in ("gradient_checkpointing", "activation_checkpointing")):
        # TRL's configs turn it on unless told otherwise; transformers 5 renamed it.
        from transformers import TrainingArguments

        renamed = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
        args["activation_checkpointing" if renamed else "gradient_checkpointing"] = False
    if t.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        weight = t.sft_weight or 0.0
        losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, weight]} if weight else {}
        config = DPOConfig(**args, beta=t.beta, max_length=t.max_seq_len, **losses,
                           # The reference's log-probs are computed once, before training, not
                           # at every step of every epoch: one forward pass per pair in all.
                           precompute_ref_log_probs=True)
        base = DPOTrainer
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**args, beta=t.beta, max_length=t.max_seq_len)
        base = ORPOTrainer
    cls = type(f"Atomic{base.__name__}", (mixin, base), {})
    with _reference_kept(model):
        trainer = cls(model=model, args=config, train_dataset=train, eval_dataset=val,
                      processing_class=tokenizer, callbacks=callbacks)
    collator.inner = trainer.data_collator
    trainer.data_collator = collator
    return trainer


@contextmanager
def _reference_kept(model):
    """TRL's DPO trainer makes the reference adapter as a copy of the model's adapter when
    it is built. A trainer built again for the same model (after an out-of-memory retry)
    must get the reference the run started with, not the adapter as trained so far: the
    adapter holds the reference's weights while the trainer copies and scores with them."""
    names = [n for n, _ in model.named_parameters() if f".{REFERENCE_ADAPTER}." in n] \
        if REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {}) else []
    if not names:
        yield
        return
    import torch

    params = dict(model.named_parameters())
    reference = {n.replace(f".{REFERENCE_ADAPTER}.", ".default."): params[n].detach().clone() for n in names}
    trained = {n: params[n].detach().clone() for n in reference}
    model.delete_adapter(REFERENCE_ADAPTER)
    with torch.no_grad():
        for n, value in reference.items():
            params[n].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, value in trained.items():
                params[n].copy_(value)


def load_start(model, adapter: str) -> None:
    """Load an earlier run's adapter weights into the model's adapter. For DPO, TRL's
    trainer copies it into its frozen reference adapter, so the run is measured against,
    and kept near, where it started."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(adapter, device="cpu")
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise BackpropError("STATE_CHECKPOINT_INVALID",
                            f"the adapter in {adapter} does not fit this model ({len(missing)} weights left over)",
                            hint="--from needs a run of the same model with the same LoRA rank and targets.")


def event_metrics(logs: dict, prefix: str = "") -> dict:
    """Our event fields from a TRL log line (`prefix` "eval_" for evaluations)."""
    out = {}
    for key, name in METRICS.items():
        value = logs.get(f"{prefix}{key}")
        if value is not None:
            out[name] = float(value)
    return out
