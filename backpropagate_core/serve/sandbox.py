"""Where the web UI may write, and what it accepts as an upload.

Everything the UI writes lives under one output folder (`BACKPROPAGATE_UI__OUTPUT_DIR`).
That folder must not be a system or credential location, and every path built under it
is resolved (symlinks included) and must stay inside. Uploaded files are named by
`sanitize_filename` and checked by content with `sniff_upload`, not trusted by extension.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from urllib.parse import unquote

from backpropagate_core.errors import BackpropError

DATASET_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")

# System folders: writing there could break or take over the machine.
_POSIX_SYSTEM = ("/etc", "/var", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
                 "/libx32", "/boot", "/proc", "/sys", "/dev", "/run", "/snap",
                 "/nix", "/System", "/Library", "/Applications", "/private/etc",
                 "/private/var", "/cores")
_WINDOWS_SYSTEM = ("C:/Windows", "C:/Program Files", "C:/Program Files (x86)",
                   "C:/ProgramData", "C:/Recovery", "C:/$Recycle.Bin", "C:/System Volume Information")
# Under the home folder: credentials, shell and desktop start-up, per-user programs.
# The home folder itself is refused too; its own subfolders (~/.backpropagate) are fine.
_HOME_PRIVATE = (".ssh", ".aws", ".azure", ".config", ".kube", ".gnupg", ".docker",
                 ".local/bin", ".local/share/keyrings", ".password-store", ".pki",
                 ".mozilla", ".terraform.d", ".git-credentials", ".netrc", ".bashrc",
                 ".profile", ".zshrc", "Library", "AppData")
_WINDOWS_DRIVE = re.compile(r"^(?:[A-Za-z]:|\\\\|//)")


def _forbidden(reason: str, raw) -> BackpropError:
    return BackpropError("UI_OUTPUT_DIR_FORBIDDEN", f"output folder {str(raw)!r} {reason}")


def _within(path: PurePath, root: str | PurePath) -> bool:
    """`path` is `root` or below it; compared case-blind, as macOS and Windows do."""
    p = path.as_posix().casefold().rstrip("/")
    r = PurePosixPath(str(root).replace("\\", "/")).as_posix().casefold().rstrip("/")
    return p == r or p.startswith(r + "/")


def _windows_check(raw: str) -> None:
    """Refuse Windows drive roots and system folders (checked on any OS)."""
    path = PureWindowsPath(raw)
    if path.parent == path:
        raise _forbidden("is a drive root", raw)
    rest = PureWindowsPath("C:" + str(path)[len(path.drive):]) if path.drive else path
    for system in _WINDOWS_SYSTEM:
        if _within(rest, system):
            raise _forbidden(f"is inside the system folder {system}", raw)


def resolve_output_dir(path: str | os.PathLike, *, create: bool = False) -> Path:
    """The absolute, symlink-free output folder, or UI_OUTPUT_DIR_FORBIDDEN.

    Refuses the filesystem root, system folders (/etc, /var, /usr, C:\\Windows, ...),
    the home folder itself and its credential or start-up folders (~/.ssh, ~/.aws,
    ~/.config, ...), the shared temp folder itself, and anything that is a file.
    Subfolders of the temp folder and of the home folder are allowed even when those
    live under a system folder (macOS keeps temp under /var; CI homes may be /var/lib/x).
    """
    raw = str(os.fspath(path))
    if not raw.strip() or "\x00" in raw:
        raise _forbidden("is empty or contains a NUL byte", raw)
    if _WINDOWS_DRIVE.match(raw):
        _windows_check(raw)
        if os.name != "nt":
            raise _forbidden("is a Windows path; this machine uses POSIX paths", raw)
    literal = Path(os.path.abspath(Path(raw).expanduser()))
    resolved = literal.resolve()
    if os.name == "nt":
        _windows_check(str(resolved))
    if resolved.parent == resolved:
        raise _forbidden("is the filesystem root", raw)

    temp = Path(tempfile.gettempdir()).resolve()
    home = Path.home().resolve()
    if resolved == temp:
        raise _forbidden("is the shared temp folder itself; use a subfolder", raw)
    if resolved == home:
        raise _forbidden("is your home folder itself; use a subfolder such as ~/.backpropagate/ui-outputs", raw)
    for private in _HOME_PRIVATE:
        if _within(resolved, home / private) or _within(literal, Path.home() / private):
            raise _forbidden(f"is inside ~/{private}, which holds credentials or start-up files", raw)
    # Kernel pseudo-filesystems are refused as written, whatever they point at
    # (/proc/self/cwd resolves to wherever the server happens to run).
    for pseudo in ("/proc", "/sys", "/dev"):
        if _within(literal, Path(pseudo)):
            raise _forbidden(f"is inside the system folder {pseudo}", raw)
    in_home = home.parent != home and _within(resolved, home)
    if not in_home and not _within(resolved, temp):
        for system in _POSIX_SYSTEM:
            if _within(resolved, system) or _within(literal, system):
                raise _forbidden(f"is inside the system folder {system}", raw)
    if resolved.exists() and not resolved.is_dir():
        raise _forbidden("is a file, not a folder", raw)
    if create:
        resolved.mkdir(parents=True, exist_ok=True, mode=0o700)
    return resolved


def inside(base: str | os.PathLike, candidate: str | os.PathLike) -> Path:
    """`candidate` (relative to `base`, or absolute) resolved; INPUT_PATH_FORBIDDEN if it leaves `base`.

    Symlinks are followed before the check, so a link inside `base` that points out is refused.
    """
    text = os.fspath(candidate)
    if "\x00" in str(text):
        raise BackpropError("INPUT_PATH_FORBIDDEN", "the path contains a NUL byte")
    root = Path(base).expanduser().resolve()
    target = (root / Path(text).expanduser()).resolve()
    if not (target == root or root in target.parents):
        raise BackpropError("INPUT_PATH_FORBIDDEN", f"{str(text)!r} resolves outside {root}")
    return target


def dataset_file(base: str | os.PathLike, candidate: str | os.PathLike, *, direct: bool) -> Path:
    """A regular, non-symlink dataset file inside `base` (directly in it when `direct`);
    INPUT_PATH_FORBIDDEN otherwise: outside, missing, a folder, a link (or under one) or a
    `datasets` metadata file."""
    import stat

    target = inside(base, candidate)
    root = Path(base).expanduser().resolve()
    written = (root / Path(os.fspath(candidate)).expanduser())
    try:
        info = os.lstat(written)
    except OSError:
        info = None
    links = [p for p in (written, *written.parents) if p != root and root in p.parents and p.is_symlink()]
    if info is None or not stat.S_ISREG(info.st_mode) or links or target.name in DATASET_METADATA_NAMES \
            or (direct and target.parent != root):
        raise BackpropError("INPUT_PATH_FORBIDDEN",
                            f"not a dataset file: {os.fspath(candidate)!r} (the UI takes regular files "
                            f"{'directly ' if direct else ''}inside {root}, no folders or links)")
    return target


DATASET_METADATA_NAMES = frozenset({"dataset_info.json", "state.json", "dataset_dict.json"})
"""Files that make a folder a saved `datasets` dataset (and can name files anywhere)."""
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}


def sanitize_filename(name: str, allowed: tuple[str, ...] | None = DATASET_EXTENSIONS,
                      max_len: int = 120) -> str:
    """A plain file name: no folders, no control or odd characters, an allowed extension.

    URL-encoded separators are decoded first so `..%2f..%2fx.jsonl` becomes `x.jsonl`.
    Raises INPUT_UPLOAD_INVALID when nothing usable is left or the extension is not allowed.
    """
    text = name or ""
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    text = unicodedata.normalize("NFKC", text)
    base = re.split(r"[\\/]", text)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._- ")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    ext = ext.lower()
    stem = stem.strip("._- ")[: max(1, max_len - len(ext) - 1)]
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    clean = f"{stem}.{ext}" if ext else stem
    if clean.lower() in DATASET_METADATA_NAMES:
        raise BackpropError("INPUT_UPLOAD_INVALID", f"{name!r} is a `datasets` metadata file name",
                            hint="Rename the file: an uploaded state.json could make the uploads folder "
                                 "load files from anywhere.")
    if not stem or (allowed is not None and f".{ext}" not in allowed):
        kinds = ", ".join(allowed or ())
        raise BackpropError("INPUT_UPLOAD_INVALID",
                            f"{name!r} is not an accepted file name" + (f"; allowed: {kinds}" if kinds else ""))
    return clean


def write_bytes(base: str | os.PathLike, name: str, data: bytes) -> Path:
    """Write `data` to `base/name` without following symlinks; returns the final path.

    The bytes go to a fresh `.partial` file (O_EXCL | O_NOFOLLOW) that is then renamed
    over the target, so a symlink planted at either name is never written through.
    """
    target = inside(base, name)
    if target.parent != Path(base).expanduser().resolve():
        raise BackpropError("INPUT_PATH_FORBIDDEN", f"{name!r} is not a plain file name")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(partial, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


class StreamedFile:
    """A file written chunk by chunk to a fresh `.partial` (O_EXCL | O_NOFOLLOW) in `base`,
    never more than `limit` bytes, checked by content and renamed into place only when
    complete: an upload never sits in memory whole, and a failed one leaves nothing."""

    def __init__(self, base: str | os.PathLike, name: str, limit: int) -> None:
        self.target = inside(base, name)
        if self.target.parent != Path(base).expanduser().resolve():
            raise BackpropError("INPUT_PATH_FORBIDDEN", f"{name!r} is not a plain file name")
        self.limit, self.size = limit, 0
        self.partial = self.target.with_name(f".{self.target.name}.{os.getpid()}.partial")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        self._out = os.fdopen(os.open(self.partial, flags, 0o600), "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise BackpropError("INPUT_UPLOAD_TOO_LARGE", f"{self.target.name} is over the limit of "
                                f"{self.limit / 2**20:.0f} MB")
        self._out.write(chunk)

    def finish(self) -> Path:
        """Check the content (`sniff_upload`) and move the file into place."""
        self._out.close()
        try:
            if self.size == 0:
                raise BackpropError("INPUT_UPLOAD_INVALID", f"{self.target.name} is empty")
            sniff_upload(self.partial, self.target.suffix)
            os.replace(self.partial, self.target)
        except BaseException:
            self.abort()
            raise
        return self.target

    def abort(self) -> None:
        if not self._out.closed:
            self._out.close()
        self.partial.unlink(missing_ok=True)


# ---- content sniffing --------------------------------------------------------------------

_SAMPLE = 1 << 20
_BINARY_MAGIC = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "gzip data", b"\x7fELF": "a program",
                 b"MZ": "a Windows program", b"\x80\x02": "a Python pickle", b"\x80\x03": "a Python pickle",
                 b"\x80\x04": "a Python pickle", b"\x80\x05": "a Python pickle", b"%PDF": "a PDF",
                 b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"#!": "a script"}


def _read_sample(source: str | os.PathLike | bytes) -> tuple[bytes, bytes, int]:
    """The first MiB, the last 8 bytes and the size of a file or a bytes object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return data[:_SAMPLE], data[-8:], len(data)
    with open(source, "rb") as fh:
        head = fh.read(_SAMPLE)
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 8))
        return head, fh.read(8), size


def _reject(what: str) -> BackpropError:
    return BackpropError("UI_UPLOAD_REJECTED", what)


def _text(head: bytes, size: int, ext: str) -> str:
    if b"\x00" in head:
        raise _reject(f"the {ext} file contains NUL bytes: it is binary, not text")
    if len(head) < size:
        # The sample may cut a multi-byte character or a line; keep whole lines only.
        head = head[: head.rfind(b"\n") + 1] or head
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _reject(f"the {ext} file is not UTF-8 text (byte {err.start})") from None


def sniff_upload(source: str | os.PathLike | bytes, ext: str) -> str:
    """Check that the content really is what `ext` claims; returns the kind ("jsonl", ...).

    JSON lines: the first non-empty line is a JSON object. JSON: a JSON array or object.
    CSV: text with a header row of named columns. Parquet: the PAR1 magic at both ends.
    Raises UI_UPLOAD_REJECTED naming what was found instead.
    """
    kind = ext.lower().lstrip(".")
    if f".{kind}" not in DATASET_EXTENSIONS:
        raise BackpropError("INPUT_UPLOAD_INVALID", f"{ext!r} is not an accepted extension")
    head, tail, size = _read_sample(source)
    if not head.strip():
        raise BackpropError("INPUT_UPLOAD_INVALID", "the file is empty")
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            raise _reject(f"the .{kind} file is really {what}")
    if kind == "parquet":
        if size < 12 or not head.startswith(b"PAR1") or not tail.endswith(b"PAR1"):
            raise _reject("the .parquet file lacks the PAR1 markers of a parquet file")
        return kind
    text = _text(head, size, f".{kind}")
    if kind == "jsonl":
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            record = json.loads(first)
        except ValueError:
            raise _reject("line 1 of the .jsonl file is not JSON") from None
        if not isinstance(record, dict):
            raise _reject("line 1 of the .jsonl file is not a JSON object")
    elif kind == "json":
        stripped = text.lstrip()
        if stripped[:1] not in ("[", "{"):
            raise _reject("the .json file does not start with a JSON array or object")
        if len(head) == size:
            try:
                json.loads(text)
            except ValueError as err:
                raise _reject(f"the .json file is not valid JSON: {err}") from None
    else:
        rows = list(csv.reader(io.StringIO(text[:65536])))
        header = rows[0] if rows else []
        if not header or not any(cell.strip() for cell in header) or len(rows) < 2:
            raise _reject("the .csv file has no header row followed by data")
    return kind
