"""A randomly initialised model with a real model's shape, for timing on machines that
cannot download weights (speed and memory depend on the shape, not on the values).

The tokenizer and the architecture settings (RoPE, norms, token ids) come from a local
model folder; `--shape` takes the layer sizes of one of the estimator's presets instead,
keeping the folder's vocabulary so the tokenizer still fits.

    python bench/random_model.py --like ~/.cache/backpropagate/models/SmolLM2-135M-Instruct.Q4_1-98362432 \
        --out /tmp/smollm2-random
    python bench/random_model.py --like /tmp/smollm2-random --shape llama-3.2-1b --out /tmp/1b-random
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json", "tokenizer.model")


def build(like: Path, out: Path, shape: str | None = None, dtype: str = "bfloat16", seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from backpropagate_core.model.presets import SHAPES

    config = json.loads((like / "config.json").read_text())
    if shape:
        s = SHAPES[shape]
        config.update(hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
                      num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, head_dim=s.hd,
                      tie_word_embeddings=s.tied)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copy2(like / name, out / name)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising on a GPU takes seconds
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"{out}: {params / 1e6:.0f}M parameters ({shape or 'shape of ' + like.name}), {dtype}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", type=Path, required=True, help="model folder with config.json and tokenizer")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", help="take the layer sizes of this estimator preset (e.g. llama-3.2-1b)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    build(args.like, args.out, args.shape, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
