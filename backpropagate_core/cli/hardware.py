"""`backprop estimate-vram`: how much memory LoRA training needs, and the batch that fits."""

from __future__ import annotations

import json
from typing import Optional

import typer

from backpropagate_core.cli.app import app, console


@app.command("estimate-vram")
def estimate_vram(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Preset or local model folder."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per example."),
    batch: int = typer.Option(1, "--batch", help="Examples per device step."),
    four_bit: bool = typer.Option(False, "--4bit", help="QLoRA: 4-bit base weights."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Keep only layer inputs."),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    dtype: str = typer.Option("bf16", "--dtype", help="Weight dtype without --4bit: bf16, fp16 or fp32."),
    vram_gb: Optional[float] = typer.Option(None, "--vram-gb", help="Memory to fit into [default: free memory of GPU 0]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate training memory (weights, LoRA, optimizer, activations, logits) and the largest batch that fits."""
    from backpropagate_core.training.estimate import estimate, largest_batch, shape_of

    shape = shape_of(model)
    kind = "4bit" if four_bit else dtype
    kw = dict(shape=shape, dtype=kind, r=lora_r, gradient_checkpointing=gradient_checkpointing)
    est = estimate(None, seq_len, batch, **kw)
    budget, source = _budget(vram_gb)
    fits = largest_batch(None, seq_len, budget, **kw) if budget else None
    if fits == 1 and estimate(None, seq_len, 1, **kw).total_gb > budget * 0.85:
        fits = 0
    if as_json:
        print(json.dumps({"model": model, "seq_len": seq_len, "batch": batch, "dtype": kind,
                          "gradient_checkpointing": gradient_checkpointing, "estimate": est.to_dict(),
                          "budget_gb": budget, "budget_source": source, "largest_batch": fits}))
        return
    console.print(f"[bold]{model}[/] ({shape.params / 1e9:.3g}B params), seq {seq_len}, batch {batch}, "
                  f"{kind} weights{', gradient checkpointing' if gradient_checkpointing else ''}")
    for name, value in est.to_dict().items():
        label = name.removesuffix("_gb").replace("_", " ")
        console.print(f"  {label:<12} {value:8.2f} GB", highlight=False,
                      style="bold" if name == "total_gb" else None)
    if budget is None:
        console.print("no GPU detected; pass --vram-gb to see the largest batch that fits")
    elif fits == 0:
        console.print(f"does not fit {budget:.1f} GB ({source}) even at batch 1: try --4bit, "
                      "--gradient-checkpointing or a shorter --seq-len")
    else:
        console.print(f"largest batch that fits {budget:.1f} GB ({source}) with a 15% margin: [bold]{fits}[/]; "
                      f"keep the effective batch with gradient accumulation {max(1, batch // fits) if fits < batch else 1}")


def _budget(vram_gb: float | None) -> tuple[float | None, str]:
    if vram_gb is not None:
        return vram_gb, "--vram-gb"
    try:
        import torch
    except ImportError:
        return None, "none"
    if not torch.cuda.is_available():
        return None, "none"
    free, _ = torch.cuda.mem_get_info(0)
    return free / 2**30, f"free on {torch.cuda.get_device_name(0)}"
