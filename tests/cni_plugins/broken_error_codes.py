#!/usr/bin/env python3
"""Broken on purpose: every error has code 999, instead of the spec's code (4 for a bad
CNI_COMMAND or a missing variable, 6 for a config that is not JSON)."""
import sys

import reference_plugin as ref


class CniError(ref.CniError):
    def __init__(self, code, msg, details=""):
        super().__init__(999, msg, details)


ref.CniError = CniError
sys.exit(ref.main())
