"""`backprop ui`: serve the web app (Reflex, prod mode: pages and websocket on one port).

The app lives in the repository next to this package (`rxconfig.py`, `backpropagate_app/`).
Reflex needs a JavaScript runtime: `make install` puts bun under `.tools/`, and this
command points Reflex at it, so it works the same from `make run` or a plain shell.
Training runs in worker processes of their own; stopping the UI never stops them. The
engine helper that answers plans, dataset reports and chat (`runs.service`) is started by
the server on the first such question and ends with it: it exits when its stdin closes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer

from backpropagate_core.cli.app import app, console
from backpropagate_core.errors import BackpropError

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / ".tools"
READY_TIMEOUT_S = 600
"""The first start installs frontend packages and builds; later starts take ~15-60 s."""


def ui_env(base: dict[str, str], tools: Path = TOOLS) -> dict[str, str]:
    """The environment Reflex runs with: bun from `.tools`, its state kept in the
    project, no telemetry and no version check. Values already set are kept."""
    env = dict(base)
    bin_dir = tools / "node_modules" / ".bin"
    if (bin_dir / "bun").exists():
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
        env.setdefault("REFLEX_USE_SYSTEM_BUN", "1")
    defaults = {
        "REFLEX_DIR": str(tools / "reflex"),
        "REFLEX_CHECK_LATEST_VERSION": "0",
        "REFLEX_TELEMETRY_ENABLED": "false",
        "BUN_INSTALL_CACHE_DIR": str(tools / "bun-cache"),
        "BUN_RUNTIME_TRANSPILER_CACHE_PATH": str(tools / "bun-transpiler-cache"),
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    if "NPM_CONFIG_REGISTRY" not in env:
        env["NPM_CONFIG_REGISTRY"] = npm_registry(env)
    return env


def npm_registry(env: dict[str, str]) -> str:
    """The registry the user's own npm configuration names (a company mirror, say).
    Reflex would otherwise time a hard-coded pair of public registries on first start
    and use the faster, whatever npm is configured with."""
    npm = shutil.which("npm", path=env.get("PATH"))
    if npm:
        try:
            out = subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True,
                                 timeout=20, env=env).stdout.strip()
            if out.startswith(("http://", "https://")):
                return out
        except (OSError, subprocess.SubprocessError):
            pass  # no usable npm: npm's own default below
    return "https://registry.npmjs.org/"


def reflex_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "reflex", "run", "--env", "prod", "--single-port",
            "--frontend-port", str(port), "--backend-host", host, "--loglevel", "warning"]


def check_can_start(host: str, port: int, env: dict[str, str], repo: Path = REPO_ROOT) -> None:
    """Fail early, with a coded error, on what would make Reflex fail late."""
    if not (repo / "rxconfig.py").is_file():
        raise BackpropError("UI_START_FAILED", f"no rxconfig.py in {repo}",
                            hint="Run `backprop ui` from a checkout of the repository (pip install -e .).")
    # Only looked up: the engine never imports reflex; the UI server process does.
    if importlib.util.find_spec("reflex") is None:
        raise BackpropError("DEP_MISSING", "the web app needs reflex",
                            hint="pip install -e '.[ui]' (or `make install`).")
    if not shutil.which("bun", path=env.get("PATH")) and not env.get("REFLEX_USE_NPM"):
        raise BackpropError("DEP_MISSING", "the web app needs the bun JavaScript runtime",
                            hint="`make install` installs it under .tools/ from the npm registry.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # Servers set SO_REUSEADDR, so a port in TIME_WAIT after a restart counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise BackpropError("UI_START_FAILED", f"cannot listen on {host}:{port}: {err.strerror}",
                                hint="Another program uses that port: pass --port with a free one.") from None


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """True once `url`/ping answers; False if the server process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except urllib.error.HTTPError:
            return True  # with --auth the gate answers 401: the server is up
        except OSError:
            pass
        time.sleep(0.5)
    return False


def serve(host: str, port: int, env: dict[str, str] | None = None) -> int:
    """Run the Reflex server until it exits or we are interrupted; returns its exit code."""
    env = ui_env(dict(os.environ) if env is None else env)
    # Reflex makes (and serves) an upload folder of its own; the app never puts files there,
    # but it too belongs under the UI's output folder rather than in the repository.
    from backpropagate_core.config import load_settings

    env.setdefault("REFLEX_UPLOADED_FILES_DIR", str(load_settings().ui.output_dir / "reflex-uploads"))
    check_can_start(host, port, env)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    console.print(f"Starting the backpropagate UI on [bold]{url}[/] (building the web app first)…",
                  highlight=False)
    # On Windows the server gets its own process group, so the CTRL_BREAK_EVENT that
    # stops it (below) does not also hit this console.
    group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {}  # type: ignore[attr-defined]
    proc = subprocess.Popen(reflex_command(host, port), cwd=REPO_ROOT, env=env, **group)

    def stop(*_args) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if wait_ready(url, proc, READY_TIMEOUT_S):
            console.print(f"[bold green]Ready:[/] open {url}  (Ctrl-C stops the UI; training runs keep going)",
                          highlight=False)
        elif proc.poll() is not None:
            raise BackpropError("UI_START_FAILED", f"the Reflex server exited with code {proc.returncode}")
        else:
            raise BackpropError("UI_START_FAILED", f"{url}/ping did not answer within {READY_TIMEOUT_S} s")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _terminate(proc)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- login and sharing ----------------------------------------------------------------------

SHARE_GRACE_S = 5
"""Seconds to think again before an unauthenticated public tunnel opens."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host in _LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _own_hosts(host: str, port: int) -> list[str]:
    """Host header values that name this server: loopback, the bound address, and for a
    wildcard bind every local interface address and the machine name."""
    names = ["localhost", "127.0.0.1", "::1"]
    if host in ("0.0.0.0", "::"):
        import psutil

        names += [addr.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for addr in addrs
                  if addr.family in (socket.AF_INET, socket.AF_INET6)]
        names += [socket.gethostname(), f"{socket.gethostname()}.local"]
    else:
        names.append(host)
    return sorted({(f"[{n}]" if ":" in n else n).lower() + f":{port}" for n in names})


def check_sharing(share: bool, login, host: str, require_auth: bool) -> None:
    """Refuse --share without a login unless opted out; warn about open non-loopback binds."""
    if share and login is None:
        if require_auth:
            raise BackpropError("INPUT_AUTH_REQUIRED",
                                "--share opens the UI to anyone who has the link; it needs a login")
        console.print(
            "[bold red on yellow] WARNING [/] [bold red]--share without --auth: anyone with the link can "
            "read your data, start training on this machine and fill its disk.[/]\n"
            "[red]BACKPROPAGATE_SECURITY__REQUIRE_AUTH_FOR_SHARE=false turned the login requirement off. "
            f"Starting in {SHARE_GRACE_S} s; press Ctrl-C to stop.[/]", highlight=False)
        time.sleep(SHARE_GRACE_S)
    elif login is None and not _is_loopback(host):
        console.print(f"[bold yellow]Warning:[/] the UI listens on {host}, reachable from other machines, "
                      "without a login. Add --auth USER:PASSWORD (or --auth-file) to require one.",
                      highlight=False)


def serve_secured(host: str, port: int, settings, login, share: bool) -> int:
    """Open the tunnel (when sharing), hand the server its gate file, serve, clean up."""
    from backpropagate_core.serve import credentials
    from backpropagate_core.serve import tunnel

    env = ui_env(dict(os.environ))
    env.pop(credentials.PASSWORD_ENV, None)  # the server gets a hash, never the password
    opened, provider = None, None
    hosts = [*_own_hosts(host, port), *settings.security.allowed_hosts]
    if share:
        provider = tunnel.pick_provider()
        check_can_start(host, port, env)
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        console.print(f"Opening a public tunnel with {provider.name}…", highlight=False)
        opened = provider.start(f"http://{'[' + local + ']' if ':' in local else local}:{port}")
        hosts.append(opened.host)
    gate_file = credentials.write_gate_file(
        login, secret=settings.security.jwt_secret, hosts=hosts, proxy=provider.name if share else None,
        session_hours=settings.security.session_hours)
    env[credentials.GATE_FILE_ENV] = str(gate_file)
    try:
        if opened:
            console.print(f"[bold green]Public URL:[/] {opened.public_url}"
                          + ("  (login required)" if login else "  [bold red](NO LOGIN)[/]"), highlight=False)
        return serve(host, port, env)
    finally:
        if opened:
            opened.close()
        shutil.rmtree(gate_file.parent, ignore_errors=True)


@app.command()
def ui(host: str = typer.Option(None, help="Address to bind (default: BACKPROPAGATE_UI__HOST, 127.0.0.1)."),
       port: int = typer.Option(None, help="Port for pages and websocket (default: BACKPROPAGATE_UI__PORT, 7862)."),
       share: bool = typer.Option(False, "--share",
                                  help="Open a public https tunnel to the UI (cloudflared, else ngrok); needs --auth."),
       auth: str = typer.Option(None, "--auth", metavar="USER:PASSWORD",
                                help="Require this login on every page, upload and the websocket. With --share, "
                                     "--auth USER alone generates a password and prints it once. On a shared "
                                     "machine use --auth-file or BACKPROPAGATE_UI_PASSWORD: others can read "
                                     "command lines in `ps`."),
       auth_file: Path = typer.Option(None, "--auth-file",
                                      help="File whose first line is USER:PASSWORD (keeps it out of shell history); "
                                           "or set BACKPROPAGATE_UI_PASSWORD.")) -> None:
    """Open the web app: upload data, train with live charts, browse runs."""
    from backpropagate_core.serve import credentials
    from backpropagate_core.serve import sandbox
    from backpropagate_core.config import load_settings

    settings = load_settings()
    host, port = host or settings.ui.host, port or settings.ui.port
    sandbox.resolve_output_dir(settings.ui.output_dir, create=True)
    if share and auth and ":" not in auth:
        login = credentials.generated_login(auth.strip())
        console.print(f"[bold]Generated password for {login.user}:[/] {login.password}  "
                      "(shown once; it is not stored anywhere)", highlight=False)
    else:
        login = credentials.login_from(auth, auth_file)
    if share and login is not None:
        credentials.check_share_password(login)
    check_sharing(share, login, host, settings.security.require_auth_for_share)
    raise typer.Exit(serve_secured(host, port, settings, login, share))
