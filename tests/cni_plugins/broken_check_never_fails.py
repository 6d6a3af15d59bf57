#!/usr/bin/env python3
"""Broken on purpose: CHECK always succeeds, whatever happened to the pod."""
import sys

import reference_plugin as ref

ref.cmd_check = lambda conf: None
sys.exit(ref.main())
