#!/usr/bin/env python3
"""Broken on purpose: ADD prints host-local's result as it came, without `interfaces` and the
`interface` index of each address (the mistake of forgetting that an IPAM result is not a
plugin's result). Only the conformance case `add-result` should fail."""
import sys

import reference_plugin as ref

add = ref.cmd_add


def cmd_add(conf):
    result = add(conf)
    del result["interfaces"]
    for ip in result["ips"]:
        ip.pop("interface", None)
    return result


ref.cmd_add = cmd_add
sys.exit(ref.main())
