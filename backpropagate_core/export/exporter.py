"""`export_model`: from a run (or folder) to a verified adapter, merged model or GGUF.

Every export is built in `<dest>.partial/`, verified there, and only then renamed over
`<dest>/`, so a failed or interrupted export never replaces a good one. Exports go under
the run folder (`<run_dir>/exports/`) or a folder the caller names; the verification
figures go into the export's `export.json` and onto the run (summary and artifacts).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.export import merged as src_mod
from backpropagate_core.export import verify as verify_mod
from backpropagate_core.export.quantize import WRITTEN_DIRECTLY, check_quantization

FORMATS = ("adapter", "merged", "gguf")
MERGED_DTYPES = ("f32", "f16", "bf16")
MANIFEST = "export.json"




@dataclass
class ExportResult:
    path: Path
    """The .gguf file, or the adapter / merged model folder."""
    format: str
    quantization: str | None
    size_bytes: int
    verification: dict = field(default_factory=dict)
    """max_logit_diff, bound, top1_agreement, kl_divergence, tokenization_match, ..."""
    seconds: float = 0.0
    folder: Path | None = None
    """The export's folder (holds export.json, and a Modelfile for GGUF)."""
    run_id: str | None = None
    ollama: dict = field(default_factory=dict)
    """TEMPLATE, SYSTEM and stop tokens for Ollama (GGUF only)."""
    stage_seconds: dict = field(default_factory=dict)
    """Where the time went: load, reference, merge, write, quantize, verify."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"], d["folder"] = str(self.path), str(self.folder) if self.folder else None
        return d


def export_model(source: str | Path, format: str = "gguf", quantization: str | None = None,
                 output_dir: str | Path | None = None, verify: bool = True,
                 on_progress: Callable[[ev.Event], None] | None = None) -> ExportResult:
    """Export a run, adapter folder or merged model folder.

    `quantization`: for gguf one of quantize.QUANTIZATIONS (default q4_k_m); for merged
    f32/f16/bf16 (default: the dtype the base model was published in); unused for adapter.
    """
    started = time.time()
    fmt, quant = check_options(format, quantization)
    src = src_mod.resolve_source(source)
    emit = _Stages(src.run_id or "", on_progress)
    emit("load", 0, 1, "resolving the base model")
    llama_cpp = _gguf_converter(src) if fmt == "gguf" else None
    if fmt == "merged" and quant is None:
        quant = src_mod.natural_dtype(src)
    out_root = Path(output_dir).expanduser().resolve() if output_dir else src.default_output_dir()
    dest = out_root / (fmt if fmt == "adapter" else f"{fmt}-{quant}")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        built = _build(src, fmt, quant, partial, verify, emit, llama_cpp)
        manifest = {"format": fmt, "quantization": quant, "source": str(src.path),
                    "base_model": src.base, "run_id": src.run_id, "created_at": time.time(),
                    "seconds": round(time.time() - started, 2), "stage_seconds": emit.close(),
                    **built}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _replace(partial, dest)
    except OSError as err:
        raise BackpropError("EXPORT_FAILED", f"writing {dest}: {err}") from err
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    path = dest / built["file"] if built.get("file") else dest
    result = ExportResult(path, fmt, quant, _size(path), built["verification"],
                          round(time.time() - started, 2), dest, src.run_id, built.get("ollama", {}),
                          emit.seconds)
    _record(src, result)
    emit("done", 1, 1, f"{path} ({result.size_bytes / 1e6:.1f} MB)")
    return result


def check_options(format: str, quantization: str | None) -> tuple[str, str | None]:
    """(format, quantization) lower-cased and checked, so a launcher can refuse bad options
    before it starts a process; quantization None means the format's default."""
    fmt = (format or "").lower()
    if fmt not in FORMATS:
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID",
                            f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "gguf":
        return fmt, check_quantization(quantization or "q4_k_m")
    if fmt == "merged" and quantization is not None:
        q = quantization.lower()
        if q not in MERGED_DTYPES:
            raise BackpropError("INPUT_EXPORT_OPTION_INVALID",
                                f"merged weights are saved as {', '.join(MERGED_DTYPES)}, not {quantization!r}; "
                                "quantize with --format gguf")
        return fmt, q
    return fmt, None


def _gguf_converter(src: src_mod.Source) -> Path | None:
    """None when our own writer converts the model; else the llama.cpp checkout whose
    converter will (BACKPROPAGATE_LLAMA_CPP_DIR). Refuses before loading any weights."""
    from transformers import AutoConfig

    from backpropagate_core.config import load_settings
    from backpropagate_core.export import llama_cpp_convert
    from backpropagate_core.model import loader as model_mod
    from backpropagate_core.export.gguf_writer import gguf_arch

    where = src.path if src.kind == "merged" else model_mod.materialize(model_mod.resolve_model(src.base))
    try:
        gguf_arch(AutoConfig.from_pretrained(where).to_dict())
        return None
    except BackpropError as err:
        folder = load_settings().llama_cpp_dir
        if err.code != "EXPORT_ARCH_UNSUPPORTED" or folder is None:
            raise
        return llama_cpp_convert.checkout(folder)


class _Stages:
    """Forwards progress as ExportProgress events and times each stage."""

    def __init__(self, run_id: str, sink: Callable[[ev.Event], None] | None) -> None:
        self.run_id, self.sink = run_id, sink
        self.seconds: dict[str, float] = {}
        self._stage: str | None = None
        self._since = time.time()

    def __call__(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
        if self.sink is not None:
            self.sink(ev.ExportProgress(self.run_id, stage=stage, done=done, total=total, message=message))

    def close(self) -> dict[str, float]:
        now = time.time()
        if self._stage is not None:
            self.seconds[self._stage] = round(self.seconds.get(self._stage, 0.0) + now - self._since, 2)
        self._stage, self._since = None, now
        return self.seconds


def _build(src, fmt: str, quant: str | None, folder: Path, verify: bool, emit,
           llama_cpp: Path | None = None) -> dict:
    """Write the export into `folder`; returns what goes into its manifest."""
    emit("load", 0, 1, f"loading tokenizer{'' if fmt == 'adapter' else ' and model'}")
    tokenizer = src_mod.load_tokenizer(src)
    if fmt == "adapter":
        src_mod.copy_adapter(src, tokenizer, folder)
        return {"verification": _verify_adapter(src.path, folder, verify)}
    model = src_mod.load_trained(src, merge=False)
    ref = None
    if verify:
        emit("reference", 0, 1, "running the trained model on the verification prompts")
        ref = verify_mod.capture_reference(model, tokenizer)
    emit("merge", 0, 1, "merging the adapter into the base weights")
    model = src_mod.merge_in_place(model)
    if fmt == "merged":
        emit("write", 0, 1, f"saving merged weights ({quant})")
        src_mod.save_merged(model, tokenizer, folder, quant)
        built: dict = {"verification": {}}
    else:
        built = _write_gguf(src, model, tokenizer, quant, folder, emit, ref, llama_cpp)
    # The verifier loads the export next to the reference figures, not next to the model.
    del model
    gc.collect()
    if ref is None:
        if fmt == "gguf":  # cheap, and what makes a GGUF answer differently: always checked
            built["verification"] = verify_mod.verify_tokenization(folder / built["file"], tokenizer)
        return built
    if fmt == "merged":
        emit("verify", 0, 1, "reloading the merged weights and comparing")
        result = verify_mod.verify_merged(folder, ref, quant)
    else:
        emit("verify", 0, 1, "loading the GGUF in llama.cpp and comparing")
        result = verify_mod.verify_gguf(folder / built["file"], ref, tokenizer, quant,
                                        chat_must_match=built["tokenizer_model"] == "gpt2")
    built["verification"] = verify_mod.check(result, f"{fmt} {quant}")
    return built


def _write_gguf(src, model, tokenizer, quant: str, folder: Path, emit, ref=None,
                llama_cpp: Path | None = None) -> dict:
    """Write the GGUF (our writer, or llama.cpp's converter from `llama_cpp`), check it,
    quantize it, and add the Modelfile."""
    from backpropagate_core.export import llama_cpp_convert, ollama
    from backpropagate_core.export.quantize import quantize_gguf

    config = src_mod.hf_config(model)
    filename = f"{src.label}-{quant}.gguf"
    direct = quant in WRITTEN_DIRECTLY
    # k-quants start from 16-bit floats, as llama.cpp's own pipeline does.
    out_type = quant if direct else _intermediate(config)
    first = folder / (filename if direct else f"intermediate-{out_type}.gguf")
    if llama_cpp is None:
        written = _write_own(src, model, tokenizer, config, first, out_type, emit)
    else:
        written = llama_cpp_convert.write(model, tokenizer, config, first, out_type, src.label, llama_cpp,
                                          on_progress=lambda i, n, message: emit("write", i, n, message))
    intermediate = {}
    if not direct:
        if ref is not None:
            # A writer bug (a wrong permutation, rope base or norm) shows at the 16-bit bound;
            # after quantization the looser bound could hide it.
            emit("verify", 0, 1, f"checking the {out_type} file before quantizing")
            intermediate = verify_mod.check(
                verify_mod.verify_gguf(first, ref, tokenizer, out_type,
                                       chat_must_match=written["tokenizer_model"] == "gpt2"),
                f"gguf {out_type} (before quantizing to {quant})")
        emit("quantize", 0, 1, f"quantizing to {quant} with llama.cpp")
        notes = quantize_gguf(first, folder / filename, quant)
        first.unlink()
    else:
        notes = {}
    template = ollama.template_from_tokenizer(tokenizer)
    (folder / "Modelfile").write_text(ollama.modelfile(filename, template))
    return {"file": filename, "architecture": config["architectures"][0], **written,
            "quantize": notes, "ollama": template.to_dict(),
            "verification": {}, "verification_intermediate": intermediate}


def _write_own(src, model, tokenizer, config: dict, path: Path, out_type: str, emit) -> dict:
    """Our own writer: the vocabulary from the tokenizer, then the tensors one at a time."""
    from backpropagate_core.export.gguf_vocab import read_vocab
    from backpropagate_core.export.gguf_writer import gguf_arch, write_gguf

    with tempfile.TemporaryDirectory() as tmp:
        vocab = read_vocab(tokenizer, int(config["vocab_size"]), Path(tmp))
    state = model.state_dict()
    emit("write", 0, len(state), f"writing {path.name}")
    write_gguf(path, config, state, vocab, out_type, src.label,
               on_tensor=lambda i, n: emit("write", i, n, f"writing {path.name}"))
    return {"converter": "backpropagate", "gguf_architecture": gguf_arch(config),
            "tokenizer_model": vocab.model, "tokenizer_pre": vocab.pre}


def _intermediate(config: dict) -> str:
    return "bf16" if str(config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else "f16"


def _verify_adapter(original: Path, copy: Path, verify: bool) -> dict:
    """An adapter export is a copy: check every weight file arrived byte for byte."""
    if not verify:
        return {}
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    files = sorted(p.name for p in original.glob("*.safetensors"))
    same = all(digest(original / f) == digest(copy / f) for f in files)
    result = {"files": files, "identical": same, "passed": same and bool(files)}
    if not result["passed"]:
        raise BackpropError("EXPORT_VERIFY_FAILED", f"the adapter copy in {copy} differs from {original}")
    return result


def _replace(partial: Path, dest: Path) -> None:
    """Move the finished export into place; the old one is removed only after."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    partial.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _record(src, result: ExportResult) -> None:
    """Put the export on its run: summary["exports"][key] and an artifact row."""
    if not src.run_id:
        return
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    # A checkpoint's exports sit in exports/<checkpoint>/, keyed apart from the final adapter's.
    root = src.run_dir / "exports" if src.run_dir else None
    key = (result.folder.relative_to(root).as_posix() if root and root in result.folder.parents
           else result.folder.name)
    entry = {"path": str(result.path), "format": result.format, "quantization": result.quantization,
             "size_bytes": result.size_bytes, "seconds": result.seconds,
             "verification": result.verification, "created_at": time.time()}
    exports = dict(store.get(src.run_id).summary.get("exports") or {})
    exports[key] = entry
    store.merge_summary(src.run_id, exports=exports)
    store.add_artifact(src.run_id, f"export:{key}", result.path, **{k: v for k, v in entry.items()
                                                                    if k != "path"})
