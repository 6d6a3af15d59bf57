"""An agnhost-like test server: one light process per node serving every pod on that node.

Real clusters run `registry.k8s.io/e2e-test-images/agnhost netexec` in test pods. Here one
asyncio process per node opens its listening sockets *inside each pod's network namespace*
(setns, create the socket, setns back: a socket stays in the netns it was created in), so a
pod's ports are really the pod's, at the cost of one interpreter per node instead of per pod.

HTTP (every TCP containerPort): `/hostname` (the pod's name), `/clientip` (`ip:port` of the
peer as the pod sees it), `/echo?msg=…`, `/header?key=NAME` (the request's header NAME, several
values joined with ", "), `/healthz`, `/` (a timestamp). Unlike agnhost, any
path ending in `/hostname` (`/api/hostname`) also answers the name, so a request routed by an
Ingress path prefix says which pod served it without a rewrite.
UDP (every UDP containerPort), like agnhost's UDP server: `hostname`, `clientip`, `echo <text>`;
anything else is echoed back.

Control: a unix socket; one JSON line per request, `{"op": "sync", "pods": [...]}` replaces the
whole set of served pods (reconcile, not append); `{"op": "ping"}` answers with the pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from lab_kit.kernel import socket_in


@dataclass
class Served:
    netns: str
    hostname: str
    tcp: dict[int, asyncio.base_events.Server] = field(default_factory=dict)
    udp: dict[int, asyncio.DatagramTransport] = field(default_factory=dict)


def http_answer(path: str, hostname: str, peer: tuple[str, int],
                headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) for one request; `headers` by lowercase name."""
    url = urllib.parse.urlsplit(path)
    if url.path.endswith("/hostname"):  # also /api/hostname (see above)
        return 200, hostname
    if url.path == "/clientip":
        return 200, f"{peer[0]}:{peer[1]}"
    if url.path == "/echo":
        q = urllib.parse.parse_qs(url.query)
        return 200, q.get("msg", [""])[0]
    if url.path == "/header":
        key = urllib.parse.parse_qs(url.query).get("key", [""])[0].lower()
        return 200, (headers or {}).get(key, "")
    if url.path == "/healthz":
        return 200, "ok"
    if url.path == "/":
        return 200, f"NOW: {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return 404, "404 page not found"


def udp_answer(data: bytes, hostname: str, peer: tuple[str, int]) -> bytes:
    text = data.decode(errors="replace").strip()
    if text == "hostname":
        return hostname.encode()
    if text == "clientip":
        return f"{peer[0]}:{peer[1]}".encode()
    if text.startswith("echo "):
        return text[5:].encode()
    return data


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(udp_answer(data, self.hostname, addr), addr)


class AgnHost:
    def __init__(self) -> None:
        self.pods: dict[str, Served] = {}

    async def _http(self, hostname: str, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    break
                parts = line.decode(errors="replace").split()
                keep_alive = len(parts) > 2 and parts[2] == "HTTP/1.1"
                headers: dict[str, str] = {}
                while True:  # headers
                    h = await asyncio.wait_for(reader.readline(), 30)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode(errors="replace").partition(":")
                    name, value = name.strip().lower(), value.strip()
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
                    low = f"{name}:{value.lower()}"
                    if low.startswith("connection:"):
                        keep_alive = "keep-alive" in low or (keep_alive and "close" not in low)
                status, body = http_answer(parts[1] if len(parts) > 1 else "/", hostname, peer,
                                           headers)
                data = body.encode()
                reason = "OK" if status == 200 else "Not Found"
                conn = "keep-alive" if keep_alive else "close"
                writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; "
                             f"charset=utf-8\r\nContent-Length: {len(data)}\r\n"
                             f"Connection: {conn}\r\n\r\n".encode() + data)
                await writer.drain()
                if not keep_alive:
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _open_tcp(self, s: Served, port: int) -> None:
        sock = socket_in(s.netns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(512)
        sock.setblocking(False)
        hostname = s.hostname
        server = await asyncio.start_server(
            lambda r, w: self._http(hostname, r, w), sock=sock)
        s.tcp[port] = server

    async def _open_udp(self, s: Served, port: int) -> None:
        sock = socket_in(s.netns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(s.hostname), sock=sock)
        s.udp[port] = transport

    def _close(self, s: Served, tcp: list[int] | None = None, udp: list[int] | None = None
               ) -> None:
        for port in list(s.tcp) if tcp is None else tcp:
            s.tcp.pop(port).close()
        for port in list(s.udp) if udp is None else udp:
            s.udp.pop(port).close()

    async def sync(self, pods: list[dict[str, Any]]) -> dict[str, Any]:
        """Make the served set exactly `pods`. Returns per-pod errors (e.g. a port in use)."""
        want = {p["key"]: p for p in pods}
        errors: dict[str, str] = {}
        for key in list(self.pods):
            s = self.pods[key]
            w = want.get(key)
            if w is None or w["netns"] != s.netns or w["hostname"] != s.hostname:
                self._close(s)
                del self.pods[key]
        for key, w in want.items():
            s = self.pods.setdefault(key, Served(netns=w["netns"], hostname=w["hostname"]))
            self._close(s, tcp=[p for p in s.tcp if p not in w["tcp"]],
                        udp=[p for p in s.udp if p not in w["udp"]])
            try:
                for port in w["tcp"]:
                    if port not in s.tcp:
                        await self._open_tcp(s, port)
                for port in w["udp"]:
                    if port not in s.udp:
                        await self._open_udp(s, port)
            except OSError as e:
                errors[key] = f"{e.strerror or e}"
        return {"ok": not errors, "errors": errors, "pods": len(self.pods)}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if req.get("op") == "sync":
                        resp = await self.sync(req["pods"])
                    elif req.get("op") == "ping":
                        resp = {"ok": True, "pid": os.getpid(), "pods": len(self.pods)}
                    else:
                        resp = {"ok": False, "errors": {"op": f"unknown op {req.get('op')!r}"}}
                except (ValueError, KeyError, TypeError) as e:
                    resp = {"ok": False, "errors": {"request": str(e)}}
                writer.write((json.dumps(resp) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()


async def _main(control_path: str, initial: str | None) -> None:
    host = AgnHost()
    if initial and os.path.exists(initial):
        with open(initial) as f:
            await host.sync(json.load(f))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control_path)
    server = await asyncio.start_unix_server(host.control, path=control_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    for s in host.pods.values():
        host._close(s)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control_path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lab_kit.agnhost", description=__doc__)
    ap.add_argument("--control", required=True, help="unix socket path for control requests")
    ap.add_argument("--initial", help="JSON file with the pods to serve at start")
    args = ap.parse_args(argv)
    asyncio.run(_main(args.control, args.initial))


def request(control_path: str, req: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Send one control request and wait for the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control_path)
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


if __name__ == "__main__":
    sys.exit(main())
