#!/usr/bin/env python3
"""Broken on purpose: VERSION answers with its own cniVersion and supports only old versions,
whatever it was asked about."""
import json
import os
import sys

import reference_plugin as ref

if os.environ.get("CNI_COMMAND") == "VERSION":
    print(json.dumps({"cniVersion": "0.4.0", "supportedVersions": ["0.3.1", "0.4.0"]}))
    sys.exit(0)
sys.exit(ref.main())
