"""Public tunnels for `backprop ui --share`: cloudflared when installed, else ngrok's Python package.

A provider only has to say whether it can run here and open a tunnel to a local URL;
`pick_provider` takes the first that can. The tunnel is opened before the web server
starts, so the server knows the public host name it must answer to.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol
from urllib.parse import urlsplit

from backpropagate_core.errors import BackpropError

_TRYCLOUDFLARE = re.compile(r"https://[a-z0-9-]+\.trycloudflare\.com")


@dataclass
class Tunnel:
    public_url: str
    process: subprocess.Popen | None = None
    provider: str = ""
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """The public host name, as browsers send it in the Host header."""
        return urlsplit(self.public_url).netloc.lower()

    def close(self) -> None:
        if self._close:
            self._close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class TunnelProvider(Protocol):
    name: str

    def available(self) -> bool: ...

    def start(self, local_url: str, timeout: float = 45.0) -> Tunnel: ...


class CloudflaredProvider:
    """`cloudflared tunnel --url LOCAL`: a free quick tunnel on a random trycloudflare.com name."""

    name = "cloudflared"

    def __init__(self, binary: str = "cloudflared") -> None:
        self.binary = binary

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def start(self, local_url: str, timeout: float = 45.0) -> Tunnel:
        exe = shutil.which(self.binary)
        if exe is None:
            raise BackpropError("SHARE_NO_PROVIDER", f"{self.binary} is not on PATH")
        proc = subprocess.Popen([exe, "tunnel", "--no-autoupdate", "--url", local_url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
        tail: deque[str] = deque(maxlen=20)
        found: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            # Keep reading for the tunnel's whole life: a full pipe would stall cloudflared.
            for line in proc.stdout:
                tail.append(line.rstrip())
                match = _TRYCLOUDFLARE.search(line)
                if match and not found:
                    found.append(match.group(0))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, name="cloudflared-output", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1) and time.monotonic() < deadline:
            pass
        if not found:
            if proc.poll() is None:
                proc.kill()
            last = " | ".join(list(tail)[-5:]) or "no output"
            raise BackpropError("SHARE_TUNNEL_FAILED",
                                f"cloudflared gave no trycloudflare.com URL within {timeout:.0f} s: {last}")
        return Tunnel(found[0], proc, self.name)


class NgrokProvider:
    """ngrok through its Python package (`pip install ngrok`); needs NGROK_AUTHTOKEN."""

    name = "ngrok"

    def available(self) -> bool:
        return importlib.util.find_spec("ngrok") is not None

    def start(self, local_url: str, timeout: float = 45.0) -> Tunnel:
        if not os.environ.get("NGROK_AUTHTOKEN"):
            raise BackpropError("SHARE_TUNNEL_FAILED", "ngrok needs an account token in NGROK_AUTHTOKEN",
                                hint="Get one at https://dashboard.ngrok.com, then export NGROK_AUTHTOKEN=...")
        import ngrok

        try:
            listener = ngrok.forward(local_url, authtoken_from_env=True)
        except Exception as err:  # noqa: BLE001 - the ngrok package raises plain exceptions
            raise BackpropError("SHARE_TUNNEL_FAILED", f"ngrok: {err}") from None
        url = listener.url()
        return Tunnel(url, None, self.name, _close=lambda: ngrok.disconnect(url))


def providers() -> list[TunnelProvider]:
    return [CloudflaredProvider(), NgrokProvider()]


def pick_provider(candidates: list[TunnelProvider] | None = None) -> TunnelProvider:
    """The first provider that can run here, or SHARE_NO_PROVIDER."""
    candidates = providers() if candidates is None else candidates
    for provider in candidates:
        if provider.available():
            return provider
    names = ", ".join(p.name for p in candidates)
    raise BackpropError("SHARE_NO_PROVIDER", f"none of the tunnel providers is installed ({names})")

