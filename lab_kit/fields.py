"""Walking a manifest's fields with their paths: the base of the API-server-style validators
(NetworkPolicy in netpol.py, Ingress and Secret in ingress.py). Each error is a `ConfigError`
naming the file, the object and the field path, e.g. `spec.rules[0].http.paths[1].path`."""

from __future__ import annotations

import re
from typing import Any

from lab_kit.errors import ConfigError

_CONFIG_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
_CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                   "(e.g. 'key.name' or 'KEY_NAME' or 'key-name')")


def config_key_problem(s: str) -> str | None:
    """IsConfigMapKey's first complaint about `s` (a Secret's or ConfigMap's data key), or
    None."""
    if len(s) > 253:
        return "must be no more than 253 characters"
    if not _CONFIG_KEY_RE.fullmatch(s):
        return _CONFIG_KEY_MSG
    if s == ".":
        return "must not be '.'"
    if s == "..":
        return "must not be '..'"
    if s.startswith(".."):
        return "must not start with '..'"
    return None


class FieldParser:
    def __init__(self, file: str, obj: str) -> None:
        self.file, self.obj = file, obj

    def fail(self, msg: str, fld: str, fix: str | None = None) -> ConfigError:
        return ConfigError(msg, file=self.file, obj=self.obj, field=fld, fix=fix)

    def mapping(self, v: Any, fld: str) -> dict[str, Any]:
        """`v` as a mapping ({} when absent)."""
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.fail(f"must be a mapping, not {type(v).__name__}", fld)
        return v

    def listing(self, v: Any, fld: str) -> list[Any]:
        """`v` as a list ([] when absent)."""
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(f"must be a list, not {type(v).__name__}", fld)
        return v
