#!/usr/bin/env python3
"""Misbehaving on purpose: every ADD starts a daemon (`sleep 3602`, in a session of its own) in
the node's netns and leaves it running. The suite must not leave it behind."""
import subprocess
import sys

import reference_plugin as ref

add = ref.cmd_add


def cmd_add(conf):
    subprocess.run(["setsid", "-f", "sleep", "3602"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return add(conf)


ref.cmd_add = cmd_add
sys.exit(ref.main())
