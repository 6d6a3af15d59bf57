#!/usr/bin/env python3
"""Broken on purpose: DEL fails when the pod's interface is already gone, so a second DEL (and a
DEL after the netns went) fails: the spec says plugins MUST accept several DELs."""
import os
import sys

import reference_plugin as ref

delete = ref.cmd_del


def cmd_del(conf):
    netns, ifname = os.environ.get("CNI_NETNS", ""), os.environ["CNI_IFNAME"]
    if not os.path.exists(netns) or ref.link(ifname, netns) is None:
        raise ref.CniError(ref.ERR_INTERNAL, f"{ifname} not found in {netns}")
    delete(conf)


ref.cmd_del = cmd_del
sys.exit(ref.main())
