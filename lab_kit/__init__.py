"""lab_kit: a Kubernetes networking lab built from real Linux kernel objects.

The public entry point is :class:`lab_kit.cluster.Cluster`::

    from lab_kit import Cluster
    with Cluster.up("labs/clusters/default.yaml") as c:
        c.apply("labs/manifests/web.yaml")
        print(c.probe("web-0", "web-1", 8080))
"""

from lab_kit.errors import CommandError, ConfigError, LabError, NotRunningError

__all__ = ["Cluster", "CommandError", "ConfigError", "LabError", "NotRunningError"]
__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing the package must stay cheap for the CLI
    if name == "Cluster":
        from lab_kit.cluster import Cluster

        return Cluster
    raise AttributeError(name)
