"""The UI login: where the password comes from, how it is stored, how it is checked.

`backprop ui` reads the login from `--auth USER:PASSWORD`, `--auth-file PATH` or the
`BACKPROPAGATE_UI_PASSWORD` env var (so it need not sit in shell history), keeps only a
salted scrypt hash, and hands the web server a private (0600) gate file naming the user,
the hash, the session-signing key and the host names the server answers to. The plain
password never reaches the server process or its environment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from backpropagate_core.errors import BackpropError

GATE_FILE_ENV = "BACKPROPAGATE_UI_GATE_FILE"
PASSWORD_ENV = "BACKPROPAGATE_UI_PASSWORD"
USER_ENV = "BACKPROPAGATE_UI_USER"
MIN_PASSWORD = 8
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class Login:
    user: str
    password: str = field(repr=False)


def parse_login(text: str, source: str) -> Login:
    """`USER:PASSWORD` (the password may contain ':'), checked for a usable user and length."""
    user, sep, password = text.strip().partition(":")
    user = user.strip()
    if not sep or not user or not password:
        raise BackpropError("INPUT_AUTH_INVALID", f"{source} must look like USER:PASSWORD")
    if not user.isprintable() or any(c.isspace() for c in user):
        raise BackpropError("INPUT_AUTH_INVALID", f"the user name from {source} has spaces or control characters")
    if len(password) < MIN_PASSWORD:
        raise BackpropError("INPUT_AUTH_INVALID",
                            f"the password from {source} has {len(password)} characters; use at least {MIN_PASSWORD}")
    return Login(user, password)


SHARE_MIN_PASSWORD = 12
"""A public link is guessed at from the whole internet: --share wants a longer password."""


def generated_login(user: str) -> Login:
    """A login with a fresh random password (16 URL-safe characters, ~96 bits)."""
    if not user or not user.isprintable() or any(c.isspace() for c in user):
        raise BackpropError("INPUT_AUTH_INVALID", "the user name has spaces or control characters")
    return Login(user, secrets.token_urlsafe(12))


def check_share_password(login: Login) -> None:
    if len(login.password) < SHARE_MIN_PASSWORD:
        raise BackpropError(
            "INPUT_AUTH_INVALID",
            f"--share needs a password of at least {SHARE_MIN_PASSWORD} characters (this one has {len(login.password)})",
            hint="Use a longer one, or pass --auth USER alone to have one generated and printed once.")


def login_from(auth: str | None = None, auth_file: str | Path | None = None,
               env: dict[str, str] | None = None) -> Login | None:
    """The login from --auth, else --auth-file, else BACKPROPAGATE_UI_PASSWORD; None when none is given.

    The auth file holds one `USER:PASSWORD` line. With the env var, the user name is
    BACKPROPAGATE_UI_USER (default "admin").
    """
    env = os.environ if env is None else env
    if auth:
        return parse_login(auth, "--auth")
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as err:
            raise BackpropError("INPUT_AUTH_INVALID", f"cannot read --auth-file {path}: {err.strerror}") from None
        if not lines:
            raise BackpropError("INPUT_AUTH_INVALID", f"--auth-file {path} is empty")
        return parse_login(lines[0], f"--auth-file {path}")
    if env.get(PASSWORD_ENV):
        user = env.get(USER_ENV, "admin")
        return parse_login(f"{user}:{env[PASSWORD_ENV]}", PASSWORD_ENV)
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` with a random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a `hash_password` string; the comparison is constant-time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def write_gate_file(login: Login | None, *, secret: str | None = None, hosts: list[str] | None = None,
                    proxy: str | None = None, session_hours: float = 12.0,
                    folder: Path | None = None) -> Path:
    """Write the web server's gate settings to a new 0600 file in a 0700 folder; returns its path."""
    folder = Path(folder or tempfile.mkdtemp(prefix="backprop-ui-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "gate.json"
    payload = {
        "user": login.user if login else None,
        "password_hash": hash_password(login.password) if login else None,
        "secret": secret or secrets.token_urlsafe(48),
        "hosts": sorted(set(hosts or [])),
        "proxy": proxy,
        "session_hours": session_hours,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(payload, out)
    return path


def read_gate_file(path: str | Path) -> dict:
    """The gate settings; refuses a file other users could read or change."""
    path = Path(path)
    info = path.stat()
    if os.name != "nt" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BackpropError("INPUT_AUTH_INVALID", f"{path} is readable by other users; it must be 0600")
    return json.loads(path.read_text(encoding="utf-8"))
