"""Decoding pcaps into layers (no root): pcaps are written with scapy, then read back."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import wrpcap

from lab_kit.capture import Capture, _start_error, decode_pcap
from lab_kit.errors import LabError

NODE_A, NODE_B = "172.18.0.3", "172.18.0.4"
POD_A, POD_B = "10.244.1.2", "10.244.2.3"
MAC_A, MAC_B = "02:42:ac:12:00:03", "02:42:ac:12:00:04"
VTEP_A, VTEP_B = "0e:00:0a:f4:01:00", "0e:00:0a:f4:02:00"


def inner_syn() -> Ether:
    return (Ether(src=VTEP_A, dst=VTEP_B) / IP(src=POD_A, dst=POD_B, flags="DF", ttl=63)
            / TCP(sport=41234, dport=8080, flags="S", seq=1000, options=[("MSS", 1410)]))


def vxlan_frame(sport: int = 51234, dport: int = 8472) -> bytes:
    """Outer Ether/IP/UDP to `dport`, then VXLAN VNI 1 and the inner frame, as raw bytes: the
    decoder must recognise VXLAN from the port alone, as in a real capture."""
    vxlan = bytes(VXLAN(flags=0x08, vni=1) / inner_syn())
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=NODE_A, dst=NODE_B)
                 / UDP(sport=sport, dport=dport) / Raw(vxlan))


def http_request() -> Ether:
    return (Ether(src="0a:58:0a:f4:01:02", dst="0a:58:0a:f4:01:01")
            / IP(src=POD_A, dst=POD_B, flags="DF")
            / TCP(sport=41234, dport=8080, flags="PA", seq=1001, ack=7)
            / Raw(b"GET /hostname HTTP/1.0\r\nHost: 10.244.2.3\r\n\r\n"))


def write(tmp_path: Path, name: str, frames: list) -> Path:
    path = tmp_path / name
    wrpcap(str(path), frames)
    return path


def names(p) -> list[str]:
    return [ly.name for ly in p.layers]


# --- VXLAN ----------------------------------------------------------------------------------

def test_vxlan_on_flannel_port_8472_decodes_outer_and_inner_headers(tmp_path: Path) -> None:
    [p] = decode_pcap(write(tmp_path, "vx.pcap", [Ether(vxlan_frame())]))
    assert names(p) == ["Ethernet", "IPv4", "UDP", "VXLAN", "Ethernet", "IPv4", "TCP"]
    assert [ly.level for ly in p.layers] == [0, 0, 0, 0, 1, 1, 1]
    outer_ip, inner_ip = p.all("IPv4")
    assert (outer_ip["src"], outer_ip["dst"], outer_ip["proto"]) == (NODE_A, NODE_B, "UDP")
    assert (inner_ip["src"], inner_ip["dst"], inner_ip["proto"]) == (POD_A, POD_B, "TCP")
    assert p.layer("IPv4", -1) is inner_ip
    assert inner_ip["DF"] and not outer_ip["DF"]
    assert p.layer("UDP")["dport"] == 8472 and p.layer("UDP")["sport"] == 51234
    assert p.layer("VXLAN")["vni"] == 1
    assert p.layer("Ethernet", 1)["src"] == VTEP_A
    tcp = p.layer("TCP")
    assert (tcp["sport"], tcp["dport"], tcp["flags"], tcp["seq"], tcp["mss"]) == \
        (41234, 8080, "S", 1000, 1410)
    assert p.encapsulated and p.linktype == "Ethernet"
    assert p.length == p.captured == len(vxlan_frame())
    # header sizes: the 50 bytes VXLAN adds in front of the inner IP packet
    sizes = {(ly.name, ly.level): ly.header_len for ly in p.layers}
    assert sizes == {("Ethernet", 0): 14, ("IPv4", 0): 20, ("UDP", 0): 8, ("VXLAN", 0): 8,
                     ("Ethernet", 1): 14, ("IPv4", 1): 20, ("TCP", 1): 24}
    assert p.overhead() == 50
    assert [ly.name for ly in p.overhead_layers()] == ["IPv4", "UDP", "VXLAN", "Ethernet"]


def test_vxlan_is_recognised_whatever_the_random_source_port(tmp_path: Path) -> None:
    # the kernel picks the source port from a flow hash; scapy binds some ports to other
    # protocols (53: DNS) — the destination port 8472 must win
    frames = [Ether(vxlan_frame(sport=53)), Ether(vxlan_frame(sport=4500)),
              Ether(vxlan_frame(dport=4789))]
    for p in decode_pcap(write(tmp_path, "ports.pcap", frames)):
        assert names(p)[3:] == ["VXLAN", "Ethernet", "IPv4", "TCP"], p.summary()
        assert p.layer("VXLAN")["vni"] == 1


def test_udp_to_8472_that_is_not_vxlan_is_left_alone(tmp_path: Path) -> None:
    frame = Ether() / IP(src=NODE_A, dst=NODE_B) / UDP(sport=40000, dport=8472) / Raw(b"\x00hi")
    [p] = decode_pcap(write(tmp_path, "short.pcap", [frame]))
    assert names(p) == ["Ethernet", "IPv4", "UDP", "Payload"]


def test_vxlan_tree_counts_every_header(tmp_path: Path) -> None:
    cap = Capture.load(write(tmp_path, "vx.pcap", [Ether(vxlan_frame())]))
    tree = cap.layers(0)
    lines = tree.splitlines()
    assert lines[0].startswith("#0 at 0.000000s, frame 1: 108 bytes on the wire")
    assert lines[1] == f"  Ethernet, 14 bytes: {MAC_A} → {MAC_B}"
    assert lines[2].startswith(f"    IPv4, 20 bytes: {NODE_A} → {NODE_B} proto UDP")
    assert lines[3] == "      UDP, 8 bytes: 51234 → 8472 len 74"
    assert lines[4] == "        VXLAN, 8 bytes: VNI 1"
    assert lines[5] == f"          Ethernet (inner), 14 bytes: {VTEP_A} → {VTEP_B}"
    assert lines[6].startswith(f"            IPv4 (inner), 20 bytes: {POD_A} → {POD_B}")
    assert lines[7].startswith("              TCP (inner), 24 bytes: 41234 → 8080 [S] seq 1000")
    assert lines[8] == ("encapsulation overhead: 50 bytes in front of the inner IP packet "
                        "(outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14)")


# --- link layers ----------------------------------------------------------------------------

def pcap_linktype(path: Path) -> int:
    return struct.unpack("<I", path.read_bytes()[20:24])[0]


def test_cooked_sll_capture(tmp_path: Path) -> None:
    frame = (CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=b"\x0a\x58\x0a\xf4\x01\x02",
                         proto=0x0800) / http_request()[IP])
    path = write(tmp_path, "sll.pcap", [frame])
    assert pcap_linktype(path) == 113  # LINKTYPE_LINUX_SLL: what `tcpdump -i any` writes
    [p] = decode_pcap(path)
    assert names(p) == ["Linux cooked", "IPv4", "TCP", "Payload"]
    sll = p.layers[0]
    assert sll.header_len == 16 and sll["version"] == 1
    assert (sll["direction"], sll["src"], sll["type"]) == ("Out", "0a:58:0a:f4:01:02", "IPv4")
    assert p.direction == "Out" and p.interface is None
    assert p.linktype == "Linux cooked"
    assert p.summary().startswith("SLL Out from 0a:58:0a:f4:01:02 / IPv4 10.244.1.2 → ")
    assert p.payload.startswith(b"GET /hostname HTTP/1.0")


def test_cooked_sll2_capture_names_the_interface(tmp_path: Path) -> None:
    frame = (CookedLinuxV2(proto=0x0800, ifindex=2, lladdrtype=1, pkttype=0, lladdrlen=6,
                           src=bytes.fromhex("0242ac120003")) / IP(vxlan_frame()[14:]))
    path = write(tmp_path, "sll2.pcap", [frame])
    assert pcap_linktype(path) == 276  # LINKTYPE_LINUX_SLL2
    [p] = decode_pcap(path, {1: "lo", 2: "eth0"})
    assert names(p) == ["Linux cooked", "IPv4", "UDP", "VXLAN", "Ethernet", "IPv4", "TCP"]
    assert p.layers[0].header_len == 20 and p.linktype == "Linux cooked v2"
    assert (p.interface, p.direction) == ("eth0", "In")
    assert p.layers[0].summary == f"SLL2 eth0 In from {MAC_A}"
    assert p.overhead() == 50  # the same 50 bytes, whatever the capture's link layer
    [unnamed] = decode_pcap(path)
    assert unnamed.interface is None and "ifindex 2" in unnamed.layers[0].summary


# --- ICMP, fragments, ARP -------------------------------------------------------------------

def test_icmp_fragmentation_needed_with_next_hop_mtu(tmp_path: Path) -> None:
    quoted = IP(src=POD_A, dst=POD_B, flags="DF", len=1500) / TCP(sport=41234, dport=8080)
    frame = (Ether() / IP(src="10.244.1.1", dst=POD_A)
             / ICMP(type=3, code=4, nexthopmtu=1450) / Raw(bytes(quoted)[:28]))
    [p] = decode_pcap(write(tmp_path, "icmp.pcap", [frame]))
    assert names(p)[:3] == ["Ethernet", "IPv4", "ICMP"]
    icmp = p.layer("ICMP")
    assert (icmp["type"], icmp["code"], icmp["next_hop_mtu"], icmp["error"]) == (3, 4, 1450,
                                                                                  True)
    assert icmp.header_len == 8
    assert "fragmentation needed" in icmp.summary and "next-hop MTU 1450" in icmp.summary
    # the header of the packet that was too big, quoted by the ICMP message
    q_ip = p.layer("IPv4", 1)
    assert q_ip.quoted and (q_ip["src"], q_ip["dst"], q_ip["len"], q_ip["DF"]) == \
        (POD_A, POD_B, 1500, True)
    assert all(ly.quoted for ly in p.layers[3:]) and not any(ly.quoted for ly in p.layers[:3])
    assert not p.encapsulated
    assert "(quoted by ICMP)" in Capture.load(p_path := tmp_path / "icmp.pcap").layers(0)
    assert "quoted original packet" in Capture.load(p_path)._repr_html_()


def test_echo_request_and_reply(tmp_path: Path) -> None:
    frames = [Ether() / IP(src=POD_A, dst=POD_B) / ICMP(type=8, id=7, seq=1) / Raw(b"x" * 56),
              Ether() / IP(src=POD_B, dst=POD_A) / ICMP(type=0, id=7, seq=1) / Raw(b"x" * 56)]
    req, rep = decode_pcap(write(tmp_path, "ping.pcap", frames))
    assert req.layer("ICMP").summary == "ICMP echo-request id 7 seq 1"
    assert rep.layer("ICMP").summary == "ICMP echo-reply id 7 seq 1"
    assert not req.layer("ICMP")["error"] and req.layer("Payload").header_len == 56


def test_ip_fragments(tmp_path: Path) -> None:
    big = IP(src=POD_A, dst=POD_B, id=0x1234) / UDP(sport=5000, dport=8081) / Raw(b"y" * 3000)
    frames = [Ether() / f for f in big.fragment(1480)]
    first, middle, last = decode_pcap(write(tmp_path, "frag.pcap", frames))
    ips = [p.layer("IPv4") for p in (first, middle, last)]
    assert [(ip["MF"], ip["frag_offset"], ip["id"]) for ip in ips] == \
        [(True, 0, 0x1234), (True, 1480, 0x1234), (False, 2960, 0x1234)]
    assert names(first) == ["Ethernet", "IPv4", "UDP", "Payload"]  # the UDP header is in it
    assert names(middle) == ["Ethernet", "IPv4", "Payload"]  # only data after offset 0
    assert middle.layer("Payload")["fragment"] and middle.layer("Payload").header_len == 1480
    assert "fragment id 4660 offset 1480 MF" in ips[1].summary
    assert "fragment id 4660 offset 2960" in ips[2].summary and "MF" not in ips[2].summary
    assert "(fragment data)" in middle.summary()


def test_arp_request_and_reply(tmp_path: Path) -> None:
    frames = [Ether(src=VTEP_A, dst="ff:ff:ff:ff:ff:ff")
              / ARP(op=1, hwsrc=VTEP_A, psrc="10.244.1.1", pdst=POD_A),
              Ether(src=VTEP_B, dst=VTEP_A)
              / ARP(op=2, hwsrc=VTEP_B, psrc=POD_A, hwdst=VTEP_A, pdst="10.244.1.1")]
    req, rep = decode_pcap(write(tmp_path, "arp.pcap", frames))
    assert names(req) == ["Ethernet", "ARP"] and req.layer("Ethernet")["type"] == "ARP"
    assert req.layer("ARP").summary == f"ARP who-has {POD_A} tell 10.244.1.1"
    assert req.layer("ARP").header_len == 28
    assert rep.layer("ARP").summary == f"ARP reply {POD_A} is-at {VTEP_B}"
    assert rep.layer("ARP")["op"] == "reply"


def test_ethernet_padding_is_not_tcp_data(tmp_path: Path) -> None:
    ack = Ether() / IP(src=POD_A, dst=POD_B) / TCP(flags="A") / Raw(b"\x00" * 6)
    ack[IP].len = 40  # a minimum-size frame: 6 bytes of padding after the TCP header
    [p] = decode_pcap(write(tmp_path, "pad.pcap", [ack]))
    assert p.layer("TCP")["len"] == 0 and p.payload == b""
    assert p.layer("Padding").header_len == 6


# --- the Capture view -----------------------------------------------------------------------

@pytest.fixture
def cap(tmp_path: Path) -> Capture:
    frames = [Ether(vxlan_frame()), http_request(),
              Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.244.1.1", pdst=POD_A)]
    for i, f in enumerate(frames):
        f.time = 1_700_000_000 + i * 0.25
    return Capture.load(write(tmp_path, "mixed.pcap", frames))


def test_summary_one_line_per_packet(cap: Capture) -> None:
    lines = cap.summary().splitlines()
    assert len(lines) == len(cap) == 3
    assert lines[0].startswith("#0    0.000000s   108 B  Ethernet ")
    assert (f" / IPv4 {NODE_A} → {NODE_B} proto UDP len 94 ttl 64 / UDP 51234 → 8472 len 74 "
            f"/ VXLAN VNI 1 / Ethernet {VTEP_A} → {VTEP_B} / IPv4 {POD_A} → {POD_B} ") in lines[0]
    assert lines[0].endswith("/ TCP 41234 → 8080 [S] seq 1000 win 8192 len 0 mss 1410")
    assert lines[1].startswith("#1    0.250000s")
    assert lines[1].endswith("/ TCP 41234 → 8080 [P.] seq 1001 ack 7 win 8192 len 44 "
                             "/ Payload 44 bytes 'GET /hostname HTTP/1.0…'")
    assert lines[2].endswith(f"/ ARP who-has {POD_A} tell 10.244.1.1")
    assert str(cap) == cap.summary()


def test_selection_helpers(cap: Capture) -> None:
    assert len(cap.with_layer("VXLAN")) == 1 and cap.with_layer("VXLAN")[0].number == 1
    assert len(cap.with_layer("ARP")) == 1 and len(cap.with_layer("ICMP")) == 0
    assert [p.number for p in cap.filter(layer="TCP", dport=8080)] == [1, 2]
    assert [p.number for p in cap.filter(layer="TCP", flags="S")] == [1]
    assert [p.number for p in cap.filter(layer="IPv4", src=POD_A)] == [1, 2]  # inner or plain
    assert [p.number for p in cap.filter(layer="IPv4", src=NODE_A)] == [1]
    assert [p.number for p in cap.filter(vni=1)] == [1]  # any layer with that field
    assert [p.number for p in cap.filter(lambda p: p.payload.startswith(b"GET"))] == [2]
    view = cap.filter(layer="TCP")
    assert isinstance(view, Capture) and view.pcap == cap.pcap
    assert view.summary().splitlines()[1].startswith("#1    0.250000s")  # same time base
    assert isinstance(cap[1:], Capture) and len(cap[1:]) == 2
    assert cap[-1].has("ARP") and [p.number for p in cap] == [1, 2, 3]


def test_html_table_with_nested_outer_and_inner_boxes(cap: Capture) -> None:
    page = cap._repr_html_()
    assert page.count("<tr>") == 1 + 3  # header + one row per packet
    assert "<b>3 packets</b>" in page
    assert page.count("outer headers (underlay)") == 1  # only the VXLAN packet
    assert page.count("inner headers (overlay)") == 1
    # the inner box sits inside the outer one, after the VXLAN chip
    outer = page.index("outer headers (underlay)")
    assert outer < page.index("<b>VXLAN</b> VNI 1") < page.index("inner headers (overlay)")
    assert "<b>UDP</b> 51234 → 8472 len 74" in page
    assert '<small style="color:#57606a">8 B</small>' in page  # the size of each header
    assert "#fff1e5" in page and "#ddf4ff" in page  # VXLAN and IP chips are coloured apart


def test_html_escapes_packet_data(tmp_path: Path) -> None:
    evil = (Ether() / IP(src=POD_A, dst=POD_B) / TCP(sport=1, dport=80, flags="PA")
            / Raw(b"<script>alert(1)</script>"))
    page = Capture.load(write(tmp_path, "evil.pcap", [evil]))._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_html_limits_rows(cap: Capture) -> None:
    cap.max_rows = 2
    page = cap._repr_html_()
    assert page.count("<tr>") == 1 + 2 + 1 and "… 1 more" in page


def test_load_uses_the_capture_metadata(tmp_path: Path) -> None:
    frame = CookedLinuxV2(proto=0x0800, ifindex=5, pkttype=4) / http_request()[IP]
    path = write(tmp_path, "meta.pcap", [frame])
    meta = {"where": "default/b", "netns": "lk-x.default.b", "interface": "any",
            "filter": "tcp port 8080", "interfaces": {"5": "eth0"},
            "command": ["tcpdump", "-w", str(path), "-i", "any", "tcp port 8080"],
            "stats": {"captured": 1, "received by filter": 1, "dropped by kernel": 0}}
    (tmp_path / "meta.pcap.json").write_text(json.dumps(meta))
    cap = Capture.load(path)
    assert cap[0].interface == "eth0" and cap.where == "default/b" and cap.bpf == "tcp port 8080"
    assert cap.shell_command == (f"ip netns exec lk-x.default.b tcpdump -w {path} -i any "
                                 "'tcp port 8080'")
    assert "captured in <b>default/b</b>" in cap._repr_html_()
    assert repr(cap) == f"<Capture 1 packets on default/b -i any {path}>"


def test_empty_and_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")  # tcpdump stopped before writing the pcap header
    assert decode_pcap(empty) == []
    header_only = write(tmp_path, "none.pcap", [Ether()])
    header_only.write_bytes(header_only.read_bytes()[:24])  # the pcap header, no packet
    cap = Capture.load(header_only)
    assert len(cap) == 0 and cap.summary() == "(no packets)"
    assert "(no packets)" in cap._repr_html_()
    bad = tmp_path / "bad.pcap"
    bad.write_text("not a pcap")
    with pytest.raises(LabError, match="not a pcap file"):
        decode_pcap(bad)
    with pytest.raises(LabError, match="no pcap file"):
        decode_pcap(tmp_path / "missing.pcap")


def test_save_copies_the_pcap_out(cap: Capture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    saved = cap.save(out)
    assert saved == out / cap.pcap.name and saved.read_bytes() == cap.pcap.read_bytes()


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_tcpdump_text_reads_the_same_pcap(cap: Capture) -> None:
    text = cap.tcpdump_text()
    assert f"{NODE_A}.51234 > {NODE_B}.8472" in text
    assert "instance 1" in text  # tcpdump's name for the VNI on port 8472 ("OTV")
    assert "GET /hostname HTTP/1.0" in text
    assert "Request who-has 10.244.2.3" not in text and f"who-has {POD_A}" in text
    assert len(cap.tcpdump_text(("-nn", "-q")).splitlines()) == 3


def test_a_rejected_filter_is_named_in_the_error() -> None:
    err = _start_error("lab-worker", "lk-lab-worker", ["tcpdump", "-i", "any", "tcp port"],
                       "tcp port", "tcpdump: can't parse filter expression: syntax error")
    assert "tcpdump rejected the capture filter 'tcp port'" in str(err)
    assert "syntax error" in str(err) and "pcap-filter" in str(err)
    other = _start_error("lab-worker", "lk-lab-worker", ["tcpdump", "-i", "eth9"], "",
                         "tcpdump: eth9: No such device exists")
    assert "could not start in `lab-worker`" in str(other) and "eth9" in str(other)


def test_dns_query_and_answer(tmp_path: Path) -> None:
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    name = "web.default.svc.cluster.local."
    frames = [Ether() / IP(src=POD_A, dst="10.96.0.10") / UDP(sport=40000, dport=53)
              / DNS(id=7, rd=1, qd=DNSQR(qname=name)),
              Ether() / IP(src="10.96.0.10", dst=POD_A) / UDP(sport=53, dport=40000)
              / DNS(id=7, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="10.96.0.5"))]
    query, answer = decode_pcap(write(tmp_path, "dns.pcap", frames))
    assert query.layer("DNS").summary == f"DNS query A {name}"
    assert answer.layer("DNS").summary == f"DNS response A {name} ok → 10.96.0.5"
    assert answer.layer("DNS")["answers"] == ["10.96.0.5"]


def test_packets_as_json(cap: Capture) -> None:
    dicts = json.loads(json.dumps(cap.to_dicts()))
    assert [d["number"] for d in dicts] == [1, 2, 3]
    vx = dicts[0]
    assert [ly["name"] for ly in vx["layers"]][3] == "VXLAN"
    assert vx["layers"][3]["fields"]["vni"] == 1 and vx["layers"][4]["level"] == 1
    assert bytes.fromhex(dicts[1]["layers"][-1]["fields"]["data"]).startswith(b"GET /")
