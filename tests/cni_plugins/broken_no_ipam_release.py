#!/usr/bin/env python3
"""Broken on purpose: DEL removes the veth but does not delegate DEL to the IPAM plugin, so
host-local never gets the address back (the node's range leaks one address per pod)."""
import sys

import reference_plugin as ref

ipam = ref.ipam


def ipam_without_del(command, conf):
    return None if command == "DEL" else ipam(command, conf)


delete = ref.cmd_del


def cmd_del(conf):
    ref.ipam = ipam_without_del
    try:
        delete(conf)
    finally:
        ref.ipam = ipam


ref.cmd_del = cmd_del
sys.exit(ref.main())
