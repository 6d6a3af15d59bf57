#!/usr/bin/env python3
"""Broken on purpose: the error JSON goes to stderr (as the spec's overview could be read), and
stdout stays empty: the runtime, reading stdout, sees no error structure."""
import contextlib
import io
import sys

import reference_plugin as ref


def main():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = ref.main()
    (sys.stdout if rc == 0 else sys.stderr).write(out.getvalue())
    return rc


sys.exit(main())
