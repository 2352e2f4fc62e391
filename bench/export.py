"""Export benchmark: every supported architecture (tiny random models) and the real
SmolLM2-135M, exported to GGUF at several formats and checked in llama.cpp.

    python bench/export.py [--formats f16,q8_0,q4_k_m] [--no-smollm2] [--archs llama,phi3.5] [--json out.json]

For each (model, format): export time, file size, the largest logit difference against
its bound, top-1 agreement, KL divergence, the tokenizer check, the Ollama TEMPLATE
rendered by Go's text/template against transformers' chat template (token for token
on four conversations, with Go's own engine), and whether the 16-bit file was checked before quantizing. Tiny
models are 256 wide with a random non-zero LoRA on top (a fresh LoRA would be a no-op).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY_ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi3.5", "phi4-mini")

def template_round_trip(folder: Path, tokenizer, go) -> str:
    """"pass" when the Modelfile's TEMPLATE, rendered by Go's text/template as Ollama does,
    gives every conversation the same tokens as the chat template; otherwise the first
    conversation that differs."""
    from tests.go.template import messages_data

    manifest = json.loads((folder / "export.json").read_text())
    template, system = manifest["ollama"]["template"], manifest["ollama"].get("system")
    from backpropagate_core.export.ollama import CHECK_CONVERSATIONS

    for i, messages in enumerate(CHECK_CONVERSATIONS):
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}] + messages
        got = go.render(template, messages_data(messages))
        if tokenizer(got, add_special_tokens=False)["input_ids"] != tokenizer(want, add_special_tokens=False)["input_ids"]:
            return f"differs on conversation {i + 1}"
    return "pass"


def bench_one(label: str, source: str, formats: list[str], tokenizer, go) -> list[dict]:
    from backpropagate_core.export import export_model

    rows = []
    for fmt in formats:
        started = time.time()
        result = export_model(source, format="gguf", quantization=fmt, output_dir=Path(tempfile.mkdtemp()))
        v = result.verification
        manifest = json.loads((result.folder / "export.json").read_text())
        rows.append({
            "model": label, "format": fmt, "seconds": round(time.time() - started, 1),
            "mb": round(result.size_bytes / 1e6, 1), "max_logit_diff": v["max_logit_diff"], "bound": v["bound"],
            "top1": v["top1_agreement"], "kl": v["kl_divergence"], "tokenizer": v["tokenization_match"],
            "checked_16_bit_first": bool(manifest.get("verification_intermediate")),
            "template": template_round_trip(result.folder, tokenizer, go),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="f16,q8_0,q4_k_m")
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--archs", default=",".join(TINY_ARCHS), help="tiny models to export (tests/tiny.py)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("BACKPROPAGATE_HOME", tempfile.mkdtemp(prefix="bench-export-"))
    formats = args.formats.split(",")

    from transformers import AutoTokenizer

    from tests.export_fixtures import make_adapter, tiny_base
    from tests.go.template import GoTemplates

    go = GoTemplates()

    root = Path(tempfile.mkdtemp(prefix="bench-export-models-"))
    rows = []
    for arch in args.archs.split(","):
        base = tiny_base(root, arch)
        adapter = make_adapter(base, root / f"adapter-{arch}")
        rows += bench_one(f"tiny {arch}", str(adapter), formats, AutoTokenizer.from_pretrained(base), go)
    if not args.no_smollm2:
        adapter = make_adapter("smollm2-135m", root / "adapter-smollm2", scale=0.01)
        rows += bench_one("smollm2-135m", str(adapter), formats, AutoTokenizer.from_pretrained(adapter), go)

    print(f"\n{'model':<14} {'format':<7} {'s':>6} {'MB':>7} {'max diff':>9} {'bound':>8} {'top-1':>6} "
          f"{'tokenizer':>9} {'16-bit 1st':>10} {'template':>9}")
    for r in rows:
        print(f"{r['model']:<14} {r['format']:<7} {r['seconds']:>6} {r['mb']:>7} {r['max_logit_diff']:>9.4g} "
              f"{r['bound']:>8.4g} {r['top1']:>6.2f} {str(r['tokenizer']):>9} {str(r['checked_16_bit_first']):>10} "
              f"{r['template']:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
