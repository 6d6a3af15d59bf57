"""Real HTTP requests from the `external` host, for the Ingress and Gateway API labs' notebooks
and checks.

Every request is a real `curl` run in the external host's network namespace: it resolves the
host name with the external host's own DNS (dnsmasq, which the cluster keeps told of every
Ingress and HTTPRoute host name), connects to the controller's load-balancer address, and
the answer comes from whichever pod nginx picked. Many requests run in one shell, so 600
requests cost one `ip netns exec`, not 600.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster


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
    out = c.external.sh(script, check=False, timeout=30 + 6 * len(urls)).splitlines()
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


def tally(c: Cluster, url: str, n: int = 500, headers: Mapping[str, str] | None = None,
          options: Sequence[str] = ()) -> Counter[str]:
    """Who answered `n` requests to `url` (a `/hostname` URL): Deployment -> count. Requests
    that got no 200 count under their status (`"503"`, or `"no answer"`)."""
    out: Counter[str] = Counter()
    for a in requests(c, [url] * n, headers, options):
        out[a.who if a.status == 200 else (str(a.status) if a.status else "no answer")] += 1
    return out


def table(answers: Iterable[Answer]) -> str:
    """Answers as a fixed-width text table: URL, status, who answered (or the error)."""
    rows = [(a.url, str(a.status or "-"), a.who if a.status else a.error) for a in answers]
    if not rows:
        return "(no requests)"
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{u:<{w}}  {s:>3}  {x}" for u, s, x in rows)
