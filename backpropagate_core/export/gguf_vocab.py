"""The tokenizer half of a GGUF file: vocabulary, token types, merges, special tokens.

Two tokenizer families reach llama.cpp from our presets:
- byte-level BPE (SmolLM2, Qwen2, Llama 3, our test tokenizers): GGUF tokenizer model
  "gpt2", the merges, and a pre-tokenizer *name*, because llama.cpp does not read the
  split regex from the file; it has a fixed regex per name. We recognise the name from
  the tokenizer.json pre-tokenizer and refuse what we do not recognise, since a wrong
  name silently tokenizes numbers or whitespace differently.
- sentencepiece-style BPE with byte fallback (Llama 2, Mistral): GGUF model "llama",
  with scores that order the merges.

Token types matter: llama.cpp only parses `<|im_start|>` in text as one token when the
token is CONTROL (special) or USER_DEFINED (added, not special).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backpropagate_core.errors import BackpropError

# Split regexes as they appear in tokenizer.json files, keyed by llama.cpp's name.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# OpenAI's o200k_base (GPT-4o, Phi-4-mini). llama.cpp runs it with "a letter that is not
# a-z" for the upper-case classes and "not A-Z" for the lower-case ones, so words mixing
# non-ASCII capitals with ASCII letters ("ÉTAT") can split differently; the tokenizer
# check after writing catches that on the texts it tries.
_O200K_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2", _O200K_SPLIT: "gpt-4o"}

KNOWN_PRE_TOKENIZERS = ("gpt-2 (ByteLevel)", "smollm (Digits + ByteLevel)",
                        "llama-bpe (Llama 3 split)", "qwen2 (Qwen2 split)", "gpt-4o (o200k_base split)")

# TokenType values in GGUF (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GGUFVocab:
    model: str
    """GGUF tokenizer model: "gpt2" (byte-level BPE) or "llama" (sentencepiece BPE)."""
    pre: str | None
    """llama.cpp pre-tokenizer name (byte-level BPE only)."""
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    """bos/eos/unk/pad/... → token id."""
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    rstrip: set[int] = field(default_factory=set)
    """Added tokens that swallow the whitespace after them (tokenizer.json `rstrip`)."""


def read_vocab(hf_tokenizer: Any, vocab_size: int, tokenizer_dir: Path) -> GGUFVocab:
    """Build the GGUF vocabulary from the HF tokenizer the run trained with.

    The tokenizer is saved to `tokenizer_dir` first and read back: transformers may
    replace parts of a tokenizer.json at load time (Qwen2's class installs its own split
    regex), so only the live object says how text is really split. `vocab_size` is the
    model's embedding rows; the token list is padded to it, because llama.cpp needs one
    token per row.
    """
    import gguf

    tokenizer_dir = Path(tokenizer_dir)
    hf_tokenizer.save_pretrained(tokenizer_dir)
    spec_path = tokenizer_dir / "tokenizer.json"
    if not spec_path.is_file():
        raise BackpropError("EXPORT_ARCH_UNSUPPORTED",
                            "the tokenizer has no tokenizer.json (a fast tokenizer is needed for GGUF)")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise BackpropError("EXPORT_ARCH_UNSUPPORTED",
                            f"tokenizer type {model.get('type')!r} cannot be written to GGUF; "
                            "supported: byte-level BPE and sentencepiece-style BPE")
    byte_fallback = bool(model.get("byte_fallback"))
    tokens, types, added = _token_table(spec, vocab_size)
    n = len(tokens)

    special = gguf.SpecialVocab(tokenizer_dir, load_merges=not byte_fallback, n_vocab=n)
    ids = hf_tokenizer("Hello world", add_special_tokens=True)["input_ids"]
    bos, eos = hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id
    out = GGUFVocab(
        model="llama" if byte_fallback else "gpt2",
        pre=None if byte_fallback else pre_tokenizer_name(spec),
        tokens=tokens, types=types, merges=list(special.merges),
        special_ids={k: int(v) for k, v in special.special_token_ids.items()},
        add_bos=bos is not None and len(ids) > 0 and ids[0] == bos,
        add_eos=eos is not None and len(ids) > 1 and ids[-1] == eos,
        chat_template=hf_tokenizer.chat_template if isinstance(hf_tokenizer.chat_template, str)
        else special.chat_template,
        rstrip=_rstripped(added),
    )
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(hf_tokenizer, f"{name}_token_id", None)
        if tid is not None:
            out.special_ids[name] = int(tid)
    if byte_fallback:
        _sentencepiece_extras(out, tokenizer_dir, spec, hf_tokenizer)
    elif not out.merges:
        raise BackpropError("EXPORT_ARCH_UNSUPPORTED", "the BPE tokenizer has no merges")
    return out


def _token_table(spec: dict, vocab_size: int) -> tuple[list[str], list[int], dict[int, dict]]:
    """Token texts and GGUF types by id, padded to `vocab_size`, from a BPE tokenizer.json;
    and its added tokens by id."""
    model = spec["model"]
    byte_fallback = bool(model.get("byte_fallback"))
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for tid, tok in added.items():
        vocab.setdefault(tok["content"], tid)
    n = max(vocab_size, max(vocab.values(), default=-1) + 1)
    by_id: dict[int, str] = {tid: text for text, tid in vocab.items()}
    tokens, types = [], []
    for tid in range(n):
        text = by_id.get(tid)
        if text is None:
            tokens.append(f"[PAD{tid}]")
            types.append(UNUSED)
        elif tid in added:
            tokens.append(text)
            types.append(CONTROL if added[tid].get("special") else USER_DEFINED)
        elif byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            tokens.append(text)
            types.append(BYTE)
        else:
            tokens.append(text)
            types.append(NORMAL)
    return tokens, types, added


def _rstripped(added: dict[int, dict]) -> set[int]:
    return {tid for tid, tok in added.items() if tok.get("rstrip")}


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json describes."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLIT_NAMES:
            return _SPLIT_NAMES[pattern]
    raise BackpropError(
        "EXPORT_ARCH_UNSUPPORTED",
        f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp "
        f"reproduces; supported: {', '.join(KNOWN_PRE_TOKENIZERS)}")


def _sentencepiece_extras(out: GGUFVocab, tokenizer_dir: Path, spec: dict, hf_tokenizer: Any) -> None:
    """Scores and the space-prefix flag for sentencepiece-style vocabularies."""
    model_file = tokenizer_dir / "tokenizer.model"
    if model_file.is_file():
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor()
        sp.LoadFromFile(str(model_file))
        scores = [sp.GetScore(i) if i < sp.vocab_size() else -1000.0 for i in range(len(out.tokens))]
    else:
        # Sentencepiece vocabularies converted to tokenizer.json are ordered by score, so
        # the id is an equivalent ranking for llama.cpp's merge order.
        scores = [-float(i) for i in range(len(out.tokens))]
    unk = out.special_ids.get("unk")
    if unk is not None and out.types[unk] == NORMAL:
        out.types[unk] = UNKNOWN
    out.scores = [0.0 if t in (CONTROL, BYTE, UNKNOWN) else s for t, s in zip(out.types, scores)]
    pieces = hf_tokenizer.tokenize("Hello")
    out.add_space_prefix = bool(pieces) and pieces[0].startswith("\u2581")
    out.merges = []


_PHI3_NAME = re.compile(r"phi-?3", re.IGNORECASE)
_PHI3_NOT_STRIPPED = ("<unk>", "<s>", "<|endoftext|>")


def llama_cpp_name(name: str, vocab: GGUFVocab) -> str:
    """`general.name` for the file, adjusted to what llama.cpp infers from it.

    llama.cpp reads no strip flags from a GGUF; when the name contains "phi-3" or "phi3" it
    makes every special token swallow the whitespace after it except <unk>, <s> and
    <|endoftext|>, as Phi-3's tokenizer does, and fails to load a vocabulary that lacks
    one of those tokens or </s>. So the name says "phi3" exactly when that rule reproduces
    this tokenizer, and never otherwise (a run called "phi3-test" on another tokenizer).
    """
    if _phi3_strip_rule_holds(vocab):
        return name if _PHI3_NAME.search(name) else f"{name}-phi3"
    return _PHI3_NAME.sub("phi_3", name)


def converter_name(name: str, tokenizer_dir: Path) -> str:
    """`llama_cpp_name` for a file llama.cpp's converter writes from the tokenizer saved in
    `tokenizer_dir`, which never becomes a GGUFVocab of ours.

    The rule needs only the token texts, which tokens are added and which of those strip
    the whitespace after them: a BPE tokenizer.json holds all three. Without one the rule
    cannot be shown to hold, so the name only keeps clear of "phi3".
    """
    spec_path = Path(tokenizer_dir) / "tokenizer.json"
    spec = json.loads(spec_path.read_text(encoding="utf-8")) if spec_path.is_file() else {}
    vocab = GGUFVocab(model="", pre=None, tokens=[], types=[])
    if (spec.get("model") or {}).get("type") == "BPE":
        vocab.tokens, vocab.types, added = _token_table(spec, 0)
        vocab.rstrip = _rstripped(added)
    return llama_cpp_name(name, vocab)


def _phi3_strip_rule_holds(vocab: GGUFVocab) -> bool:
    ids = {text: tid for tid, text in enumerate(vocab.tokens)}
    if not all(t in ids for t in (*_PHI3_NOT_STRIPPED, "</s>")):
        return False
    special = {tid for tid, kind in enumerate(vocab.types) if kind in (CONTROL, USER_DEFINED, UNKNOWN)}
    stripped = (special | {ids["</s>"]}) - {ids[t] for t in _PHI3_NOT_STRIPPED}
    return bool(vocab.rstrip) and vocab.rstrip == stripped


def add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Write the vocabulary keys into a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for name, tid in vocab.special_ids.items():
        adder = getattr(writer, f"add_{name}_token_id", None)
        if adder is not None:
            adder(tid)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
