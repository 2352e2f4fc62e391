"""GGUF files written by llama.cpp's own converter, for architectures our writer does not know.

`BACKPROPAGATE_LLAMA_CPP_DIR` names a llama.cpp checkout. Its `convert_hf_to_gguf.py` runs
as a subprocess of this Python on the merged model, saved as safetensors in the export's
`.partial` folder, with the checkout's bundled `gguf-py` first on the path: the converter
is written against that copy, which differs from PyPI's `gguf`. The file it writes then
goes through the same verification and quantization as our own writer's.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from backpropagate_core.errors import BackpropError

CONVERTER = "convert_hf_to_gguf.py"
NAME = "llama.cpp convert_hf_to_gguf.py"
"""How export.json names the converter (our own writer is "backpropagate")."""
TAIL_LINES = 6
_PERCENT = re.compile(r"^Writing:\s+(\d+)%")
_DTYPES = {"bfloat16": "bf16", "float16": "f16"}


def checkout(folder: str | Path) -> Path:
    """The llama.cpp checkout at `folder`, refused unless it has the converter and its gguf-py."""
    path = Path(folder).expanduser().resolve()
    missing = [name for name in (CONVERTER, "gguf-py/gguf") if not (path / name).exists()]
    if missing:
        raise BackpropError(
            "CONFIG_INVALID",
            f"BACKPROPAGATE_LLAMA_CPP_DIR={path} is not a llama.cpp checkout: it has no {' and no '.join(missing)}",
            hint="Point it at a clone of https://github.com/ggml-org/llama.cpp (the folder holding "
                 "convert_hf_to_gguf.py and gguf-py/), or unset it.")
    return path


def write(model: Any, tokenizer: Any, config: dict, path: Path, out_type: str, name: str,
          llama_cpp: Path, on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Write the merged `model` as an `out_type` (f32/f16/bf16) GGUF at `path` with llama.cpp's
    converter; returns what goes into the manifest about the file."""
    from backpropagate_core.export.gguf_vocab import converter_name
    from backpropagate_core.export.merged import save_merged

    say = on_progress or (lambda done, total, message: None)
    merged = path.parent / "merged-for-llama.cpp"
    say(0, 100, "saving the merged weights for llama.cpp's converter")
    natural = _DTYPES.get(str(config.get("dtype") or config.get("torch_dtype")).replace("torch.", ""), "f32")
    # Handing over in the output type loses nothing only when the base was published in it
    # (its norms, which the converter keeps in f32, were that precise to begin with).
    save_merged(model, tokenizer, merged, out_type if out_type == natural else "f32")
    try:
        # The converter writes the name as general.name, from which llama.cpp infers Phi-3's
        # whitespace stripping: it gets the name our own writer would give the file.
        seconds = run_converter(llama_cpp, merged, path, out_type, converter_name(name, merged), say)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return {"converter": NAME, "converter_dir": str(llama_cpp), "converter_seconds": seconds,
            **tokenizer_keys(path)}


def run_converter(llama_cpp: Path, model_dir: Path, out: Path, out_type: str, name: str,
                  say: Callable[[int, int, str], None]) -> float:
    """Run convert_hf_to_gguf.py; its output is captured, its last lines go into the error."""
    started = time.time()
    command = [sys.executable, str(llama_cpp / CONVERTER), str(model_dir), "--outfile", str(out),
               "--outtype", out_type, "--model-name", name]
    paths = [str(llama_cpp / "gguf-py"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(command, cwd=out.parent, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8", errors="replace")
    try:
        # Text mode splits tqdm's carriage-return updates into lines too.
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            percent = _PERCENT.match(line)
            if percent:
                say(int(percent.group(1)), 100, f"llama.cpp's converter writing {out.name}")
            else:
                tail.append(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: leave no converter running
            proc.kill()
            proc.wait()
    if rc != 0 or not out.is_file():
        out.unlink(missing_ok=True)
        raise _failure(rc, list(tail))
    return round(time.time() - started, 2)


def _failure(rc: int, tail: list[str]) -> BackpropError:
    how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    text = " | ".join(tail) or "no output"
    hint = None
    if "pre-tokenizer was not recognized" in text:
        hint = ("llama.cpp recognises byte-level BPE tokenizers by a hash of how they split a test text, "
                "and this checkout does not know this tokenizer's. A newer llama.cpp may (git pull in "
                "BACKPROPAGATE_LLAMA_CPP_DIR); nothing was replaced.")
    elif rc < 0:
        hint = ("The converter was stopped from outside, most often for lack of memory: free memory "
                "and export again; nothing was replaced.")
    return BackpropError("EXPORT_CONVERTER_FAILED", f"llama.cpp's {CONVERTER} failed ({how}): {text}", hint=hint)


def tokenizer_keys(path: Path) -> dict:
    """The architecture, tokenizer model and pre-tokenizer names the file declares.

    Read by llama.cpp itself (vocabulary only): the `gguf` package's reader takes seconds
    on a 50k-token vocabulary, llama.cpp a fraction of one.
    """
    from backpropagate_core.export.quantize import _captured_stderr, require_llama_cpp

    llama_cpp = require_llama_cpp("Reading a GGUF file")
    try:
        # A vocabulary-only context warns about its zero training context on the C stderr.
        with _captured_stderr():
            llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except ValueError as err:
        raise BackpropError(
            "EXPORT_CONVERTER_FAILED",
            f"the llama.cpp in llama-cpp-python {llama_cpp.__version__} cannot load the file the converter wrote ({err})",
            hint="The checkout's converter is probably newer than that llama.cpp and writes something it does not "
                 "know yet. Use the converter of the same llama.cpp: `make install` unpacks it into .tools/llama.cpp "
                 "(see docs/export.md).") from None
    try:
        meta = dict(llama.metadata)
    finally:
        llama.close()
    return {"gguf_architecture": meta.get("general.architecture"),
            "tokenizer_model": meta.get("tokenizer.ggml.model"), "tokenizer_pre": meta.get("tokenizer.ggml.pre")}
