#!/usr/bin/env python3
"""Broken on purpose: ADD into a pod that already has the interface deletes it and starts again,
instead of failing as the spec says."""
import os
import sys

import reference_plugin as ref

add = ref.cmd_add


def cmd_add(conf):
    netns, ifname = os.environ["CNI_NETNS"], os.environ["CNI_IFNAME"]
    if ref.link(ifname, netns) is not None:
        ref.run("ip", "link", "del", ifname, netns=netns)
    return add(conf)


ref.cmd_add = cmd_add
sys.exit(ref.main())
