"""Real HTTP requests from the `external` host, and the nginx of an Ingress or Gateway
controller pod, for the Ingress and Gateway API labs' notebooks and checks.

Every request is a real `curl` run in the external host's network namespace (`ip netns exec`,
which also binds its resolv.conf): it resolves the host name with the external host's own DNS
(dnsmasq, which the cluster keeps told of every Ingress and HTTPRoute host name), connects to
the controller's load-balancer address, and the answer comes from whichever pod nginx picked.
Many requests run in one shell, so 600 requests cost one `ip netns exec`, not 600; `tally`
sends its N requests with one curl over one kept-alive connection. The requests are the
checks' and helpers' own, so they are not written to the learner's command journal.

The controller side: its Service's load-balancer IP (`lb_ip`), its pod, the nginx.conf it
loaded (`nginx_conf_file`, split into `conf_blocks`), its nginx processes, and a load
generator for watching a graceful reload (`load`).
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_kit import kernel, naming
from lab_kit.errors import LabError

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster, PodInfo


@dataclass(frozen=True)
class Answer:
    """One request's outcome as curl saw it: `status` 0 means no HTTP answer at all (DNS,
    connection or TLS failed; `error` says which)."""

    url: str
    status: int
    body: str
    error: str = ""

    @property
    def who(self) -> str:
        """The Deployment whose pod answered `/hostname` (`web-5d8f9c-x7k2p` -> `web`), or
        the body itself when it is not a pod name."""
        return who(self.body)


def who(body: str) -> str:
    """The Deployment a pod name belongs to (`web-5d8f9c-x7k2p` -> `web`)."""
    body = body.strip()
    return body.rsplit("-", 2)[0] if body.count("-") >= 2 and " " not in body else body


def _curl_line(url: str, headers: Mapping[str, str], options: Sequence[str]) -> str:
    args = ["curl", "-sS", "--max-time", "5", *options]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    args += ["-w", "|%{http_code}", url]
    # one line per request: the body (line breaks dropped), '|', the status; errors after '#'
    return (f'out=$({shlex.join(args)} 2>"$e" | tr -d "\\r\\n"); '
            'echo "$out#$(tr "\\r\\n" "  " <"$e")"')


def requests(c: Cluster, urls: Iterable[str], headers: Mapping[str, str] | None = None,
             options: Sequence[str] = ()) -> list[Answer]:
    """GET each of `urls` from the external host (with `headers`, and further curl `options`
    such as `("--cacert", path)`), in order; one Answer each."""
    urls = list(urls)
    if not urls:
        return []
    script = "\n".join(['e=$(mktemp)', *(_curl_line(u, headers or {}, options) for u in urls),
                        'rm -f "$e"'])
    out = _outside(c, ["bash", "-c", script], 30 + 6 * len(urls)).stdout.splitlines()
    answers = []
    for i, url in enumerate(urls):
        line = out[i] if i < len(out) else "|000#no output"
        head, _, err = line.rpartition("#")
        body, _, code = head.rpartition("|")
        status = int(code) if code.isdigit() else 0
        answers.append(Answer(url, status, body, err.strip() if status == 0 else ""))
    return answers


def get(c: Cluster, url: str, headers: Mapping[str, str] | None = None,
        options: Sequence[str] = ()) -> Answer:
    """One GET from the external host."""
    return requests(c, [url], headers, options)[0]


_ANSWER = re.compile(r"<<<(\d{3})>>>")  # what -w writes after each answer


def tally(c: Cluster, url: str, n: int = 500, headers: Mapping[str, str] | None = None
          ) -> Counter[str]:
    """Who answered `n` GETs of `url` (a `/hostname` URL): Deployment -> count; requests that
    got no 200 count under their status (`"503"`, or `"no answer"`). One curl process sends
    them all, one after the other on one kept-alive connection, as a browser would (curl's URL
    globbing: `?lk=[1-N]`); nginx picks a backend for each request anew."""
    sep = "&" if "?" in url else "?"
    argv = ["curl", "-sS", "--max-time", "5", "-w", "<<<%{http_code}>>>"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(f"{url}{sep}lk=[1-{n}]")
    parts = _ANSWER.split(_outside(c, argv, 30 + n / 20).stdout)
    counts: Counter[str] = Counter()
    for body, code in zip(parts[0::2], parts[1::2], strict=False):
        status = int(code)
        counts[who(body) if status == 200 else (str(status) if status else "no answer")] += 1
    if (missing := n - sum(counts.values())) > 0:
        counts["no answer"] += missing
    return counts


def _outside(c: Cluster, argv: list[str], timeout: float) -> kernel.Completed:
    """`argv` on the external host, unrecorded (see the module's docstring)."""
    return kernel.Runner().run(["ip", "netns", "exec", naming.external_netns(c.name), *argv],
                               None, check=False, record=False, timeout=timeout)


def table(answers: Iterable[Answer]) -> str:
    """Answers as a fixed-width text table: URL, status, who answered (or the error)."""
    rows = [(a.url, str(a.status or "-"), a.who if a.status else a.error) for a in answers]
    if not rows:
        return "(no requests)"
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{u:<{w}}  {s:>3}  {x}" for u, s, x in rows)


# --- the controller's side --------------------------------------------------------------------

def lb_ip(c: Cluster, namespace: str, service: str, hint: str) -> str:
    """A controller Service's load-balancer IP (`status.loadBalancer.ingress[0].ip`); `hint`
    says how to set the controller up when there is none."""
    try:
        svc = c.service(service, namespace)
    except LabError:
        raise LabError(f"no Service {namespace}/{service}: {hint}") from None
    got = (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    if not got:
        raise LabError(f"Service {namespace}/{service} has no load-balancer IP")
    return str(got[0]["ip"])


def controller_pod(c: Cluster, namespace: str) -> PodInfo | None:
    """The controller's pod (the first pod of its namespace), or None."""
    pods = c.pods(namespace)
    return pods[0] if pods else None


def nginx_conf_file(c: Cluster, namespace: str) -> Path | None:
    """The nginx.conf the controller pod has loaded, or None (no pod, or none loaded yet)."""
    pod = controller_pod(c, namespace)
    return c.nginx_conf_file(pod.key) if pod is not None else None


def conf_blocks(lines: list[str], head: str) -> list[list[str]]:
    """The blocks of nginx.conf's `http` level (4 spaces in) that start with `head`, each as
    its lines; a block may be one line (`upstream x { server a; }`)."""
    out: list[list[str]] = []
    cur: list[str] | None = None
    for ln in lines:
        if cur is None and ln.startswith(f"    {head}"):
            cur = [ln]
            if ln.rstrip().endswith("}"):
                out.append(cur)
                cur = None
        elif cur is not None:
            cur.append(ln)
            if ln == "    }":
                out.append(cur)
                cur = None
    return out


def nginx_processes(c: Cluster, namespace: str) -> list[tuple[int, str]]:
    """The nginx processes of the controller pod: (pid, title), the master first. A graceful
    reload keeps the master and replaces the workers."""
    pod = controller_pod(c, namespace)
    inode = kernel.netns_inode(pod.netns) if pod is not None else None
    if inode is None:
        return []
    out = []
    for pid in kernel.pids_in_netns({inode}):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title.startswith("nginx"):
            out.append((pid, title.strip()))
    return sorted(out, key=lambda p: ("master" not in p[1], p[0]))


# a load generator run on the external host: a new connection per request, for `seconds`
LOAD = textwrap.dedent("""
    import collections, http.client, json, sys, time
    ip, host, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    statuses = collections.Counter()
    errors = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn = http.client.HTTPConnection(ip, 80, timeout=5)
            conn.request("GET", "/hostname", headers={"Host": host})
            r = conn.getresponse()
            r.read()
            conn.close()
            statuses[str(r.status)] += 1
        except Exception as e:
            statuses["error"] += 1
            errors.append(repr(e))
    print(json.dumps({"statuses": statuses, "errors": errors[:5]}))
""")


def load(c: Cluster, ip: str, host: str, seconds: float) -> dict[str, Any]:
    """Send GET /hostname with `Host: host` to `ip` from the external host, one after the other
    on new connections, for `seconds`: {"statuses": {"200": n, …, "error": n}, "errors": the
    first five exceptions}. Blocks: run it in a thread to change the cluster meanwhile."""
    done = _outside(c, ["python3", "-c", LOAD, ip, host, str(seconds)], seconds + 60)
    return json.loads(done.stdout or '{"statuses": {}, "errors": ["no output"]}')
