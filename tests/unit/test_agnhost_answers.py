"""The agnhost-like server: its pure answers, and its sync/control protocol (no netns, no root)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from lab_kit import agnhost
from lab_kit.agnhost import http_answer, udp_answer

PEER = ("10.244.1.7", 40123)


@pytest.mark.parametrize(("path", "status", "body"), [
    ("/hostname", 200, "web-0"),
    ("/hostname?x=1", 200, "web-0"),
    ("/clientip", 200, "10.244.1.7:40123"),
    ("/echo?msg=hello", 200, "hello"),
    ("/echo?msg=hello%20world", 200, "hello world"),
    ("/echo", 200, ""),
    ("/healthz", 200, "ok"),
    ("/nope", 404, "404 page not found"),
    ("/hostname/extra", 404, "404 page not found"),
    ("/api/hostname", 200, "web-0"),  # an Ingress path prefix in front of it
    ("/api/v2/hostname?x=1", 200, "web-0"),
    ("/myhostname", 404, "404 page not found"),
])
def test_http_answer(path: str, status: int, body: str) -> None:
    assert http_answer(path, "web-0", PEER) == (status, body)


def test_http_root_is_a_timestamp() -> None:
    status, body = http_answer("/", "web-0", PEER)
    assert status == 200
    assert body.startswith("NOW: 20")


@pytest.mark.parametrize(("data", "reply"), [
    (b"hostname", b"web-0"),
    (b"hostname\n", b"web-0"),
    (b"clientip", b"10.244.1.7:40123"),
    (b"echo hi there", b"hi there"),
    (b"anything else", b"anything else"),
    (b"\xff\xfe", b"\xff\xfe"),
])
def test_udp_answer(data: bytes, reply: bytes) -> None:
    assert udp_answer(data, "web-0", PEER) == reply


# --- the server itself, in this process, serving on the loopback of the test's own netns -----

def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_get(port: int, path: str, version: str = "1.0") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(f"GET {path} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert f"Content-Length: {len(body)}".encode() in head
    return body.decode()


def _udp(port: int, msg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(msg, ("127.0.0.1", port))
        return s.recv(65535)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except ConnectionRefusedError:
        return True
    return False


def test_server_syncs_serves_and_closes(tmp_path: Path) -> None:
    tcp, udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    ctl = str(tmp_path / "ctl.sock")
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        host = agnhost.AgnHost()
        server = await asyncio.start_unix_server(host.control, path=ctl)
        loop = asyncio.get_running_loop()

        def call(req: dict[str, Any]) -> dict[str, Any]:
            return agnhost.request(ctl, req, timeout=5)

        async with server:
            pod = {"key": "default/web-0", "netns": None, "hostname": "web-0",
                   "tcp": [tcp], "udp": [udp]}
            seen["ping"] = await loop.run_in_executor(None, call, {"op": "ping"})
            seen["sync"] = await loop.run_in_executor(None, call, {"op": "sync", "pods": [pod]})
            seen["hostname"] = await loop.run_in_executor(None, _http_get, tcp, "/hostname")
            seen["keepalive"] = await loop.run_in_executor(None, _http_get, tcp, "/echo?msg=k",
                                                           "1.1")
            seen["clientip"] = await loop.run_in_executor(None, _http_get, tcp, "/clientip")
            seen["udp"] = await loop.run_in_executor(None, _udp, udp, b"hostname")
            # the same sync again is a no-op (reconcile, not append)
            seen["again"] = await loop.run_in_executor(None, call, {"op": "sync", "pods": [pod]})
            seen["still"] = await loop.run_in_executor(None, _http_get, tcp, "/hostname")
            seen["bad"] = await loop.run_in_executor(None, call, {"op": "dance"})
            seen["empty"] = await loop.run_in_executor(None, call, {"op": "sync", "pods": []})
            seen["refused"] = await loop.run_in_executor(None, _refused, tcp)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert seen["ping"]["ok"] is True and seen["ping"]["pods"] == 0
    assert seen["sync"] == {"ok": True, "errors": {}, "pods": 1}
    assert seen["hostname"] == "web-0"
    assert seen["keepalive"] == "k"
    assert seen["clientip"].startswith("127.0.0.1:")
    assert seen["udp"] == b"web-0"
    assert seen["again"] == {"ok": True, "errors": {}, "pods": 1}
    assert seen["still"] == "web-0"
    assert seen["bad"]["ok"] is False and "dance" in json.dumps(seen["bad"])
    assert seen["empty"] == {"ok": True, "errors": {}, "pods": 0}
    assert seen["refused"] is True


def test_sync_reports_a_port_in_use(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", 0))
    blocker.listen()
    port = blocker.getsockname()[1]

    async def scenario() -> dict[str, Any]:
        host = agnhost.AgnHost()
        pod = {"key": "default/p", "netns": None, "hostname": "p", "tcp": [port], "udp": []}
        return await host.sync([pod])

    try:
        resp = asyncio.run(scenario())
    finally:
        blocker.close()
    assert resp["ok"] is False
    assert "default/p" in resp["errors"]
    assert "in use" in resp["errors"]["default/p"]
