#!/usr/bin/env python3
"""Misbehaving on purpose: ADD starts a helper (`sleep 3601`) and never returns. The conformance
suite must kill both after its timeout."""
import subprocess
import sys
import time

import reference_plugin as ref


def cmd_add(conf):
    subprocess.Popen(["sleep", "3601"])
    time.sleep(3600)


ref.cmd_add = cmd_add
sys.exit(ref.main())
