"""Seeing the packets: real `tcpdump` in a node's or pod's netns, decoded layer by layer.

    cap = capture(c, "lab-worker2", interface="eth0", filter="udp port 8472",
                  during=lambda: c.probe("a", "b"))
    cap                      # in a notebook: a table, outer and inner headers as nested boxes
    print(cap.summary())     # one line per packet: Ethernet … / IPv4 … / UDP … / VXLAN VNI 1 / …
    print(cap.layers(0))     # one packet as a tree, with every header's size in bytes
    print(cap.tcpdump_text())  # tcpdump's own view of the same pcap

The capture is a real pcap written by tcpdump (`cap.pcap`, in the cluster's state dir, so
`down` removes it); the exact tcpdump command is in the cluster's journal and in
`cap.shell_command`, so it can be re-typed in a terminal. Decoding uses scapy.

Capturing on a node's `eth0` shows the underlay: what the "data-centre network" carries,
encapsulation included. Interface `any` captures every interface of the netns with Linux's
"cooked" link layer (SLL or SLL2, which also records the interface and the direction).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from lab_kit import kernel
from lab_kit.errors import LabError

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster, Shell

VXLAN_PORTS = (8472, 4789)  # Flannel/Linux default first, then the IANA port
LISTEN_TIMEOUT = 10.0  # seconds tcpdump may take to open the interface
STOP_TIMEOUT = 5.0  # seconds tcpdump may take to exit after SIGINT before it is killed
SNAPLEN = 65535  # bytes kept of each packet (`-s`)
BUFFER_KIB = 8192  # the kernel's capture ring (`-B`, in KiB)

_DIRECTIONS = {0: "In", 1: "B", 2: "M", 3: "P", 4: "Out"}  # tcpdump's words for SLL pkttype
_TCP_FLAGS = (("F", "F"), ("S", "S"), ("R", "R"), ("P", "P"), ("U", "U"), ("E", "E"),
              ("C", "W"), ("A", "."))  # scapy flag letter -> tcpdump's, in tcpdump's order


# --- decoded packets -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One header of a packet: its name, key fields, one-line summary and size on the wire."""

    name: str  # "Ethernet", "Linux cooked", "IPv4", "UDP", "VXLAN", "TCP", "ICMP", "ARP", …
    summary: str  # e.g. "IPv4 172.18.0.2 → 172.18.0.3 proto UDP len 134 ttl 64 DF"
    fields: dict[str, Any]
    header_len: int  # bytes of this header (for "Payload": the data's length)
    level: int = 0  # 0: outermost headers; 1: inside the first VXLAN tunnel; …
    quoted: bool = False  # part of the original packet an ICMP error message quotes

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def __str__(self) -> str:
        return self.summary

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: bytes fields (payloads) become hex strings."""
        return {"name": self.name, "summary": self.summary, "header_len": self.header_len,
                "level": self.level, "quoted": self.quoted,
                "fields": {k: v.hex() if isinstance(v, bytes) else v
                           for k, v in self.fields.items()}}


@dataclass(frozen=True)
class Packet:
    """One captured frame, decoded into its layers (outermost first)."""

    number: int  # frame number in the pcap, from 1 (as tcpdump and Wireshark count)
    time: float  # capture timestamp (seconds since the epoch)
    length: int  # bytes on the wire
    captured: int  # bytes in the pcap (less than `length` when the snapshot length cut it)
    layers: tuple[Layer, ...]
    linktype: str  # "Ethernet", "Linux cooked" or "Linux cooked v2"

    def has(self, name: str) -> bool:
        return any(ly.name == name for ly in self.layers)

    def all(self, name: str) -> list[Layer]:
        """Every layer called `name`, outermost first (a VXLAN packet has two IPv4 layers)."""
        return [ly for ly in self.layers if ly.name == name]

    def layer(self, name: str, which: int = 0) -> Layer | None:
        """The `which`-th layer called `name` (0: outermost, -1: innermost), or None."""
        found = self.all(name)
        try:
            return found[which]
        except IndexError:
            return None

    @property
    def payload(self) -> bytes:
        """The application data (after the innermost TCP/UDP header), b"" if none."""
        for ly in reversed(self.layers):
            if ly.name == "Payload" and not ly.quoted:
                return ly.fields["data"]
        return b""

    @property
    def encapsulated(self) -> bool:
        return any(ly.level > 0 for ly in self.layers)

    @property
    def interface(self) -> str | None:
        """The interface a cooked (`-i any`) capture saw the packet on, when known."""
        ly = self.layer("Linux cooked")
        return ly.get("interface") if ly else None

    @property
    def direction(self) -> str | None:
        """In / Out / B(roadcast) / M(ulticast) / P(romiscuous) for a cooked capture."""
        ly = self.layer("Linux cooked")
        return ly.get("direction") if ly else None

    def overhead_layers(self) -> list[Layer]:
        """The headers VXLAN puts in front of the inner IP packet: outer IP, UDP, VXLAN and
        the inner Ethernet header ([] if the packet is not encapsulated)."""
        out: list[Layer] = []
        for ly in self.layers:
            if ly.level > 0 and ly.name in ("IPv4", "IPv6", "ARP"):
                return out
            if out or (ly.level == 0 and ly.name in ("IPv4", "IPv6")):
                out.append(ly)
        return []

    def overhead(self) -> int | None:
        """Bytes of :meth:`overhead_layers` (50 for VXLAN over IPv4: why pods get MTU 1450
        on a 1500-byte underlay), or None if the packet is not encapsulated."""
        layers = self.overhead_layers()
        return sum(ly.header_len for ly in layers) if layers else None

    def summary(self) -> str:
        return " / ".join(ly.summary for ly in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "time": self.time, "length": self.length,
                "captured": self.captured, "linktype": self.linktype,
                "layers": [ly.to_dict() for ly in self.layers]}

    def tree(self) -> str:
        """The packet like Wireshark's detail pane: one line per header, indented."""
        lines = [f"frame {self.number}: {self.length} bytes on the wire, {self.captured} "
                 f"captured ({self.linktype})"]
        for depth, ly in enumerate(self.layers, start=1):
            tag = " (inner)" if ly.level and not ly.quoted else ""
            tag += " (quoted by ICMP)" if ly.quoted else ""
            head = f"{ly.name}{tag}" if ly.name in ("Payload", "Padding") else \
                f"{ly.name}{tag}, {ly.header_len} bytes"
            lines.append(f"{'  ' * depth}{head}: {_detail(ly)}")
        over = self.overhead_layers()
        if over:
            parts = " + ".join(f"{'inner ' if ly.level else 'outer '}{ly.name} {ly.header_len}"
                               if ly.name in ("IPv4", "IPv6", "Ethernet") else
                               f"{ly.name} {ly.header_len}" for ly in over)
            lines.append(f"encapsulation overhead: {self.overhead()} bytes in front of the "
                         f"inner IP packet ({parts})")
        return "\n".join(lines)


def _detail(ly: Layer) -> str:
    """The summary without the leading layer name (the tree already shows it)."""
    s = ly.summary
    return s[len(ly.name):].strip() if s.startswith(ly.name) else s


# --- decoding with scapy ----------------------------------------------------------------------

_scapy_ready = False


def _scapy() -> None:
    """Import the few scapy layers needed (not scapy.all: about 0.17 s against 0.4-0.7 s on
    the CI machine) and make sure VXLAN is dissected on Flannel's port 8472 as well as on 4789."""
    global _scapy_ready
    from scapy.layers import dns, inet, inet6, l2, vxlan  # noqa: F401 (registers layers)
    from scapy.packet import bind_layers
    if not _scapy_ready:
        for port in VXLAN_PORTS:
            if not any(cls is vxlan.VXLAN and fv == {"dport": port}
                       for fv, cls in inet.UDP.payload_guess):
                bind_layers(inet.UDP, vxlan.VXLAN, dport=port)
        _scapy_ready = True


def decode_pcap(path: str | Path, interfaces: Mapping[int, str] | None = None
                ) -> list[Packet]:
    """Decode every frame of a pcap file (Ethernet or Linux cooked SLL/SLL2 link layer).

    `interfaces` maps interface indexes to names, for SLL2 (`-i any`) captures: the pcap
    only stores the index, which means something only in the netns the capture ran in.
    """
    _scapy()
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapReader

    path = Path(path)
    if not path.exists():
        raise LabError(f"no pcap file {path}")
    if path.stat().st_size == 0:
        return []  # tcpdump had not written its header yet
    out: list[Packet] = []
    try:
        reader = PcapReader(str(path))
    except Scapy_Exception as e:
        raise LabError(f"{path} is not a pcap file tcpdump could have written: {e}") from None
    with reader:
        for n, frame in enumerate(reader, start=1):
            out.append(decode_frame(frame, n, interfaces))
    return out


def decode_frame(frame: Any, number: int = 1, interfaces: Mapping[int, str] | None = None
                 ) -> Packet:
    """Decode one scapy packet (as read from a pcap) into a :class:`Packet`."""
    _scapy()
    raw = bytes(frame)
    layers: list[Layer] = []
    level, quoted = 0, False
    ly = frame
    from scapy.packet import NoPayload
    while ly is not None and not isinstance(ly, NoPayload):
        nxt = ly.payload
        decoded = _decode_layer(ly, level, quoted, interfaces or {})
        layers.append(decoded)
        if decoded.name == "VXLAN":
            level += 1
        elif decoded.name == "ICMP" and decoded.fields.get("error"):
            quoted = True
        elif decoded.name == "UDP" and not quoted:
            nxt = _force_vxlan(ly, nxt)
        ly = nxt
    wire = getattr(frame, "wirelen", None) or len(raw)
    link = layers[0].name if layers else "?"
    if link == "Linux cooked" and layers[0].fields.get("version") == 2:
        link = "Linux cooked v2"
    return Packet(number=number, time=float(getattr(frame, "time", 0.0)), length=int(wire),
                  captured=len(raw), layers=tuple(layers), linktype=link)


def _force_vxlan(udp: Any, payload: Any) -> Any:
    """UDP to a VXLAN port is VXLAN, whatever scapy guessed from the other (random) port."""
    from scapy.layers.vxlan import VXLAN
    if udp.dport not in VXLAN_PORTS or isinstance(payload, VXLAN):
        return payload
    data = bytes(payload)
    if len(data) < 8 or not data[0] & 0x08:  # the I flag: a valid VNI follows
        return payload
    return VXLAN(data)


def _header_len(ly: Any) -> int:
    return max(0, len(ly) - len(ly.payload))


def _text_preview(data: bytes, limit: int = 48) -> str:
    line = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0][:limit]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in line)
    return text + ("…" if len(line) < len(data) else "")


def _decode_layer(ly: Any, level: int, quoted: bool, interfaces: Mapping[int, str]) -> Layer:
    from scapy.layers.dns import DNS
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1Q, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Padding, Raw

    hl = _header_len(ly)

    def make(name: str, summary: str, fields: dict[str, Any], size: int = hl) -> Layer:
        return Layer(name, summary, fields, size, level, quoted)

    if isinstance(ly, Ether):
        etype = _etype(ly.type)
        return make("Ethernet", f"Ethernet {ly.src} → {ly.dst}",
                    {"src": ly.src, "dst": ly.dst, "type": etype})
    if isinstance(ly, CookedLinux):  # SLL2 is a subclass of SLL
        v2 = isinstance(ly, CookedLinuxV2)
        direction = _DIRECTIONS.get(int(ly.pkttype), str(ly.pkttype))
        n = int(ly.lladdrlen)
        src = ":".join(f"{b:02x}" for b in bytes(ly.src)[:min(n, 8)]) if n else ""
        f: dict[str, Any] = {"version": 2 if v2 else 1, "direction": direction, "src": src,
                             "type": _etype(ly.proto)}
        words = ["SLL2" if v2 else "SLL"]
        if v2:
            f["ifindex"] = int(ly.ifindex)
            f["interface"] = interfaces.get(int(ly.ifindex))
            words.append(f["interface"] or f"ifindex {ly.ifindex}")
        words.append(direction)
        if src:
            words.append(f"from {src}")
        return make("Linux cooked", " ".join(words), f)
    if isinstance(ly, Dot1Q):
        return make("802.1Q", f"802.1Q vlan {ly.vlan}", {"vlan": int(ly.vlan),
                                                         "type": _etype(ly.type)})
    if isinstance(ly, IP):  # also IPerror: the header an ICMP error quotes
        proto = _ipproto(ly.proto)
        flags = str(ly.flags)
        offset = int(ly.frag) * 8
        f = {"src": ly.src, "dst": ly.dst, "proto": proto, "len": int(ly.len),
             "ttl": int(ly.ttl), "id": int(ly.id), "DF": "DF" in flags, "MF": "MF" in flags,
             "frag_offset": offset, "tos": int(ly.tos)}
        s = f"IPv4 {ly.src} → {ly.dst} proto {proto} len {ly.len} ttl {ly.ttl}"
        if f["DF"]:
            s += " DF"
        if f["MF"] or offset:
            s += f" fragment id {ly.id} offset {offset}" + (" MF" if f["MF"] else "")
        return make("IPv4", s, f)
    if isinstance(ly, IPv6):
        nh = _ipproto(ly.nh)
        return make("IPv6", f"IPv6 {ly.src} → {ly.dst} next {nh} hlim {ly.hlim}",
                    {"src": ly.src, "dst": ly.dst, "next": nh, "hlim": int(ly.hlim),
                     "plen": int(ly.plen)})
    if isinstance(ly, VXLAN):
        flags = str(ly.flags)
        return make("VXLAN", f"VXLAN VNI {ly.vni}", {"vni": int(ly.vni), "flags": flags})
    if isinstance(ly, UDP):
        return make("UDP", f"UDP {ly.sport} → {ly.dport} len {ly.len}",
                    {"sport": int(ly.sport), "dport": int(ly.dport),
                     "len": None if ly.len is None else int(ly.len)})
    if isinstance(ly, TCP):
        return _tcp(ly, make)
    if isinstance(ly, ICMP):
        return _icmp(ly, make)
    if isinstance(ly, ARP):
        op = {1: "who-has", 2: "reply"}.get(int(ly.op), f"op {ly.op}")
        f = {"op": op, "psrc": ly.psrc, "pdst": ly.pdst, "hwsrc": ly.hwsrc, "hwdst": ly.hwdst}
        s = (f"ARP who-has {ly.pdst} tell {ly.psrc}" if op == "who-has" else
             f"ARP reply {ly.psrc} is-at {ly.hwsrc}" if op == "reply" else f"ARP {op}")
        return make("ARP", s, f)
    if isinstance(ly, DNS):
        return _dns(ly, make)
    if isinstance(ly, Padding):
        data = bytes(ly.load)
        return make("Padding", f"Padding {len(data)} bytes", {"data": data}, len(data))
    if isinstance(ly, Raw):
        data = bytes(ly.load)
        under = ly.underlayer
        frag = under is not None and under.__class__.__name__ in ("IP", "IPerror") and \
            int(under.frag) > 0
        s = f"Payload {len(data)} bytes"
        if frag:
            s += " (fragment data)"
        elif data:
            s += f" {_text_preview(data)!r}"
        return make("Payload", s, {"data": data, "fragment": frag}, len(data))
    # anything else scapy knows (ICMPv6, …): its own name and summary
    name = getattr(ly, "name", ly.__class__.__name__)
    try:
        s = ly.mysummary()
        s = s if isinstance(s, str) else name
    except Exception:
        s = name
    return make(name, s if s.startswith(name) else f"{name} {s}".strip(), {})


def _tcp(ly: Any, make: Callable[..., Layer]) -> Layer:
    letters = str(ly.flags)
    flags = "".join(t for s, t in _TCP_FLAGS if s in letters)
    from scapy.packet import Padding
    pad = ly.payload.getlayer(Padding)  # an Ethernet frame's trailing zeros are not data
    data_len = len(ly.payload) - (len(pad) if pad is not None else 0)
    f = {"sport": int(ly.sport), "dport": int(ly.dport), "flags": flags, "seq": int(ly.seq),
         "ack": int(ly.ack), "win": int(ly.window), "len": data_len}
    s = f"TCP {ly.sport} → {ly.dport} [{flags}] seq {ly.seq}"
    if "." in flags:
        s += f" ack {ly.ack}"
    s += f" win {ly.window} len {data_len}"
    opts = ly.options if isinstance(ly.options, list) else []
    mss = [v for k, v in opts if k == "MSS"]
    if mss:
        f["mss"] = int(mss[0])
        s += f" mss {mss[0]}"
    return make("TCP", s, f)


def _icmp(ly: Any, make: Callable[..., Layer]) -> Layer:
    t, code = int(ly.type), int(ly.code)
    tname = ly.get_field("type").i2repr(ly, t)
    cname = ly.get_field("code").i2repr(ly, code) if t in (3, 5, 11, 12) else str(code)
    f: dict[str, Any] = {"type": t, "code": code, "type_name": tname, "code_name": cname,
                         "error": t in (3, 4, 5, 11, 12)}
    s = f"ICMP {tname}"
    if t in (0, 8):
        f.update(id=int(ly.id), seq=int(ly.seq))
        s += f" id {ly.id} seq {ly.seq}"
    elif t == 3 and code == 4:
        mtu = int(ly.nexthopmtu)
        f["next_hop_mtu"] = mtu
        s = f"ICMP fragmentation needed (dest-unreach code 4), next-hop MTU {mtu}"
    elif f["error"]:
        s += f" {cname}"
    return make("ICMP", s, f, 8)


def _dns(ly: Any, make: Callable[..., Layer]) -> Layer:
    qd = ly.qd[0] if ly.qd else None
    qname = qd.qname.decode(errors="replace") if qd is not None else ""
    qtype = qd.sprintf("%qtype%") if qd is not None else ""
    f: dict[str, Any] = {"id": int(ly.id), "response": bool(ly.qr), "qname": qname,
                         "qtype": qtype, "rcode": ly.sprintf("%rcode%")}
    answers = []
    for rr in (ly.an or []):
        rdata = rr.rdata
        answers.append(rdata.decode(errors="replace") if isinstance(rdata, bytes)
                       else str(rdata))
    f["answers"] = answers
    if ly.qr:
        s = f"DNS response {qtype} {qname} {f['rcode']}" + (
            f" → {', '.join(answers)}" if answers else "")
    else:
        s = f"DNS query {qtype} {qname}"
    return make("DNS", s, f, 12)


def _etype(value: int) -> str:
    return {0x0800: "IPv4", 0x0806: "ARP", 0x86DD: "IPv6", 0x8100: "802.1Q"}.get(
        int(value), f"0x{int(value):04x}")


def _ipproto(value: int) -> str:
    return {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 47: "GRE", 4: "IPIP"}.get(
        int(value), str(value))


# --- the capture -----------------------------------------------------------------------------

class Capture:
    """The packets one tcpdump run captured: a real pcap file and its decoded frames.

    `cap[i]` is a :class:`Packet`; `cap.filter(...)`, `cap.with_layer(...)` and slices give
    another Capture over the same pcap (row numbers restart from 0 in each view).
    """

    max_rows = 200  # rows shown in a notebook

    def __init__(self, pcap: str | Path, packets: Sequence[Packet], *,
                 command: Sequence[str] = (), netns: str | None = None,
                 where: str | None = None, interface: str | None = None, bpf: str = "",
                 stats: Mapping[str, int] | None = None,
                 interfaces: Mapping[int, str] | None = None, t0: float | None = None,
                 stderr: str = "", result: Any = None) -> None:
        self.pcap = Path(pcap)
        self.packets = list(packets)
        self.command = list(command)  # the tcpdump argv
        self.netns = netns
        self.where = where
        self.interface = interface
        self.bpf = bpf
        self.stats = dict(stats or {})
        self.interfaces = dict(interfaces or {})
        self.stderr = stderr  # what tcpdump printed (besides the packets)
        self.result = result  # what the `during` callable returned (a ProbeResult, say)
        self.t0 = t0 if t0 is not None else (self.packets[0].time if self.packets else 0.0)

    # loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, pcap: str | Path) -> Capture:
        """Decode any pcap file; a capture's own metadata (`<pcap>.json`) is used if present."""
        pcap = Path(pcap)
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(_meta_path(pcap).read_text())
        interfaces = {int(k): v for k, v in meta.get("interfaces", {}).items()}
        return cls(pcap, decode_pcap(pcap, interfaces), command=meta.get("command", ()),
                   netns=meta.get("netns"), where=meta.get("where"),
                   interface=meta.get("interface"), bpf=meta.get("filter", ""),
                   stats=meta.get("stats"), interfaces=interfaces)

    def _view(self, packets: Sequence[Packet]) -> Capture:
        return Capture(self.pcap, packets, command=self.command, netns=self.netns,
                       where=self.where, interface=self.interface, bpf=self.bpf,
                       stats=self.stats, interfaces=self.interfaces, t0=self.t0,
                       stderr=self.stderr, result=self.result)

    # selection -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.packets)

    def __iter__(self) -> Iterator[Packet]:
        return iter(self.packets)

    @overload
    def __getitem__(self, i: int) -> Packet: ...

    @overload
    def __getitem__(self, i: slice) -> Capture: ...

    def __getitem__(self, i: int | slice) -> Packet | Capture:
        if isinstance(i, slice):
            return self._view(self.packets[i])
        return self.packets[i]

    def index(self, packet: Packet) -> int:
        """The row of `packet` in this capture (what `layers(i)` takes)."""
        for i, p in enumerate(self.packets):
            if p is packet:
                return i
        raise ValueError(f"frame {packet.number} is not in this capture")

    def filter(self, predicate: Callable[[Packet], bool] | None = None, *,
               layer: str | None = None, **fields: Any) -> Capture:
        """Packets for which `predicate(packet)` is true and, if `layer` or `fields` are
        given, that have a layer (called `layer`, any if None) whose fields equal `fields`.

            cap.filter(layer="TCP", dport=8080, flags="S")
            cap.filter(layer="IPv4", src=pod_a.ip)      # outer or inner header
            cap.filter(lambda p: p.payload.startswith(b"GET"))
        """
        def layer_ok(p: Packet) -> bool:
            if layer is None and not fields:
                return True
            return any((layer is None or ly.name == layer) and
                       all(k in ly.fields and _same(ly.fields[k], v) for k, v in fields.items())
                       for ly in p.layers)
        return self._view([p for p in self.packets
                           if (predicate is None or predicate(p)) and layer_ok(p)])

    def with_layer(self, name: str) -> Capture:
        """Packets that have a layer called `name` ("VXLAN", "TCP", "ARP", "ICMP", …)."""
        return self.filter(layer=name)

    # views ---------------------------------------------------------------------------------

    @property
    def shell_command(self) -> str:
        """The tcpdump command as a learner types it in a root shell."""
        if not self.command:
            return ""
        return kernel.JournalEntry(0.0, self.netns, self.command, 0).command()

    def _rel(self, p: Packet) -> float:
        return p.time - self.t0

    def summary(self) -> str:
        """One line per packet: row, seconds since the first packet, bytes, layers."""
        if not self.packets:
            return "(no packets)" + (f" — tcpdump: {self._stats_text()}" if self.stats else "")
        return "\n".join(f"#{i:<3} {self._rel(p):9.6f}s {p.length:>5} B  {p.summary()}"
                         for i, p in enumerate(self.packets))

    __str__ = summary

    def layers(self, i: int) -> str:
        """Packet `i` as a tree, one header per line, with each header's size in bytes."""
        p = self.packets[i]
        return f"#{i} at {self._rel(p):.6f}s, " + p.tree()

    def _stats_text(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.stats.items())

    def to_dicts(self) -> list[dict[str, Any]]:
        """Every packet as a JSON-ready dict (`lab-kit capture -o json`)."""
        return [p.to_dict() for p in self.packets]

    def __repr__(self) -> str:
        where = f" on {self.where}" if self.where else ""
        iface = f" -i {self.interface}" if self.interface else ""
        return f"<Capture {len(self)} packets{where}{iface} {self.pcap}>"

    def tcpdump_text(self, options: Sequence[str] = ("-nn", "-e", "-v")) -> str:
        """tcpdump's own decoding of the pcap: `tcpdump -r <pcap> -nn -e -v`.

        tcpdump calls UDP port 8472 "OTV" (Cisco's overlay, which uses the same port and the
        same 8-byte header): its "instance 1" is the VXLAN VNI. An `-i any` capture stores
        interface indexes, which mean something only inside the capture's netns: tcpdump runs
        there while it exists (`cap.interfaces` keeps the names for later).
        """
        argv = ["tcpdump", "-r", str(self.pcap), *options]
        # in the capture's netns, tcpdump names SLL2 interface indexes correctly
        netns = self.netns if self.netns and kernel.netns_exists(self.netns) else None
        done = kernel.Runner().run(argv, netns, check=False, record=False, timeout=60)
        if done.rc == 127:  # not found, whether exec'd directly or by nsenter
            raise LabError("tcpdump is not installed (Debian: apt-get install tcpdump)")
        if done.rc != 0:
            raise LabError(f"`{' '.join(argv)}` exited {done.rc}: {done.stderr.strip()}")
        return done.stdout

    def save(self, dest: str | Path) -> Path:
        """Copy the pcap out of the state dir (`down` removes the original), e.g. for
        Wireshark."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / self.pcap.name
        shutil.copyfile(self.pcap, dest)
        return dest

    def _repr_html_(self) -> str:
        esc = html.escape
        head = f"<b>{len(self)} packets</b>"
        if self.where:
            head += f" captured in <b>{esc(self.where)}</b>"
        if self.interface:
            head += f" on <code>{esc(self.interface)}</code>"
        if self.bpf:
            head += f", filter <code>{esc(self.bpf)}</code>"
        if self.stats.get("dropped by kernel"):
            head += (f' <b style="color:#cf222e">({self.stats["dropped by kernel"]} packets '
                     "dropped by the kernel)</b>")
        cmd = (f'<div style="color:#57606a">$ <code>{esc(self.shell_command)}</code></div>'
               if self.command else "")
        rows = []
        for i, p in enumerate(self.packets[:self.max_rows]):
            rows.append(f'<tr><td style="text-align:right">{i}</td>'
                        f'<td style="text-align:right">{self._rel(p):.6f}</td>'
                        f'<td style="text-align:right">{p.length}</td>'
                        f'<td style="text-align:left">{_html_layers(p)}</td></tr>')
        more = len(self) - self.max_rows
        if more > 0:
            rows.append(f'<tr><td colspan="4">… {more} more (use cap[{self.max_rows}:] or '
                        "cap.filter(…))</td></tr>")
        if not rows:
            rows.append('<tr><td colspan="4">(no packets)</td></tr>')
        return (f'<div class="lab-kit-capture"><div>{head}</div>{cmd}'
                '<table><tr><th>#</th><th>time (s)</th><th>bytes</th>'
                '<th style="text-align:left">layers (outermost first)</th></tr>'
                f'{"".join(rows)}</table></div>')


def _same(have: Any, want: Any) -> bool:
    return have == want or (isinstance(have, str) and not isinstance(want, str)
                            and have == str(want))


def _meta_path(pcap: Path) -> Path:
    return pcap.with_name(pcap.name + ".json")


# --- HTML: layers as chips, encapsulations as nested boxes -----------------------------------

_FAMILY = {"Ethernet": "link", "Linux cooked": "link", "802.1Q": "link", "IPv4": "net",
           "IPv6": "net", "ARP": "net", "UDP": "l4", "TCP": "l4", "VXLAN": "tunnel",
           "ICMP": "icmp"}
_COLOURS = {"link": ("#eaeef2", "#8c959f"), "net": ("#ddf4ff", "#0969da"),
            "l4": ("#dafbe1", "#1a7f37"), "tunnel": ("#fff1e5", "#bc4c00"),
            "icmp": ("#ffebe9", "#cf222e"), "data": ("#fbefff", "#8250df")}


def _chip(ly: Layer) -> str:
    bg, border = _COLOURS[_FAMILY.get(ly.name, "data")]
    tip = "\n".join([f"{ly.name}: {ly.header_len} bytes"] + [
        f"{k}: {v!r}" if isinstance(v, bytes) else f"{k}: {v}"
        for k, v in ly.fields.items() if not (isinstance(v, bytes) and len(v) > 64)])
    size = f"{ly.header_len} B"
    return (f'<span title="{html.escape(tip)}" style="display:inline-block;margin:1px 2px;'
            f"padding:0 4px;border:1px solid {border};border-radius:4px;background:{bg};"
            f'font-family:monospace;font-size:90%;white-space:nowrap">'
            f"<b>{html.escape(ly.name)}</b> {html.escape(_detail(ly))} "
            f'<small style="color:#57606a">{size}</small></span>')


def _box(label: str, colour: str, style: str, body: str) -> str:
    return (f'<div style="display:inline-block;vertical-align:middle;margin:1px;'
            f'padding:1px 3px;border:2px {style} {colour};border-radius:6px">'
            f'<small style="color:{colour}">{html.escape(label)}</small> {body}</div>')


def _html_layers(p: Packet) -> str:
    """Chips for the layers; an encapsulated packet's inner headers sit in a box nested in the
    box of the outer (underlay) headers, and an ICMP error's quoted headers in their own box."""
    segments: list[tuple[tuple[int, bool], list[Layer]]] = []
    for ly in p.layers:
        key = (ly.level, ly.quoted)
        if not segments or segments[-1][0] != key:
            segments.append((key, []))
        segments[-1][1].append(ly)
    body = ""
    for (level, quoted), layers in reversed(segments):
        chips = "".join(_chip(ly) for ly in layers)
        inner = chips + (" " + body if body else "")
        if quoted:
            body = _box("quoted original packet", "#cf222e", "dotted", inner)
        elif level > 0:
            body = _box(f"inner headers (overlay){' ×' + str(level) if level > 1 else ''}",
                        "#8250df", "dashed", inner)
        elif p.encapsulated:
            body = _box("outer headers (underlay)", "#bc4c00", "solid", inner)
        else:
            body = inner
    return body


# --- running tcpdump --------------------------------------------------------------------------

def resolve(cluster: Cluster, where: str | Shell) -> tuple[str, str]:
    """(label, netns) of a node, a pod (`name`, `ns/name`, a unique prefix) or `external`;
    a Node or PodShell object (`c.node(…)`, `c.pod(…)`) also works."""
    from lab_kit.cluster import Shell  # late: capture is imported by cluster on demand

    if not isinstance(where, (str, Shell)):
        raise LabError(f"cannot capture in {where!r}: give a node name, a pod name or "
                       "`external`")
    try:
        label, netns, _ = cluster.endpoint(where)
    except LabError as e:
        raise LabError(f"cannot capture in `{where}`: {e}") from None
    return label, netns


def netns_interfaces(netns: str) -> dict[int, str]:
    """{ifindex: name} of every interface in `netns` (read, not journaled)."""
    links = kernel.Runner().json(["ip", "-j", "link", "show"], netns)
    return {int(ln["ifindex"]): ln["ifname"] for ln in links if "ifindex" in ln}


class _Tcpdump:
    """A tcpdump process in a netns whose stderr is read by a thread (to see "listening on"
    and, at the end, its packet counts)."""

    def __init__(self, argv: list[str], netns: str) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.killed = False
        # a session of its own: a Ctrl-C in the terminal reaches Python, which then stops
        # tcpdump cleanly in `finally` (the pcap gets flushed either way)
        self.proc = subprocess.Popen(kernel.in_netns_argv(argv, netns), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace", start_new_session=True,
                                     close_fds=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self.listening.set()
        self.listening.set()  # EOF: tcpdump is gone; wake whoever waits

    @property
    def is_listening(self) -> bool:
        return any("listening on" in ln for ln in self.lines)

    def wait_exit(self, seconds: float | None) -> None:
        """Wait up to `seconds` (None: no limit) for tcpdump to exit by itself (`-c N`)."""
        try:
            self.proc.wait(timeout=None if seconds is None else max(0.0, seconds))
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> int:
        """SIGINT (tcpdump flushes the pcap and prints its counts), then SIGKILL if needed."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=2)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    @property
    def message(self) -> str:
        return "\n".join(ln for ln in self.lines if not ln.startswith(
            ("tcpdump: listening on", "tcpdump: data link type"))).strip()


_STATS_RE = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)")


def _stats(lines: list[str]) -> dict[str, int]:
    out = {}
    for ln in lines:
        m = _STATS_RE.match(ln.strip())
        if m:
            out[m.group(2)] = int(m.group(1))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _start_error(where: str, netns: str, argv: list[str], bpf: str, message: str) -> LabError:
    msg = message.removeprefix("tcpdump: ").strip() or "(no output)"
    filter_words = ("filter", "syntax error", "expression", "illegal", "unknown host",
                    "unknown port", "unknown protocol", "qualifier", "not a network")
    if bpf and any(w in msg for w in filter_words):
        return LabError(f"tcpdump rejected the capture filter {bpf!r}: {msg} — "
                        "see `man pcap-filter` for the syntax, e.g. 'tcp port 8080', "
                        "'udp port 8472', 'host 10.244.1.2', 'icmp or arp'")
    return LabError(f"tcpdump could not start in `{where}` (netns `{netns}`): {msg} — the "
                    f"command was `{' '.join(argv)}`")


def capture(cluster: Cluster, where: str | Shell, *, interface: str = "any", filter: str = "",
            count: int | None = None, seconds: float | None = 2.0,
            during: Callable[[], Any] | None = None, settle: float = 0.3,
            snaplen: int | None = None, source: str = "you") -> Capture:
    """Run real tcpdump in the netns of `where` and return the decoded packets.

    - `where`: a node name, a pod (`web-1`, `default/web-1`, a unique prefix) or `external`.
    - `interface`: `any` (every interface, Linux cooked headers) or one name; on a node,
      `eth0` shows the underlay, i.e. the encapsulated (VXLAN) packets.
    - `filter`: a BPF capture filter as tcpdump takes it (`tcp port 8080`, `udp port 8472`).
    - `count`: stop after this many packets (tcpdump's `-c`).
    - `during`: a callable run once tcpdump is listening (e.g. `lambda: c.probe("a", "b")`);
      its return value is `Capture.result`. After it returns, tcpdump keeps capturing for
      `settle` seconds (the last packets in flight), or, with `count`, until `count`
      packets arrived but at most `seconds`.
    - Without `during`: capture for `seconds`, or until `count` packets arrived; with
      `seconds=None`, until then or until interrupted (Ctrl-C, or "interrupt the kernel" in
      Jupyter), which stops tcpdump and returns what it captured.
    - `snaplen`: bytes kept of each packet (tcpdump's `-s`, default 65535).
    - `source`: who the journal says ran tcpdump: "you" (the learner), or "lab_kit" when a
      lab's check captures for its own evidence.

    The pcap is written under the cluster's state dir (`captures/`); `down` removes it
    (`Capture.save()` copies it out). The tcpdump command goes into the cluster's journal.
    """
    label, netns = resolve(cluster, where)
    if not kernel.netns_exists(netns):
        raise LabError(f"cannot capture in `{label}`: its network namespace `{netns}` is "
                       "gone — is the cluster up? (`lab-kit status`)")
    if shutil.which("tcpdump") is None:
        raise LabError("tcpdump is not installed (Debian: apt-get install tcpdump)")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise LabError(f"count must be a positive number of packets, not {count!r}")
    if (seconds is not None and seconds < 0) or settle < 0:
        raise LabError("seconds and settle must not be negative")
    interfaces = netns_interfaces(netns)
    if interface != "any" and interface not in interfaces.values():
        raise LabError(f"no interface `{interface}` in `{label}` (netns `{netns}`); "
                       f"interfaces there: {', '.join(sorted(interfaces.values()))}, or "
                       "`any` for all of them")
    bpf = " ".join(filter.split())
    folder = cluster.store.dir / "captures"
    folder.mkdir(parents=True, exist_ok=True)
    pcap = folder / (f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(label)}-{_slug(interface)}-"
                     f"{uuid.uuid4().hex[:6]}.pcap")
    # -U: write each packet to the pcap at once. --immediate-mode: libpcap hands over each
    # packet at once; without it, packets still in the kernel's ring buffer when tcpdump is
    # stopped are lost. Immediate mode uses one ring slot per packet, on `-i any` each `-s`
    # bytes big: with the default 256 KiB snapshot and 2 MiB buffer (< 8 slots), a burst of 10
    # UDP packets over a veth lost 1-2 ("dropped by kernel") in 6 of 8 runs on the CI machine
    # (tcpdump 4.99.3, libpcap 1.10.3), and none with 64 KiB (a whole GSO packet) and 8 MiB.
    argv = ["tcpdump", "-w", str(pcap), "-U", "--immediate-mode", "-s",
            str(int(snaplen or SNAPLEN)), "-B", str(BUFFER_KIB), "-n", "-i", interface]
    if count is not None:
        argv += ["-c", str(count)]
    if bpf:
        argv.append(bpf)

    t_start = time.time()
    proc = _Tcpdump(argv, netns)
    result: Any = None
    try:
        if not proc.listening.wait(LISTEN_TIMEOUT):
            raise LabError(f"tcpdump did not start listening in `{label}` within "
                           f"{LISTEN_TIMEOUT:g} s")
        started = proc.is_listening  # if not, it exited: a bad filter, say
        cluster.runner.journal.add(kernel.JournalEntry(
            t=t_start, netns=netns, argv=argv, rc=0 if started else proc.stop(), source=source))
        if not started:
            raise _start_error(label, netns, argv, bpf, proc.message)
        if during is not None:
            result = during()
            proc.wait_exit(seconds if count is not None else settle)
        else:
            try:
                proc.wait_exit(seconds)
            except KeyboardInterrupt:
                pass  # the learner's way of saying "stop": keep what was captured
    finally:
        proc.stop()
    stats = _stats(proc.lines)
    if proc.killed:
        warnings.warn(f"tcpdump in `{label}` did not stop on SIGINT within {STOP_TIMEOUT:g} s "
                      "and was killed; the pcap may miss its last packets", RuntimeWarning,
                      stacklevel=2)
    if stats.get("dropped by kernel"):
        warnings.warn(f"tcpdump in `{label}` lost {stats['dropped by kernel']} packets "
                      "(dropped by kernel: its buffer was full); use a narrower filter",
                      RuntimeWarning, stacklevel=2)
    interfaces.update(netns_interfaces(netns))  # interfaces made during the capture
    meta = {"where": label, "netns": netns, "interface": interface, "filter": bpf,
            "command": argv, "started": t_start, "stats": stats,
            "interfaces": {str(k): v for k, v in interfaces.items()}}
    _meta_path(pcap).write_text(json.dumps(meta, indent=1))
    packets = decode_pcap(pcap, interfaces) if pcap.exists() else []
    return Capture(pcap, packets, command=argv, netns=netns, where=label, interface=interface,
                   bpf=bpf, stats=stats, interfaces=interfaces, stderr=proc.message,
                   result=result)


__all__ = ["Capture", "Layer", "Packet", "VXLAN_PORTS", "capture", "decode_frame",
           "decode_pcap", "netns_interfaces", "resolve"]
