"""Walking a manifest's fields with their paths: the base of the API-server-style validators
(NetworkPolicy in netpol.py, Ingress and Secret in ingress.py). Each error is a `ConfigError`
naming the file, the object and the field path, e.g. `spec.rules[0].http.paths[1].path`."""

from __future__ import annotations

from typing import Any

from lab_kit.errors import ConfigError


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
