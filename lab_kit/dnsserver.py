"""The cluster DNS server: lab_kit's CoreDNS, a process inside the `coredns` pod's netns.

    python -m lab_kit.dnsserver --snapshot <state>/dns/cluster.json [--port 53]

- Answers the cluster zone from the snapshot file the cluster rewrites on every change (it is
  re-read within 0.1 s of a change: the lab's watch on the API server), per `clusterdns`.
- Forwards every other name to the first nameserver of /etc/resolv.conf, as kubeadm's
  `forward . /etc/resolv.conf` does (the pod runs with dnsPolicy: Default, so that is the
  node's resolver: dnsmasq on the `external` host).
- UDP and TCP on port 53; a UDP answer larger than the client's limit (512 bytes, or its EDNS
  size) is truncated with TC set, and the client retries over TCP.
- Prometheus text on :9153/metrics (CoreDNS's metric names), `/health` and `/ready`.
- A packet cache: the answer to the same question bytes is sent again with the new query ID,
  until the snapshot changes. Malformed packets get FORMERR (or are dropped when not even a
  header); nothing a client sends stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from lab_kit import clusterdns

UDP_LIMIT = 512  # without EDNS (RFC 1035)
MAX_UDP = 4096  # largest EDNS size the server will fill
CACHE_MAX = 20000
POLL_S = 0.1
FORWARD_TIMEOUT_S = 3.0
FORWARD_RETRY_S = 1.0  # resend a UDP query upstream after this long without an answer


class Metrics:
    """Counters in Prometheus text format, with CoreDNS's metric names."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}  # (zone, proto, type)
        self.responses: dict[tuple[str, str], int] = {}  # (zone, rcode)
        self.queries: dict[tuple[str, str], int] = {}  # (type, rcode)
        self.forward: dict[str, int] = {}  # rcode of upstream answers (or "timeout")
        self.cache_hits = 0
        self.reloads = 0

    def count(self, zone: str, proto: str, qtype: str, rcode: str) -> None:
        # the UDP, TCP and forward threads all count: the lock keeps their updates whole
        with self.lock:
            k = (zone, proto, qtype)
            self.requests[k] = self.requests.get(k, 0) + 1
            k2 = (zone, rcode)
            self.responses[k2] = self.responses.get(k2, 0) + 1
            k3 = (qtype, rcode)
            self.queries[k3] = self.queries.get(k3, 0) + 1

    def count_forward(self, result: str) -> None:
        with self.lock:
            self.forward[result] = self.forward.get(result, 0) + 1

    def text(self) -> str:
        out = []
        with self.lock:
            out += ["# HELP coredns_dns_requests_total Counter of DNS requests made per zone, "
                    "protocol and family.", "# TYPE coredns_dns_requests_total counter"]
            for (zone, proto, qtype), n in sorted(self.requests.items()):
                out.append(f'coredns_dns_requests_total{{server="dns://:53",zone="{zone}",'
                           f'proto="{proto}",family="1",type="{qtype}"}} {n}')
            out += ["# HELP coredns_dns_responses_total Counter of response status codes.",
                    "# TYPE coredns_dns_responses_total counter"]
            for (zone, rcode), n in sorted(self.responses.items()):
                out.append(f'coredns_dns_responses_total{{server="dns://:53",zone="{zone}",'
                           f'rcode="{rcode}"}} {n}')
            out += ["# HELP labkit_dns_queries_total Queries by type and result (rcode).",
                    "# TYPE labkit_dns_queries_total counter"]
            for (qtype, rcode), n in sorted(self.queries.items()):
                out.append(f'labkit_dns_queries_total{{type="{qtype}",rcode="{rcode}"}} {n}')
            out += ["# HELP coredns_forward_responses_total Counter of responses received "
                    "from the upstream resolver.", "# TYPE coredns_forward_responses_total counter"]
            for rcode, n in sorted(self.forward.items()):
                out.append(f'coredns_forward_responses_total{{rcode="{rcode}"}} {n}')
            out += ["# HELP coredns_cache_hits_total The count of packet cache hits.",
                    "# TYPE coredns_cache_hits_total counter",
                    f"coredns_cache_hits_total {self.cache_hits}",
                    "# HELP coredns_reload_total Snapshots of the cluster loaded.",
                    "# TYPE coredns_reload_total counter",
                    f"coredns_reload_total {self.reloads}"]
        return "\n".join(out) + "\n"


class Server:
    def __init__(self, snapshot: Path, upstream: str | None, port: int = 53) -> None:
        self.snapshot = snapshot
        self.upstream = upstream
        self.port = port
        self.metrics = Metrics()
        self.records: clusterdns.Records | None = None
        # one packet cache per transport: a truncated UDP answer must not be sent over TCP
        self.cache: dict[str, dict[bytes, tuple[bytes, str, str, str]]] = {"udp": {}, "tcp": {}}
        self.stamp: tuple[int, int] | None = None
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="forward")

    # -- the watch ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Re-read the snapshot if it changed; True when new records are in force."""
        try:
            st = self.snapshot.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self.stamp:
            return False
        try:
            snap = json.loads(self.snapshot.read_text())
            records = clusterdns.Records.from_snapshot(snap)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"[ERROR] snapshot {self.snapshot}: {e}; keeping the last records",
                  file=sys.stderr, flush=True)
            self.stamp = stamp
            return False
        self.records = records
        self.cache = {"udp": {}, "tcp": {}}  # new dicts: a thread still answering from the old
        self.stamp = stamp
        self.metrics.reloads += 1
        return True

    def watch(self) -> None:
        while True:
            time.sleep(POLL_S)
            self.load()

    # -- one query ---------------------------------------------------------------------------

    def answer(self, data: bytes, proto: str, reply: Any) -> None:
        """Answer `data`; `reply(bytes)` sends the answer (maybe later, from a thread)."""
        cache = self.cache[proto]
        hit = cache.get(data[2:])
        if hit is not None:
            tail, zone, qtype, rcode = hit
            self.metrics.cache_hits += 1
            self.metrics.count(zone, proto, qtype, rcode)
            reply(data[:2] + tail)
            return
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - any garbage: FORMERR if it has a header, else drop
            if len(data) >= 12:
                self.metrics.count(".", proto, "<malformed>", "FORMERR")
                reply(_formerr(data))
            return
        if query.flags & dns.flags.QR:  # a response sent to us: never answer it (no loops)
            return
        records = self.records
        qtype = (dns.rdatatype.to_text(query.question[0].rdtype)
                 if len(query.question) == 1 else "<none>")
        if records is None:
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.SERVFAIL)
            self.metrics.count(".", proto, qtype, "SERVFAIL")
            reply(self._wire(resp, query, proto))
            return
        cacheable = True  # not an answer that asked upstream, nor one a bug spoilt

        def chase(name: str, rdtype: int) -> list[dns.rrset.RRset]:
            nonlocal cacheable
            cacheable = False
            return self._resolve_upstream(name, rdtype)

        try:
            resp = records.respond(query, chase=chase)
        except Exception as e:  # noqa: BLE001 - a bug must cost one answer, not the server
            print(f"[ERROR] {qtype} {query.question[0].name if query.question else ''}: {e!r}",
                  file=sys.stderr, flush=True)
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.SERVFAIL)
            cacheable = False
        if resp is None:
            self.pool.submit(self._forward, data, query, proto, qtype, reply)
            return
        wire = self._wire(resp, query, proto)
        rcode = dns.rcode.to_text(resp.rcode())
        zone = records.origin
        if cacheable and len(cache) < CACHE_MAX:
            cache[data[2:]] = (wire[2:], zone, qtype, rcode)
        self.metrics.count(zone, proto, qtype, rcode)
        reply(wire)

    def _wire(self, resp: dns.message.Message, query: dns.message.Message, proto: str) -> bytes:
        if proto == "tcp":
            limit = 65535
        else:
            limit = min(max(query.payload, UDP_LIMIT), MAX_UDP) if query.edns >= 0 else UDP_LIMIT
        try:
            return resp.to_wire(max_size=limit)
        except dns.exception.TooBig:  # TC: no records, the client asks again over TCP
            resp.answer = []
            resp.authority = []
            resp.additional = []
            resp.flags |= dns.flags.TC
            return resp.to_wire(max_size=limit)

    def _forward(self, data: bytes, query: dns.message.Message, proto: str, qtype: str,
                 reply: Any) -> None:
        rcode = "SERVFAIL"
        try:
            if not self.upstream:
                raise OSError("no upstream nameserver in /etc/resolv.conf")
            wire = _exchange(self.upstream, data, proto)
            rcode = dns.rcode.to_text(dns.rcode.from_flags(
                struct.unpack("!H", wire[2:4])[0], 0)) if len(wire) >= 4 else "SERVFAIL"
            self.metrics.count_forward(rcode)
        except (OSError, ValueError):
            self.metrics.count_forward("timeout")
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.SERVFAIL)
            wire = self._wire(resp, query, proto)
        self.metrics.count(".", proto, qtype, rcode)
        try:
            reply(wire)
        except OSError:
            pass

    def _resolve_upstream(self, name: str, rdtype: int) -> list[dns.rrset.RRset]:
        if not self.upstream:
            return []
        try:
            q = dns.message.make_query(name, rdtype)
            resp = dns.message.from_wire(_exchange(self.upstream, q.to_wire(), "udp"))
            return list(resp.answer)
        except Exception:  # noqa: BLE001 - the CNAME alone is still a correct answer
            return []

    # -- transports --------------------------------------------------------------------------

    def serve_udp(self, sock: socket.socket) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                continue
            try:
                self.answer(data, "udp", lambda wire, a=addr: sock.sendto(wire, a))
            except OSError:
                pass

    def serve_tcp(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        lock = threading.Lock()

        def reply(wire: bytes) -> None:
            with lock:
                conn.sendall(struct.pack("!H", len(wire)) + wire)

        with conn:
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if head is None:
                        return
                    body = _recv_exact(conn, struct.unpack("!H", head)[0])
                    if body is None:
                        return
                    done = threading.Event()

                    def send(wire: bytes, done: threading.Event = done) -> None:
                        try:
                            reply(wire)
                        finally:
                            done.set()

                    self.answer(body, "tcp", send)
                    done.wait(FORWARD_TIMEOUT_S * 2)  # answers go out in query order
            except OSError:
                return

    def run(self, metrics_port: int = 9153) -> None:
        self.load()
        threading.Thread(target=self.watch, daemon=True, name="watch").start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp.bind(("0.0.0.0", self.port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", self.port))
        tcp.listen(128)
        threading.Thread(target=self.serve_tcp, args=(tcp,), daemon=True, name="tcp").start()
        if metrics_port:
            http = ThreadingHTTPServer(("0.0.0.0", metrics_port), _handler(self))
            http.daemon_threads = True
            threading.Thread(target=http.serve_forever, daemon=True, name="metrics").start()
        print(f"[INFO] serving {self.records.origin if self.records else '?'} on :{self.port} "
              f"(udp, tcp), metrics on :{metrics_port}, upstream {self.upstream}",
              file=sys.stderr, flush=True)
        self.serve_udp(udp)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, ctype = 200, "text/plain"
            if self.path == "/metrics":
                body = server.metrics.text().encode()
                ctype = "text/plain; version=0.0.4"
            elif self.path in ("/health", "/ready"):
                ready = server.records is not None
                status, body = (200, b"OK") if ready else (503, b"no records yet")
            else:
                self.send_error(404)
                return
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _formerr(data: bytes) -> bytes:
    """A FORMERR answer built from the query's header alone (ID, opcode and RD kept)."""
    qid, flags = struct.unpack("!HH", data[:4])
    out_flags = 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR  # QR, opcode, RD; no RA
    return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _exchange(server: str, data: bytes, proto: str, port: int = 53) -> bytes:
    if proto == "tcp":
        with socket.create_connection((server, port), timeout=FORWARD_TIMEOUT_S) as s:
            s.sendall(struct.pack("!H", len(data)) + data)
            head = _recv_exact(s, 2)
            body = _recv_exact(s, struct.unpack("!H", head)[0]) if head else None
            if body is None:
                raise OSError("upstream closed the connection")
            return body
    # UDP: the query is sent again after each silent second, until FORWARD_TIMEOUT_S (CoreDNS's
    # forward plugin also keeps trying within its deadline): one lost datagram on a busy
    # machine would otherwise be a SERVFAIL, which the pod's resolver does not retry
    deadline = time.monotonic() + FORWARD_TIMEOUT_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((server, port))
        while (left := deadline - time.monotonic()) > 0:
            s.send(data)
            s.settimeout(min(left, FORWARD_RETRY_S))
            try:
                while True:
                    wire = s.recv(65535)
                    if wire[:2] == data[:2]:
                        return wire
            except TimeoutError:
                continue
        raise TimeoutError(f"no answer from {server} in {FORWARD_TIMEOUT_S:g} s")


def upstream_from_resolv_conf(path: str = "/etc/resolv.conf") -> str | None:
    try:
        conf = clusterdns.parse_resolv_conf(Path(path).read_text())
    except OSError:
        return None
    return conf.nameservers[0] if conf.nameservers else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab_kit.dnsserver", description=__doc__.split("\n")[0])
    ap.add_argument("--snapshot", required=True, type=Path)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--metrics-port", type=int, default=9153)
    ap.add_argument("--upstream", help="default: the first nameserver in /etc/resolv.conf")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    Server(args.snapshot, args.upstream or upstream_from_resolv_conf(),
           args.port).run(args.metrics_port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
