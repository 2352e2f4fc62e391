"""Push an adapter, merged model or GGUF export to the Hugging Face Hub, private by default.

The model card is generated from the run: base model, the training settings that shape
the result, final loss and any export verification figures. Local paths (dataset files,
folders) are reduced to file names so a card never shows the machine's layout. All files
and the card go up in one commit.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backpropagate_core.errors import BackpropError

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PRIVATE_FILE = "backpropagate.json"
"""The adapter's local manifest (names local paths); never uploaded."""
_TRAINING_KEYS = ("steps", "epochs", "learning_rate", "batch_size", "batch_tokens", "grad_accum", "max_seq_len",
                  "precision", "seed")


@dataclass
class PushResult:
    repo_id: str
    url: str
    private: bool
    files: list[str]
    commit: str | None


def push_to_hub(source: str | Path, repo_id: str, private: bool = True, token: str | None = None,
                export: str | None = None, endpoint: str | None = None) -> PushResult:
    """Upload what `source` names (a run's adapter, one of its exports, or a folder).

    `export`: the export folder name of a run to push instead of its adapter
    (e.g. "gguf-q4_k_m"; see `backprop show-run`).
    """
    if not _REPO.match(repo_id or ""):
        raise BackpropError("INPUT_HUB_REPO_INVALID", f"{repo_id!r} is not a repository id like user/name")
    folder, run = _folder_to_push(source, export)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".partial"))
    card = model_card(repo_id, folder, run)
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError:
        raise BackpropError("DEP_MISSING", "pushing needs huggingface_hub",
                            hint="pip install 'backpropagate[export]'") from None
    api = HfApi(endpoint=endpoint, token=token)
    base_id = _hub_id(_base_of(folder, run))
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(),
                              path_or_fileobj=_public_copy(p, base_id))
           for p in files if p.name not in ("README.md", _PRIVATE_FILE)]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, ops, commit_message=f"Upload {folder.name} from backpropagate")
    except _transport_errors() as err:
        raise BackpropError("DEP_HUB_PUSH_FAILED", f"pushing to {repo_id}: {type(err).__name__}: {err}") from None
    return PushResult(repo_id, str(url), private, [op.path_in_repo for op in ops],
                      getattr(info, "oid", None))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """OSError covers the hub's HTTP errors; httpx-style clients add their own base class."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _folder_to_push(source: str | Path, export: str | None):
    from backpropagate_core.export.merged import resolve_source
    from backpropagate_core.runs.store import RunStore

    path = Path(str(source)).expanduser()
    if path.is_dir() and (path / "export.json").is_file():
        src = None  # an export folder: push it as it is
        folder = path.resolve()
        run = _run_owning(folder)
    else:
        src = resolve_source(source)
        folder = src.path
        run = RunStore().get(src.run_id) if src.run_id else None
    if export:
        if run is None:
            raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", "--export needs a run as the source")
        folder = run.run_dir / "exports" / export
        if not (folder / "export.json").is_file():
            found = sorted(p.name for p in (run.run_dir / "exports").glob("*") if (p / "export.json").is_file())
            raise BackpropError("INPUT_EXPORT_SOURCE_INVALID",
                                f"run {run.id[:8]} has no export {export!r}; it has: {', '.join(found) or 'none'}")
    return folder, run


def _run_owning(folder: Path):
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    runs_dir = store.runs_dir.resolve()
    if runs_dir not in folder.parents:
        return None
    try:
        return store.get(folder.relative_to(runs_dir).parts[0])
    except BackpropError:
        return None


def _public_copy(path: Path, base_id: str | None) -> str | bytes:
    """The file to upload: as it is, or with local paths replaced for the two that name them.

    adapter_config.json points peft at its base model; the hub id (when we know it) makes
    the uploaded adapter loadable anywhere, and a local folder would only leak a path.
    """
    if path.name not in ("adapter_config.json", "export.json"):
        return str(path)
    data = _read_json(path)
    if path.name == "adapter_config.json":
        base = data.get("base_model_name_or_path")
        data["base_model_name_or_path"] = base_id or (Path(str(base)).name if base else None)
    else:
        data.pop("source", None)
        data["base_model"] = _shown(data.get("base_model"), base_id)
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def _base_of(folder: Path, run: Any | None) -> str | None:
    if run is not None and run.config.get("model"):
        return run.config["model"]
    return (_read_json(folder / "export.json").get("base_model")
            or _read_json(folder / "adapter_config.json").get("base_model_name_or_path"))


def model_card(repo_id: str, folder: Path, run: Any | None) -> str:
    """README.md with YAML metadata, written from the run's config and results."""
    manifest = _read_json(folder / "export.json")
    adapter = _read_json(folder / "adapter_config.json")
    config = dict(run.config) if run is not None else {}
    base = _base_of(folder, run)
    base_id = _hub_id(base)
    fmt = manifest.get("format") or ("adapter" if adapter else "merged")
    library = {"adapter": "peft", "gguf": "gguf"}.get(fmt, "transformers")
    meta = ["---", f"library_name: {library}", "tags:", "- backpropagate", "- lora"]
    if fmt == "gguf":
        meta.append("- gguf")
    if base_id:
        meta.append(f"base_model: {base_id}")
    meta.append("---")
    name = repo_id.split("/", 1)[1]
    lines = [*meta, "", f"# {name}", "",
             f"A LoRA fine-tune of {_shown(base, base_id)} made with backpropagate, "
             f"published as {_describe(fmt, manifest)}.", ""]
    lines += _training_table(config, run)
    lines += _verification_lines(manifest)
    lines += _usage(fmt, repo_id, manifest)
    return "\n".join(lines) + "\n"


def _describe(fmt: str, manifest: dict) -> str:
    if fmt == "gguf":
        return f"a GGUF file ({manifest.get('quantization')}) for llama.cpp and Ollama"
    if fmt == "merged":
        return f"merged full weights ({manifest.get('quantization') or 'safetensors'})"
    return "a peft LoRA adapter"


def _training_table(config: dict, run: Any | None) -> list[str]:
    if run is None:
        return []
    training = config.get("training") or {}
    lora = config.get("lora") or {}
    rows = [("base model", _shown(config.get("model"), _hub_id(config.get("model")))),
            ("dataset", Path(str(config["data"])).name if config.get("data") else None),
            ("LoRA r / alpha", f"{lora.get('r')} / {lora.get('alpha')}" if lora else None)]
    rows += [(key.replace("_", " "), training.get(key)) for key in _TRAINING_KEYS]
    rows += [("steps trained", run.step or None), ("final loss", _fmt(run.final_loss)),
             ("training time", f"{run.duration_s:.0f} s" if run.duration_s else None)]
    out = ["## Training", "", "| setting | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows if v not in (None, "")]
    return out + [""]


def _verification_lines(manifest: dict) -> list[str]:
    v = manifest.get("verification") or {}
    if "max_logit_diff" not in v:
        return []
    out = ["## Verification", "",
           f"Checked against the trained model before publishing: max next-token logit difference "
           f"{v['max_logit_diff']:.4g} (bound {v.get('bound', 0):.4g}), top-1 agreement "
           f"{v.get('top1_agreement', 0):.0%}, mean KL divergence {v.get('kl_divergence')}."]
    if "tokenization_match" in v:
        out.append(f"llama.cpp tokenization matches the training tokenizer: "
                   f"{'yes' if v['tokenization_match'] else 'no'}.")
    return out + [""]


def _usage(fmt: str, repo_id: str, manifest: dict) -> list[str]:
    if fmt == "gguf":
        code = [f"ollama run hf.co/{repo_id}", "# or: ollama create NAME -f Modelfile (in this repo)"]
        lang = "sh"
    elif fmt == "adapter":
        code = ["from peft import AutoPeftModelForCausalLM",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")']
        lang = "python"
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
        lang = "python"
    return ["## Use", "", f"```{lang}", *code, "```"]


def _hub_id(base: str | None) -> str | None:
    from backpropagate_core.model import presets

    if not base:
        return None
    preset = presets.get(base)
    if preset is not None:
        return preset.hub_id
    return base if _REPO.match(base) and not Path(base).expanduser().exists() else None


def _shown(base: str | None, hub_id: str | None) -> str:
    """The base model as a card may show it: a hub id, else only a folder's name."""
    if hub_id:
        return hub_id
    return Path(str(base)).name if base else "a base model"


def _fmt(value: float | None) -> str | None:
    return f"{value:.4f}" if isinstance(value, (int, float)) else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
