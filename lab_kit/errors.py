"""One error hierarchy. Messages name the object and field and end with what to do next."""

from __future__ import annotations


class LabError(Exception):
    """Base class of every error lab_kit raises on purpose."""


class ConfigError(LabError):
    """Bad input: a cluster config or a manifest that cannot be accepted.

    Nothing has been changed in the kernel or the state dir when this is raised.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        obj: str | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.file = file
        self.obj = obj
        self.field = field
        self.fix = fix
        self.reason = message
        parts = []
        if file:
            parts.append(f"{file}")
        if obj:
            parts.append(f"`{obj}`")
        if field:
            parts.append(f"field `{field}`")
        where = ": ".join([", ".join(parts)]) if parts else ""
        text = f"{where}: {message}" if where else message
        if fix:
            text += f" — {fix}"
        super().__init__(text)


class CommandError(LabError):
    """A kernel command failed. Carries the netns, the argv and what it printed."""

    def __init__(self, netns: str | None, argv: list[str], rc: int, stderr: str, stdout: str = ""):
        self.netns = netns
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        self.stdout = stdout
        where = f" in netns `{netns}`" if netns else ""
        msg = (stderr or stdout).strip() or "(no output)"
        super().__init__(f"`{' '.join(argv)}`{where} exited {rc}: {msg}")


class NotRunningError(LabError):
    """No cluster with that name is running."""


class BusyError(LabError):
    """Another lab_kit process holds the cluster's lock for too long."""
