#!/usr/bin/env python3
"""Broken on purpose: ADD takes an address from host-local, then fails without giving it back.
Only the runtime's DEL after the failed ADD (the spec asks runtimes for it) releases it."""
import sys

import reference_plugin as ref


def cmd_add(conf):
    ref.ipam("ADD", conf)
    raise ref.CniError(ref.ERR_INTERNAL, "injected failure after IPAM")


ref.cmd_add = cmd_add
sys.exit(ref.main())
