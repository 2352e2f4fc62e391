"""GGUF quantization through llama.cpp's own quantizer (from llama-cpp-python).

We write f16/bf16/f32 ourselves; every quantized type is made from that file by
`llama_model_quantize`, the same code as the `llama-quantize` tool, so the k-quant
mixes (which tensors get more bits) are exactly llama.cpp's.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from backpropagate_core.errors import BackpropError

# name → (llama_ftype, one-line explanation, bits per weight, roughly, for size estimates)
QUANTIZATIONS: dict[str, tuple[int | None, str, float]] = {
    "f32": (0, "full 32-bit floats: exact, largest", 32.0),
    "f16": (1, "16-bit floats: practically lossless, half of f32", 16.0),
    "bf16": (32, "bfloat16: lossless for models trained in bf16", 16.0),
    "q8_0": (7, "8-bit: near-lossless, a quarter of f32", 8.5),
    "q6_k": (18, "6-bit k-quant: very close to f16", 6.6),
    "q5_k_m": (17, "5-bit k-quant: high quality, smaller", 5.7),
    "q5_k_s": (16, "5-bit k-quant, small variant", 5.5),
    "q4_k_m": (15, "4-bit k-quant: the usual choice for Ollama, ~30% of f16", 4.9),
    "q4_k_s": (14, "4-bit k-quant, small variant", 4.6),
    "q4_0": (2, "4-bit legacy quant: fast, lower quality", 4.5),
    "q3_k_m": (12, "3-bit k-quant: small, noticeably worse", 3.9),
    "q2_k": (10, "2-bit k-quant: smallest, much worse", 3.4),
}
WRITTEN_DIRECTLY = ("f32", "f16", "bf16")


def check_quantization(name: str) -> str:
    key = name.lower()
    if key not in QUANTIZATIONS:
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID",
                            f"unknown GGUF quantization {name!r}; choose one of {', '.join(QUANTIZATIONS)}")
    return key


def estimated_size_bytes(n_params: int, quantization: str) -> int:
    """What the file will weigh, from the parameter count (for the UI and a disk check)."""
    return int(n_params * QUANTIZATIONS[check_quantization(quantization)][2] / 8)


def require_llama_cpp(feature: str):
    try:
        import llama_cpp
    except ImportError as err:
        raise BackpropError(
            "DEP_MISSING", f"{feature} needs llama-cpp-python ({err})",
            hint="pip install 'backpropagate[export]' (it compiles llama.cpp, a few minutes). From a checkout, "
                 "`make install` builds it; `make run` starts that in the background, logging to "
                 ".tools/export-build.log, so wait for it to finish.") from None
    return llama_cpp


def quantize_gguf(src: Path, dst: Path, quantization: str, threads: int | None = None) -> dict:
    """Quantize the f16/bf16/f32 GGUF at `src` into `dst` with llama.cpp.

    Returns notes for the manifest: how many tensors llama.cpp had to store in another
    type (k-quants need rows that are a multiple of 256 wide; narrower ones fall back).
    """
    import ctypes

    from backpropagate_core.platform_support import free_cpu_threads

    key = check_quantization(quantization)
    llama_cpp = require_llama_cpp(f"GGUF {key} quantization")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZATIONS[key][0]
    params.nthread = threads or free_cpu_threads()
    with _captured_stderr() as captured:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                           ctypes.byref(params))
    text = "".join(captured)
    if rc != 0 or not Path(dst).is_file():
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise BackpropError("EXPORT_FAILED", f"llama.cpp quantization to {key} failed (code {rc}): {tail}")
    found = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", text)
    return {"fallback_tensors": int(found.group(1)) if found else 0,
            "tensors": int(found.group(2)) if found else None}


@contextlib.contextmanager
def _captured_stderr():
    """llama.cpp writes a per-tensor report to the C-level stderr; keep it off the terminal.

    Yields a list that holds the captured text once the block ends.
    """
    import os
    import sys
    import tempfile

    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            fh.seek(0)
            captured.append(fh.read().decode("utf-8", "replace"))
