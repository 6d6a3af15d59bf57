#!/usr/bin/env python3
"""Broken on purpose: DEL removes the veth but never delegates DEL to the IPAM plugin, so
host-local never gets the address back (the node's range leaks one address per pod)."""
import sys

import reference_plugin as ref

ipam = ref.ipam
ref.ipam = lambda command, conf: None if command == "DEL" else ipam(command, conf)
sys.exit(ref.main())
