"""The lab's "internet": a web server on the `external` host that logs who connected, for the
labs whose checks need to know the source address a request arrived with (lab 11's `ipBlock`,
lab 14's SNAT and egress gateway).

`serve_internet(c)` starts Python's `http.server` on port 8080 of every address of the external
host: 172.18.0.100 (the payment provider), 172.18.0.101 (any other site) and any `extra`
addresses given to it. Its log has one line per request, starting with the client's address as
the server saw it, after every NAT on the way; a request whose path carries a marker
(`/hostname?client=shop/frontend`) is found again with `client_seen`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lab_kit import config, kernel

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster

PROVIDER_IP = config.EXTERNAL_IP  # the external host: the payment provider's web server
OTHER_IP = "172.18.0.101"  # a second address of the external host: "some other site"
WEB_PORT = 8080


def serve_internet(c: Cluster, port: int = WEB_PORT, extra: Iterable[str] = ()) -> str:
    """Start a web server on the external host (the lab's "internet"), on `port` of
    172.18.0.100, 172.18.0.101 and the `extra` addresses (each added to its eth0). Python's
    `http.server`; its log (one line per request, with the client's address) is
    `internet_log(c)`. Running it again changes nothing. `c.down()` stops it with the
    cluster."""
    ext = c.external
    d = c.store.dir / "internet"
    d.mkdir(parents=True, exist_ok=True)
    (d / "hostname").write_text("payments.example.com")
    (d / "index.html").write_text("<h1>payments.example.com</h1>\n")
    for ip in (OTHER_IP, *extra):
        ext.sh(f"ip addr replace {ip}/16 dev eth0")
    if not _listening(ext.netns, port):
        ext.sh(f"setsid -f {sys.executable} -m http.server {port} --bind 0.0.0.0 "
               f"--directory {d} >>{d / 'http.log'} 2>&1 </dev/null")
        ext.sh(f"timeout 5 bash -c 'until ss -Htln sport = :{port} | grep -q .; do "
               "sleep 0.05; done'")
    where = " and ".join(f"http://{ip}:{port}/" for ip in (PROVIDER_IP, OTHER_IP, *extra))
    return f"the external host serves {where} (python3 -m http.server {port})"


def internet_log(c: Cluster, last: int = 5) -> str:
    """The last requests the external host's web server logged: who connected, as it saw them."""
    path = c.store.dir / "internet" / "http.log"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return "(no web server on the external host: serve_internet(c) starts it)"
    return "\n".join(lines[-last:])


def client_seen(c: Cluster, marker: str, last: int = 200) -> str:
    """The client address the external web server logged for the last request whose line
    carries `marker` ('' when none)."""
    for line in reversed(internet_log(c, last=last).splitlines()):
        if marker in line and line[:1].isdigit():
            return line.split()[0]
    return ""


def is_serving(c: Cluster, port: int = WEB_PORT) -> bool:
    return _listening(c.external.netns, port)


def _listening(netns: str, port: int) -> bool:
    r = kernel.Runner().run(["ss", "-Htln", f"sport = :{port}"], netns, check=False,
                            record=False)
    return bool(r.stdout.strip())
