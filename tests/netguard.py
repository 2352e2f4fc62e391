"""Refuse and record every outbound network attempt to a non-loopback address.

Used two ways by the privacy tests: copied as `sitecustomize.py` into a folder on
PYTHONPATH, so every Python process started from the test (the training worker, engine
subprocesses, the Reflex server) is guarded from its first line; and loaded into the test
process itself through `install(monkeypatch.setattr)`.

Attempts are appended as JSON lines to `$BP_NET_GUARD_LOG`; each guarded process also
writes one `armed` line there, so a test can tell the guard really ran. Only Python's
socket layer is guarded: native code that opens sockets itself (bun, Rust HTTP clients)
is not seen here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_real_getaddrinfo = socket.getaddrinfo


def _record(entry: dict) -> None:
    path = os.environ.get("BP_NET_GUARD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[:3], **entry}) + "\n")


def _is_local(host) -> bool:
    if host is None or host in ("", "localhost", b"localhost", "ip6-localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a host name other than localhost means a DNS lookup and a remote peer
    return ip.is_loopback or ip.is_unspecified


def _check(address, what: str) -> None:
    if not isinstance(address, tuple):
        return  # AF_UNIX paths and other local endpoints
    host = address[0]
    if _is_local(host):
        return
    _record({"blocked": what, "host": str(host), "port": address[1] if len(address) > 1 else None})
    raise ConnectionRefusedError(f"privacy guard: blocked outbound {what} to {host}")


def _connect(self, address):
    _check(address, "connect")
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check(address, "connect")
    return _real_connect_ex(self, address)


def _sendto(self, data, *args):
    _check(args[-1], "sendto")
    return _real_sendto(self, data, *args)


def _getaddrinfo(host, *args, **kwargs):
    _check((host, args[0] if args else None), "dns")
    return _real_getaddrinfo(host, *args, **kwargs)


def install(set_attr=setattr) -> None:
    set_attr(socket.socket, "connect", _connect)
    set_attr(socket.socket, "connect_ex", _connect_ex)
    set_attr(socket.socket, "sendto", _sendto)
    set_attr(socket, "getaddrinfo", _getaddrinfo)
    _record({"armed": True})


if __name__ == "sitecustomize":
    install()
