"""The command line's argument handling (no cluster needed)."""

from __future__ import annotations

import pytest

from lab_kit import cli


def parse(argv: list[str]):
    return cli.parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["capture", "lab-worker", "-i", "eth0", "udp", "port", "8472"],
    ["capture", "lab-worker", "udp", "port", "8472", "-i", "eth0"],
])
def test_capture_filter_words_anywhere(argv: list[str]) -> None:
    args = parse(argv)
    assert args.where == "lab-worker" and args.interface == "eth0"
    assert " ".join(args.filter) == "udp port 8472"


def test_capture_probe_and_layers() -> None:
    args = parse(["capture", "external", "--probe", "a", "b:8080", "--layers", "0", "-c", "5"])
    assert args.probe == ["a", "b:8080"] and args.layers == 0 and args.count == 5


def test_node_and_birdc_verbs() -> None:
    args = parse(["node", "add", "--role", "worker", "--label", "zone=a"])
    assert (args.action, args.role, args.label) == ("add", "worker", ["zone=a"])
    args = parse(["node", "remove", "lab-worker2"])
    assert (args.action, args.node) == ("remove", "lab-worker2")
    args = parse(["birdc", "lab-worker", "show", "route"])
    assert args.node == "lab-worker" and args.command == ["show", "route"]


def test_unknown_arguments_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_up_cluster_dns_and_dns_metrics_parse() -> None:
    from lab_kit import cli
    args = cli.parse_args(["up", "--cluster-dns"])
    assert args.cluster_dns and args.file is None
    args = cli.parse_args(["dns", "metrics", "--pod", "coredns-x"])
    assert (args.what, args.pod) == ("metrics", "coredns-x")
