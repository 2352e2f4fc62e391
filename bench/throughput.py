"""Training throughput: backpropagate against the usual ways to LoRA-train, on the same work.

Variants, each in its own process (Unsloth patches transformers and TRL on import), run in
turn and alternated over rounds so a change in machine load hits all of them alike:

  a  transformers Trainer + peft, written the way a user would (fp32, padded batches)
  b  TRL SFTTrainer with its defaults (bf16 on, padded batches)
  c  Unsloth's own recipe (FastLanguageModel + SFTTrainer); "unavailable" with the reason
  d  backpropagate: `training.trainer.fit`, the path `backprop train` takes
  e  backpropagate with backend="unsloth" (Unsloth builds the model, `fit` trains it):
     what `backend="auto"` would pick on CUDA; run it with --variants abcde
  t  backpropagate with the batch size left empty, as `backprop train` defaults: micro-batches
     filled to the hardware's token budget; trained on the same number of examples as the
     others (steps x batch x accumulation), so fewer, larger steps; --variants adt

Same model, data (already tokenized, loss on assistant replies only), LoRA (rank, alpha,
target modules), sequence length, batch, accumulation, learning rate, seed and data order.
tokens/s counts real (non-padding) tokens per second of training steps. Final loss is the
mean next-token loss of the trained adapter over the whole dataset, computed the same way
for every variant in fp32 (the last training-step losses are printed too).

MFU: LoRA training costs about 4 FLOP per frozen parameter per token (forward 2, backward
to the inputs 2; no weight gradients for frozen weights), 6 with gradient checkpointing
(one more forward); the LoRA matrices and attention scores are left out. Parameters are
the matmul parameters (decoder linears + LM head; a tied embedding is counted once).
The peak is this machine's measured dense matmul rate in torch.

    python bench/throughput.py            # 30 steps x 2 rounds, all variants
    python bench/throughput.py --quick    # smoke test: 2 steps, tiny settings
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "qv": ["q_proj", "v_proj"]}
NAMES = {"a": "transformers Trainer + peft (fp32 defaults)", "b": "TRL SFTTrainer (defaults)",
         "c": "Unsloth recipe", "d": "backpropagate", "e": "backpropagate, Unsloth backend",
         "t": "backpropagate, token-budget micro-batches"}
LEVERS = {"packing": "padded batches", "labelled": "loss on every position",
          "fused": "unfused AdamW", "bf16": "fp32, no autocast", "casts": "peft input casts",
          "attention": "sdpa per example (CPU)"}
"""d with one lever off (`--ablate`): what that lever gives is d's speed over this one's."""


def name(variant: str) -> str:
    if "-" in variant:
        return f"backpropagate, {LEVERS[variant.split('-', 1)[1]]}"
    return NAMES[variant]


@dataclass
class Work:
    model: str = "smollm2-135m"
    data: str = str(ROOT / "examples" / "quickstart.jsonl")
    r: int = 16
    alpha: int = 32
    targets: str = "all"
    seq_len: int = 256
    batch: int = 4
    accum: int = 1
    steps: int = 30
    lr: float = 2e-4
    seed: int = 42
    threads: int = 0
    """torch threads per process; 0 = torch's default (all cores)."""
    off: str = ""
    """A lever of variant d to turn off (a key of LEVERS)."""
    t_lr: float = 0.0
    """Learning rate of variant t; 0 = the same as the others."""


# ---- shared by every variant --------------------------------------------------------

def load_rows(work: Work, tokenizer) -> list[dict]:
    from backpropagate_core.data import dataset as data
    from backpropagate_core.training.pipeline import truncate

    loaded = data.load(work.data)
    return truncate([data.tokenize(e, tokenizer, None) for e in loaded.examples], work.seq_len)[0]


def lora_config(work: Work):
    from peft import LoraConfig

    return LoraConfig(r=work.r, lora_alpha=work.alpha, lora_dropout=0.0, bias="none",
                      target_modules=TARGETS[work.targets], task_type="CAUSAL_LM")


def common_args(work: Work) -> dict:
    return dict(output_dir=tempfile.mkdtemp(prefix="bench-"), max_steps=work.steps,
                per_device_train_batch_size=work.batch, gradient_accumulation_steps=work.accum,
                learning_rate=work.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                logging_steps=1, save_strategy="no", report_to=[], seed=work.seed,
                data_seed=work.seed, use_cpu=not _cuda(), disable_tqdm=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class Meter:
    """Times training steps and counts the real tokens of the batches they consumed."""

    def __init__(self) -> None:
        self.tokens = 0
        self.step_time = 0.0
        self.cpu_time = 0.0
        """Process CPU seconds of the whole train() call (see `cpu_timed`)."""
        self._t = 0.0

    def wrap(self, collator):
        def collate(batch):
            out = collator(batch)
            mask = out.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else int(out["input_ids"].numel())
            return out
        return collate

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                meter._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                meter.step_time += time.perf_counter() - meter._t

        return StepTimer()


class cpu_timed:
    """Adds the CPU seconds this process spends inside the block to `meter.cpu_time`.

    With one thread per process this does not grow when other programs load the machine
    (wall time does), so it compares variants fairly on a busy machine."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def __enter__(self):
        self.t0 = time.process_time()

    def __exit__(self, *exc) -> None:
        self.meter.cpu_time += time.process_time() - self.t0


EVAL_ROWS = 200
"""Examples the eval loss is taken over: all of the small datasets, a fixed part of large ones."""


def eval_loss(trained, rows: list[dict], work: "Work | None" = None) -> float:
    """Mean next-token loss over every labelled token of the dataset (its first EVAL_ROWS
    examples), one example at a time, with the trained adapter on the original fp32 base
    model (what a merge or export uses), whatever dtype the variant trained its base weights in."""
    import torch
    import torch.nn.functional as F
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from backpropagate_core.model.loader import load_model

    work = work or Work()
    model = get_peft_model(load_model(work.model, dtype=torch.float32), lora_config(work))
    adapter = {k: v.float() for k, v in get_peft_model_state_dict(trained).items()}
    set_peft_model_state_dict(model, adapter)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for row in rows[:EVAL_ROWS]:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            keep = labels != -100
            total += F.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / max(1, count)


def _train_losses(log_history: list[dict]) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


# ---- the variants -------------------------------------------------------------------

def variant_a(work: Work) -> dict:
    """What a user writes from the transformers + peft docs: fp32, padded batches."""
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from backpropagate_core.model.loader import load_model, load_tokenizer

    tokenizer = load_tokenizer(work.model)
    rows = [{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]}
            for r in load_rows(work, tokenizer)]
    base = load_model(work.model)
    set_seed(work.seed)  # every variant starts from the same LoRA initialisation
    model = get_peft_model(base, lora_config(work))
    meter = Meter()
    trainer = Trainer(model=model, args=TrainingArguments(**common_args(work)), train_dataset=rows,
                      data_collator=meter.wrap(DataCollatorForSeq2Seq(tokenizer, padding=True)),
                      callbacks=[meter.callback()])
    with cpu_timed(meter):
        trainer.train()
    return _result(meter, trainer.state.log_history, model, rows, work)


def variant_b(work: Work) -> dict:
    """TRL's SFTTrainer with its defaults, given the same tokenized rows and a LoRA config."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from backpropagate_core.model.loader import load_model, load_tokenizer

    tokenizer = load_tokenizer(work.model)
    rows = load_rows(work, tokenizer)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    meter = Meter()
    base = load_model(work.model)
    set_seed(work.seed)
    trainer = SFTTrainer(model=base, processing_class=tokenizer, train_dataset=dataset,
                         args=SFTConfig(**common_args(work), max_length=work.seq_len),
                         peft_config=lora_config(work), callbacks=[meter.callback()])
    trainer.data_collator = meter.wrap(trainer.data_collator)
    with cpu_timed(meter):
        trainer.train()
    return _result(meter, trainer.state.log_history, trainer.model, rows, work)


def variant_c(work: Work) -> dict:
    """Unsloth's recipe: FastLanguageModel, its get_peft_model, TRL's SFTTrainer."""
    try:
        from unsloth import FastLanguageModel  # must come first: it patches transformers and TRL
    except Exception as err:  # noqa: BLE001 - any import failure means "unavailable here"
        return {"unavailable": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from backpropagate_core.model.loader import materialize, resolve_model

    model, tokenizer = FastLanguageModel.from_pretrained(
        materialize(resolve_model(work.model)), max_seq_length=work.seq_len, load_in_4bit=False)
    # Gradient checkpointing off: on a CPU it is plain recomputation, and memory is ample.
    model = FastLanguageModel.get_peft_model(
        model, r=work.r, lora_alpha=work.alpha, lora_dropout=0.0, bias="none",
        target_modules=TARGETS[work.targets], use_gradient_checkpointing=False, random_state=work.seed)
    rows = load_rows(work, tokenizer)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    meter = Meter()
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset,
                         args=SFTConfig(**common_args(work), max_length=work.seq_len, optim="adamw_8bit"),
                         callbacks=[meter.callback()])
    trainer.data_collator = meter.wrap(trainer.data_collator)
    with cpu_timed(meter):
        trainer.train()
    return _result(meter, trainer.state.log_history, model, rows, work)


def variant_d(work: Work, backend: str = "transformers", token_budget: bool = False) -> dict:
    """backpropagate's training path, with the settings `backprop train` would resolve."""
    from backpropagate_core.training import backends
    from backpropagate_core.runs import events as ev
    from backpropagate_core.config import LoraSettings, TrainingSettings
    from backpropagate_core.training.defaults import detect_hardware
    from backpropagate_core.training.trainer import fit, weight_dtype
    from backpropagate_core.model.loader import load_tokenizer

    hw = detect_hardware()
    precision = "bf16" if hw.bf16 else ("fp16" if hw.device == "cuda" else "fp32")
    if work.off == "bf16":
        precision = "fp32"
    _lever_off(work.off)
    try:
        choice = backends.choose(backend, hw.device)
    except Exception as err:  # noqa: BLE001 - Unsloth not installed: the variant is unavailable
        return {"unavailable": str(err)}
    tokenizer = load_tokenizer(work.model)
    rows = load_rows(work, tokenizer)
    model = backends.load_model(
        work.model, choice, dtype=weight_dtype(precision, hw.device), max_seq_len=work.seq_len,
        lora=LoraSettings(r=work.r, alpha=work.alpha, dropout=0.0, target_modules=TARGETS[work.targets]),
        load_in_4bit=False, gradient_checkpointing=False, trust_remote_code=False, seed=work.seed)
    steps, batch, tokens = work.steps, work.batch, None
    if token_budget:
        from backpropagate_core.training import batching

        lengths = [len(r["input_ids"]) for r in rows]
        tokens = batching.budget(hw.device, work.seq_len)[0]
        per = batching.per_group(lengths, tokens, work.seed, hw.device)
        # The defaults' accumulation: micro-batches until a step averages the examples aimed for.
        accum = batching.accumulation(per, batching.target_examples(len(rows)))
        steps, batch = max(1, round(work.steps * work.batch * work.accum / (per * accum))), None
        work.accum = accum
        work.lr = work.t_lr or work.lr
        print(f"token budget {tokens}: {per:.1f} examples per micro-batch x {accum}, {steps} steps, lr {work.lr:g}",
              flush=True)
    t = TrainingSettings(steps=steps, batch_size=batch, batch_tokens=tokens, grad_accum=work.accum,
                         learning_rate=work.lr, lr_scheduler="linear", warmup_ratio=0.0, seed=work.seed,
                         max_seq_len=work.seq_len, save_steps=10**6, val_fraction=0.0,
                         precision=precision, gradient_checkpointing=False, report_to="none",
                         packing=work.off != "packing")
    steps: list[float] = []
    out_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    meter = Meter()
    with cpu_timed(meter):
        outcome = fit(model, tokenizer, rows, [], t, run_id="bench", output_dir=out_dir / "checkpoints",
                      sink=lambda e: steps.append(e.loss) if isinstance(e, ev.Step) else None,
                      resume_from=None, cancel_flag=out_dir / "CANCEL")
    peak = _peak_rss_gb()
    return {"tok_s": outcome.tokens_per_s or 0.0, "tok_cpu_s": outcome.tokens / meter.cpu_time,
            "train_losses": steps, "eval_loss": eval_loss(model, rows, work), "peak_rss_gb": peak}


def _lever_off(lever: str) -> None:
    """Turn one of fit's levers off in this (child) process."""
    from backpropagate_core.training import trainer as hf_trainer
    from backpropagate_core.training import speed

    if lever == "labelled":
        speed.plain_lm_head = lambda model: False  # fit then computes the loss the stock way
    elif lever == "fused":
        hf_trainer.OPTIMIZER = "adamw_torch"
    elif lever == "casts":
        speed.skip_input_casts = lambda model, autocast: []
    elif lever == "attention":
        def sdpa_per_example(query, key, value, scaling, window=None):  # no model here has a window
            import torch.nn.functional as F

            return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                                  enable_gqa=True).transpose(1, 2)

        speed.grouped_causal_attention = sdpa_per_example


def variant_e(work: Work) -> dict:
    return variant_d(work, backend="unsloth")


def variant_t(work: Work) -> dict:
    return variant_d(work, token_budget=True)


def _result(meter: Meter, log_history: list[dict], model, rows, work: Work) -> dict:
    peak = _peak_rss_gb()  # before the evaluation model is loaded
    return {"tok_s": meter.tokens / meter.step_time if meter.step_time else 0.0,
            "tok_cpu_s": meter.tokens / meter.cpu_time if meter.cpu_time else 0.0,
            "train_losses": _train_losses(log_history), "eval_loss": eval_loss(model, rows, work),
            "peak_rss_gb": peak}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---- the machine ---------------------------------------------------------------------

def matmul_peak(dtype_name: str, n: int = 0, seconds: float = 2.0) -> tuple[float, float]:
    """Dense matmul GFLOP/s in torch for this dtype: (per wall second, per CPU second).

    The CPU-second figure is what one thread can do however loaded the machine is."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = n or (8192 if device == "cuda" else 2048)  # a GPU needs large products to reach its peak
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    wall = cpu = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        flop = 2 * n**3 / 1e9
        wall = max(wall, flop / (time.perf_counter() - t0))
        cpu = max(cpu, flop / max(1e-9, time.process_time() - c0))
    return wall, cpu


def flops_per_token(model: str, gradient_checkpointing: bool = False) -> float:
    from backpropagate_core.training.estimate import shape_of

    s = shape_of(model)
    return (6 if gradient_checkpointing else 4) * s.matmul_params


# ---- orchestration -------------------------------------------------------------------

def run_child(variant: str, work: Work, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--work", json.dumps(asdict(work))]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           **({"OMP_NUM_THREADS": str(work.threads)} if work.threads else {}),
           "UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "load": load}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-400:], "load": load}
    result = json.loads(lines[-1][len("RESULT "):])
    result["load"] = (load + os.getloadavg()[0]) / 2
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round: a smoke test")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant [30]")
    parser.add_argument("--rounds", type=int, help="times each variant runs, alternating [2]")
    parser.add_argument("--variants", default="abcd", help="which of a, b, c, d, e to run [abcd]")
    parser.add_argument("--targets", choices=sorted(TARGETS), default="all", help="LoRA target modules [all]")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per variant [all cores]; 1 makes tokens per CPU-second "
                             "comparable on a machine other programs are loading")
    parser.add_argument("--model", default=Work.model, help="preset or local model folder [smollm2-135m]")
    parser.add_argument("--data", default=Work.data)
    parser.add_argument("--batch", type=int, default=Work.batch, help=f"examples per step [{Work.batch}]")
    parser.add_argument("--accum", type=int, default=Work.accum, help=f"micro-batches per step [{Work.accum}]")
    parser.add_argument("--seq-len", type=int, default=Work.seq_len, help=f"max tokens per example [{Work.seq_len}]")
    parser.add_argument("--ablate", nargs="?", const=",".join(LEVERS), default="",
                        help=f"also run d with each speed lever off in turn [{','.join(LEVERS)}]")
    parser.add_argument("--t-lr", type=float, default=0.0, help="learning rate of variant t [the others']")
    parser.add_argument("--lr", type=float, default=Work.lr, help=f"learning rate [{Work.lr}]")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        work = Work(**json.loads(args.work))
        if work.threads:
            import torch

            torch.set_num_threads(work.threads)
        if "-" in args.child:
            work.off = args.child.split("-", 1)[1]
        result = globals()[f"variant_{args.child[0]}"](work)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    steps = args.steps or (2 if args.quick else 30)
    rounds = args.rounds or (1 if args.quick else 2)
    work = Work(model=args.model, data=args.data, targets=args.targets, steps=steps, threads=args.threads,
                batch=args.batch, accum=args.accum, seq_len=args.seq_len, lr=args.lr, t_lr=args.t_lr)
    print(f"work: {json.dumps(asdict(work))}")
    print(f"LoRA r={work.r} alpha={work.alpha} on {', '.join(TARGETS[work.targets])}; "
          f"batch {work.batch} x accumulation {work.accum}; max length {work.seq_len}", flush=True)
    if work.threads:
        import torch

        torch.set_num_threads(work.threads)
    (f32, f32_cpu), (b16, b16_cpu) = matmul_peak("float32"), matmul_peak("bfloat16")
    peaks = {"fp32": f32, "bf16": b16, "fp32_cpu": f32_cpu, "bf16_cpu": b16_cpu}
    print(f"matmul peak: fp32 {f32:.0f} GFLOP/s ({f32_cpu:.0f} per CPU-s), bf16 {b16:.0f} GFLOP/s "
          f"({b16_cpu:.0f} per CPU-s) (load {os.getloadavg()[0]:.2f})", flush=True)
    variants = list(args.variants) + [f"d-{lever}" for lever in args.ablate.split(",") if lever]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in range(rounds):
        order = variants if rnd % 2 == 0 else variants[::-1]
        for v in order:
            result = run_child(v, work, timeout=max(600, 60 * steps))
            runs[v].append(result)
            print(f"round {rnd + 1} {v}: " + _describe(result), flush=True)
    return report(runs, work, peaks, args.json)


def _describe(result: dict) -> str:
    if "unavailable" in result:
        return f"unavailable ({result['unavailable']})"
    if "error" in result:
        return f"error ({result['error']})"
    last = result["train_losses"][-5:]
    return (f"{result['tok_s']:.1f} tok/s, {result['tok_cpu_s']:.1f} tok/CPU-s, eval loss {result['eval_loss']:.4f}, "
            f"last train loss {sum(last) / max(1, len(last)):.4f}, peak RSS {result['peak_rss_gb']:.2f} GB, "
            f"load {result['load']:.2f}")


def report(runs: dict[str, list[dict]], work: Work, peaks: dict, json_path: str | None) -> int:
    flop = flops_per_token(work.model)
    best: dict[str, dict] = {}
    print(f"\n{'variant':57s} {'tok/s':>7s} {'vs a':>5s} {'MFU':>6s} {'tok/CPU-s':>9s} {'vs a':>5s} "
          f"{'MFU/CPU':>7s} {'eval loss':>9s} {'load':>5s}")
    for v, results in runs.items():
        ok = [r for r in results if "tok_s" in r]
        if not ok:
            why = results[0].get("unavailable") or results[0].get("error", "no result")
            print(f"{v:10s} {name(v):46s} unavailable: {why}")
            continue
        best[v] = max(ok, key=lambda r: r["tok_s"])
        best[v]["tok_cpu_s"] = max(r["tok_cpu_s"] for r in ok)
    base = best.get("a", {})
    for v, top in best.items():
        # Without fast bf16 (bf16 matmuls slower than fp32: emulated), auto precision is fp32.
        kind = "fp32" if v in ("a", "d-bf16") or peaks["bf16"] < peaks["fp32"] else "bf16"
        mfu = top["tok_s"] * flop / (peaks[kind] * 1e9) if peaks[kind] else 0.0
        mfu_cpu = top["tok_cpu_s"] * flop / (peaks[f"{kind}_cpu"] * 1e9) if peaks[f"{kind}_cpu"] else 0.0
        wall = f"{top['tok_s'] / base['tok_s']:.2f}" if base else "-"
        cpu = f"{top['tok_cpu_s'] / base['tok_cpu_s']:.2f}" if base else "-"
        print(f"{v:10s} {name(v):46s} {top['tok_s']:7.1f} {wall:>5s} {mfu:6.1%} {top['tok_cpu_s']:9.1f} {cpu:>5s} "
              f"{mfu_cpu:7.1%} {top['eval_loss']:9.4f} {top['load']:5.2f}")
    print(f"(best of {max(len(r) for r in runs.values())} alternating rounds; tok/s over training-step wall time, "
          f"tok/CPU-s over the process CPU time of the whole train() call; MFU = tok/s x {flop / 1e6:.0f} MFLOP "
          f"/ measured matmul peak (MFU/CPU: both per CPU second), fp32 peak for a, bf16 for the others)")
    if "d" in best:
        for other in ("a", "c"):
            if other in best:
                print(f"d/{other} = {best['d']['tok_s'] / best[other]['tok_s']:.2f} (wall), "
                      f"{best['d']['tok_cpu_s'] / best[other]['tok_cpu_s']:.2f} (CPU time)")
            else:
                print(f"d/{other} = unavailable")
    if "t" in best:
        for other in ("a", "d"):
            if other in best:
                print(f"t/{other} = {best['t']['tok_s'] / best[other]['tok_s']:.2f} (wall); eval loss "
                      f"{best['t']['eval_loss']:.4f} vs {best[other]['eval_loss']:.4f} after the same examples")
    if "d" in best and "e" in best:
        print(f"e/d = {best['e']['tok_s'] / best['d']['tok_s']:.2f} (wall): Unsloth backend against our own path")
    if json_path:
        Path(json_path).write_text(json.dumps({"work": asdict(work), "peaks": peaks, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
