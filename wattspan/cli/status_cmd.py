"""``wattspan status``: what a running agent is doing, read from its ``/metrics``.

It reads the agent's config for where ``/metrics`` listens, whether it is HTTPS (then the
agent's own certificate, ``metrics.tls_cert_file``, is the one trusted) and the bearer token
to send (``metrics.bearer_token_file`` / ``metrics.bearer_token_env``). Exit status: 0 shown,
1 no wattspan agent answering there (refused, timed out, not HTTP, not an agent, token
refused), 2 the config is wrong; every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from wattspan.agent import endpoints
from wattspan.agent.config import Config, load_config
from wattspan.agent.errors import ConfigError
from wattspan.agent.receiver.security import load_bearer_token

_MAX_BODY = 64 * 1024 * 1024  # an exposition of a big node is a few MB; this is not one


class NotAnAgent(ValueError):
    """Something answered, but not with a wattspan agent's exposition."""


# Components whose self-metrics the status shows, by metric-name prefix.
_PREFIXES = {
    "wattspan_exporter_": "exporter",
    "wattspan_receiver_": "receiver",
    "wattspan_ingest_": "ingest",
    "wattspan_store_": "store",
}


def scrape(
    url: str,
    timeout: float = 5.0,
    *,
    token: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> dict[str, dict[str, Any]]:
    """``{component: {key: value}}`` from an agent's exposition.

    Raises ``urllib.error.HTTPError`` for an HTTP error status, ``OSError`` when nothing
    answers, ``http.client.HTTPException`` when what answers does not speak HTTP, and
    :class:`NotAnAgent` when the body is not a wattspan agent's metrics.
    """
    headers = {"Authorization": f"Bearer {token.decode()}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    # No proxy, whatever the environment says: the token goes to the agent and nowhere else.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as r:
        body = r.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        raise NotAnAgent(f"the answer is larger than {_MAX_BODY} bytes")
    try:
        families = list(text_string_to_metric_families(body.decode("utf-8")))
    except (ValueError, UnicodeDecodeError, IndexError, KeyError) as exc:
        raise NotAnAgent(f"the answer is not Prometheus text ({type(exc).__name__})") from None
    if not any(f.name == "wattspan_build_info" for f in families):
        raise NotAnAgent("the answer has no wattspan_build_info")
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for fam in families:
        for s in fam.samples:
            for prefix, kind in _PREFIXES.items():
                if not s.name.startswith(prefix):
                    continue
                comp = f"{kind}:{s.labels.get(kind, '?')}"
                key = s.name[len(prefix) :]
                if key.endswith("_info") and "value" in s.labels:
                    out[comp][key[: -len("_info")]] = s.labels["value"]
                else:
                    out[comp][key] = s.value
        if fam.name == "wattspan_scheduler_ticks":
            out["scheduler"]["ticks_total"] = fam.samples[0].value
        if fam.name == "wattspan_scheduler_missed_ticks":
            out["scheduler"]["missed_ticks_total"] = fam.samples[0].value
    return dict(out)


def _client_context(config: Config) -> ssl.SSLContext | None:
    """For an HTTPS ``/metrics``: trust exactly the agent's own certificate file. The
    certificate is pinned, so its host names are not checked (``status`` dials 127.0.0.1,
    which a node's certificate rarely names)."""
    cert = config["metrics"]["tls_cert_file"]
    if not cert:
        return None
    try:
        ctx = ssl.create_default_context(cafile=cert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("metrics.tls_cert_file", f"cannot load {cert}: {exc}") from None
    ctx.check_hostname = False
    # The agent's certificate may be a leaf signed by a CA we do not have: trusting the
    # leaf itself needs partial chains.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        m = config["metrics"]
        token = load_bearer_token("metrics", m["bearer_token_file"], m["bearer_token_env"])
        context = _client_context(config)
    except ConfigError as exc:
        print(f"wattspan: config error: {exc}", file=sys.stderr)
        return 2
    host = m["listen"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = args.metrics_port or m["port"]
    if not args.metrics_port:
        # The port the running agent bound, which the config cannot say when it is 0 (or
        # when the agent was started with --metrics-port).
        rec = endpoints.lookup(config.state_dir, endpoints.source_of(config.source))
        if rec is not None and isinstance(rec.get("metrics_url"), str):
            with contextlib.suppress(ValueError):  # not a URL with a port: the config's
                port = urllib.parse.urlsplit(rec["metrics_url"]).port or port
    if not port:
        print(
            "wattspan: metrics.port is 0 (the kernel picks one) and no running agent with this "
            f"config recorded its port in {config.state_dir / endpoints.FILE}; "
            "give it with --metrics-port",
            file=sys.stderr,
        )
        return 1
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"{'https' if context else 'http'}://{netloc}/metrics"
    status = _scrape_or_why(url, token, context, m["tls_client_ca_file"])
    if isinstance(status, str):
        print(f"wattspan: {status}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(status, sort_keys=True) + "\n")
        return 0
    from rich.table import Table

    from wattspan.cli.tables import print_table

    t = Table(title=f"wattspan agent at {netloc}")
    t.add_column("component")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for comp in sorted(status):
        for key, value in sorted(status[comp].items()):
            shown = (
                f"{value:,.0f}" if isinstance(value, float) and value.is_integer() else str(value)
            )
            t.add_row(comp, key, shown)
    print_table(t)
    return 0


def _scrape_or_why(
    url: str, token: bytes | None, context: ssl.SSLContext | None, client_ca: str
) -> dict[str, dict[str, Any]] | str:
    """The scrape, or one line saying why there is none."""
    try:
        return scrape(url, token=token, context=context)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            hint = (
                "the token in the config is not the agent's"
                if token
                else "set metrics.bearer_token_file or metrics.bearer_token_env"
            )
            return f"the agent at {url} refused the request: missing or wrong bearer token ({hint})"
        return f"no wattspan agent at {url}: it answered HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError) and client_ca:
            return (
                f"no TLS session with the agent at {url} ({reason}): it asks for a client "
                "certificate (metrics.tls_client_ca_file), which wattspan status has none of"
            )
        return f"no agent answering at {url}: {reason}"
    except (http.client.HTTPException, ConnectionError) as exc:
        what = type(exc).__name__
        return f"no wattspan agent at {url}: what answers there does not speak HTTP ({what})"
    except NotAnAgent as exc:
        return f"no wattspan agent at {url}: {exc}"
    except OSError as exc:  # a timeout, or a TLS error after the connection
        return f"no agent answering at {url}: {exc}"
