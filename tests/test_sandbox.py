import json
import os
from pathlib import Path

import pytest

from backpropagate_core.serve import sandbox
from backpropagate_core.errors import BackpropError


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(BackpropError) as info:
        fn(*args, **kwargs)
    return info.value.code


# ---- output folder -----------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/", "/etc", "/etc/backprop", "/var/lib/x", "/usr/local/share/x", "/bin", "/boot",
    "/proc/self", "/sys/kernel", "/dev/shm/x", "/ETC/x", "/etc/../etc/x",
    "~", "~/", "~/.ssh", "~/.ssh/keys", "~/.aws", "~/.config/gcloud", "~/.kube/x", "~/.gnupg",
    "C:\\Windows\\System32", "c:/windows/system32/drivers", "C:\\", "D:", "C:\\Program Files\\x",
    "", "   ",
])
def test_output_dir_refuses_system_and_credential_locations(path):
    assert _code(sandbox.resolve_output_dir, path) == "UI_OUTPUT_DIR_FORBIDDEN"


def test_output_dir_refuses_shared_temp_root_and_files(tmp_path):
    import tempfile
    assert _code(sandbox.resolve_output_dir, tempfile.gettempdir()) == "UI_OUTPUT_DIR_FORBIDDEN"
    (tmp_path / "f.txt").write_text("x")
    assert _code(sandbox.resolve_output_dir, tmp_path / "f.txt") == "UI_OUTPUT_DIR_FORBIDDEN"


def test_output_dir_allows_own_folders(tmp_path):
    # The default lives under the home folder; CI runs as root with HOME=/root.
    default = sandbox.resolve_output_dir("~/.backpropagate/ui-outputs")
    assert default == (Path.home() / ".backpropagate" / "ui-outputs").resolve()
    made = sandbox.resolve_output_dir(tmp_path / "outs", create=True)
    assert made.is_dir() and made == (tmp_path / "outs").resolve()


def test_output_dir_follows_symlinks(tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    assert _code(sandbox.resolve_output_dir, link) == "UI_OUTPUT_DIR_FORBIDDEN"
    ssh = Path.home() / ".ssh"
    link2 = tmp_path / "keys"
    link2.symlink_to(ssh)
    assert _code(sandbox.resolve_output_dir, link2 / "sub") == "UI_OUTPUT_DIR_FORBIDDEN"


def test_output_dir_error_exits_with_code_1():
    with pytest.raises(BackpropError) as info:
        sandbox.resolve_output_dir("/etc")
    assert info.value.exit_code == 1 and "/etc" in info.value.message


# ---- paths inside a base -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "..", "a/../../../etc"])
def test_inside_refuses_escapes(tmp_path, name):
    assert _code(sandbox.inside, tmp_path, name) == "INPUT_PATH_FORBIDDEN"


def test_inside_refuses_symlink_escape_and_nul(tmp_path):
    (tmp_path / "out").symlink_to("/etc")
    assert _code(sandbox.inside, tmp_path, "out/passwd") == "INPUT_PATH_FORBIDDEN"
    assert _code(sandbox.inside, tmp_path, "a\x00b") == "INPUT_PATH_FORBIDDEN"


def test_inside_accepts_paths_that_stay(tmp_path):
    assert sandbox.inside(tmp_path, "a/b/../c.jsonl") == tmp_path.resolve() / "a" / "c.jsonl"
    assert sandbox.inside(tmp_path, tmp_path / "x") == tmp_path.resolve() / "x"


# ---- file names --------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("data.jsonl", "data.jsonl"),
    ("../../etc/passwd.jsonl", "passwd.jsonl"),
    ("..%2F..%2Fetc%2Fcron.d%2Fx.jsonl", "x.jsonl"),
    ("%252e%252e%252fx.csv", "x.csv"),
    ("C:\\Users\\me\\my data (1).CSV", "my_data_1.csv"),
    (".hidden.json", "hidden.json"),
    ("con.jsonl", "_con.jsonl"),
    ("naïve ﬁle.parquet", "na_ve_file.parquet"),
    ("a" * 300 + ".jsonl", "a" * 114 + ".jsonl"),
])
def test_sanitize_filename(raw, clean):
    assert sandbox.sanitize_filename(raw) == clean


@pytest.mark.parametrize("raw", ["", "..", "../", ".jsonl", "x.exe", "x.jsonl.sh", "x.pkl", "noext"])
def test_sanitize_filename_refuses(raw):
    assert _code(sandbox.sanitize_filename, raw) == "INPUT_UPLOAD_INVALID"


def test_write_bytes_does_not_follow_symlinks(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text("keep")
    base = tmp_path / "base"
    base.mkdir()
    (base / "x.jsonl").symlink_to(outside)
    assert _code(sandbox.write_bytes, base, "x.jsonl", b"evil") == "INPUT_PATH_FORBIDDEN"
    assert outside.read_text() == "keep"
    written = sandbox.write_bytes(base, "ok.jsonl", b"{}\n")
    assert written.read_bytes() == b"{}\n" and oct(written.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in base.iterdir() if "partial" in p.name] == []


# ---- content sniffing --------------------------------------------------------------------

def test_sniff_accepts_real_content(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    assert sandbox.sniff_upload(("\n".join(json.dumps(r) for r in rows) + "\n").encode(), ".jsonl") == "jsonl"
    assert sandbox.sniff_upload("\ufeff".encode() + json.dumps(rows).encode(), "json") == "json"
    assert sandbox.sniff_upload(b"instruction,output\nsay hi,hi\n", ".csv") == "csv"
    import pandas as pd
    parquet = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"]}).to_parquet(parquet)
    assert sandbox.sniff_upload(parquet, ".parquet") == "parquet"
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + "x" * (2 << 20) + "\n")
    assert sandbox.sniff_upload(path, "jsonl") == "jsonl"


@pytest.mark.parametrize("content, ext", [
    (b"PK\x03\x04rest-of-zip", ".jsonl"),
    (b"\x80\x04\x95pickle", ".json"),
    (b"\x7fELF\x02\x01", ".csv"),
    (b"#!/bin/sh\nrm -rf /\n", ".csv"),
    (b"<html><script>alert(1)</script></html>", ".jsonl"),
    (b"[1, 2, 3]\n", ".jsonl"),
    (b"{\"a\": 1}\x00\x00", ".jsonl"),
    (b"\xff\xfe\xfd not utf8", ".csv"),
    (b"just one line", ".csv"),
    (b"hello", ".json"),
    (b"{\"a\": ", ".json"),
    (b"PAR1 but no footer", ".parquet"),
    (b"{\"a\": 1}\n", ".parquet"),
])
def test_sniff_rejects_content_that_lies(content, ext):
    assert _code(sandbox.sniff_upload, content, ext) == "UI_UPLOAD_REJECTED"


def test_sniff_rejects_empty_and_unknown_extension():
    assert _code(sandbox.sniff_upload, b"  \n", ".jsonl") == "INPUT_UPLOAD_INVALID"
    assert _code(sandbox.sniff_upload, b"{}", ".pkl") == "INPUT_UPLOAD_INVALID"


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_created_output_dir_is_private(tmp_path):
    made = sandbox.resolve_output_dir(tmp_path / "private", create=True)
    assert made.stat().st_mode & 0o077 == 0


# ---- what the UI may load as a dataset ------------------------------------------------------

@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The app's uploads folder (under its output dir) with a dataset, a folder and links."""
    monkeypatch.setenv("BACKPROPAGATE_UI__OUTPUT_DIR", str(tmp_path / "outputs"))
    from backpropagate_app import facade

    uploads = facade.uploads_dir()
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "data.jsonl").write_text('{"text": "TOPSECRET"}\n')
    (uploads / "mine.jsonl").write_text('{"text": "hello"}\n')
    (uploads / "folder").mkdir()
    (uploads / "folder" / "x.jsonl").write_text('{"text": "in a folder"}\n')
    (uploads / "dataset_dict.json").write_text(json.dumps({"splits": [str(secret)]}))
    (uploads / "link.jsonl").symlink_to(secret / "data.jsonl")
    (uploads / "linked-folder").symlink_to(secret)
    return facade, uploads


def test_the_ui_loads_only_regular_files_directly_in_the_workspace(workspace):
    facade, uploads = workspace
    assert facade.workspace_path("mine.jsonl") == str(uploads / "mine.jsonl")
    assert facade.workspace_path("formats/openai.jsonl").endswith("examples/formats/openai.jsonl")
    for path in [".", str(uploads), "folder", "folder/x.jsonl", "dataset_dict.json", "link.jsonl",
                 "linked-folder", "linked-folder/data.jsonl", "..", "missing.jsonl"]:
        with pytest.raises(BackpropError) as err:
            facade.workspace_path(path)
        assert err.value.code == "INPUT_PATH_FORBIDDEN", path


@pytest.mark.parametrize("name", ["state.json", "dataset_info.json", "Dataset_Dict.json"])
def test_datasets_metadata_names_are_refused_as_uploads(name):
    with pytest.raises(BackpropError) as err:
        sandbox.sanitize_filename(name)
    assert err.value.code == "INPUT_UPLOAD_INVALID"


def test_folder_loading_never_follows_a_link(tmp_path):
    from backpropagate_core.data.dataset import load

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "TOPSECRET"}\n')
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "mine"}\n')
    (folder / "train-link.jsonl").symlink_to(outside / "secret.jsonl")
    (folder / "train-dir").symlink_to(outside)
    loaded = load(folder)
    assert [ex.text for ex in loaded.examples] == ["mine"]


def test_uploads_stream_to_disk_within_the_limit_and_leave_nothing_when_refused(tmp_path):
    base = tmp_path / "uploads"
    base.mkdir()
    good = sandbox.StreamedFile(base, "data.jsonl", limit=64)
    for chunk in (b'{"text": "a"}\n', b'{"text": "b"}\n'):
        good.write(chunk)
    assert good.finish() == base.resolve() / "data.jsonl" and (base / "data.jsonl").read_bytes().count(b"\n") == 2
    big = sandbox.StreamedFile(base, "big.jsonl", limit=64)
    with pytest.raises(BackpropError) as err:
        for _ in range(10):
            big.write(b'{"text": "0123456789"}\n')
    assert err.value.code == "INPUT_UPLOAD_TOO_LARGE"
    liar = sandbox.StreamedFile(base, "liar.jsonl", limit=64)
    liar.write(b"PK\x03\x04 a zip file")
    with pytest.raises(BackpropError):
        liar.finish()
    assert sorted(p.name for p in base.iterdir()) == ["data.jsonl"]  # no partials, no refused files
