"""Bearer tokens and TLS files for the agent's two listeners (OTLP/gRPC and ``/metrics``).

Shared by :mod:`wattspan.agent.receiver.server`, :mod:`wattspan.agent.exporters.prometheus`
and ``wattspan status`` (which must send the same token the agent expects), so the three read
a token the same way. A problem with a token or a TLS file is a :class:`ConfigError` naming
the config key (``otlp.tls_cert_file``...), raised when the listener is built, before
anything binds: the agent then exits with one line and status 2 instead of "cannot bind".

A token never appears in a log line, an error message or a response: messages say which key
or variable is wrong and why, and a refused request is told "missing or wrong bearer token".
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

from wattspan.agent.errors import ConfigError

__all__ = [
    "UNAUTHENTICATED_MESSAGE",
    "bearer_matches",
    "is_loopback",
    "load_bearer_token",
    "metadata_bearer_matches",
    "server_ssl_context",
]

UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token"
"""All a refused client is told: nothing about which part was wrong."""

# RFC 6750 b64token characters: what fits in an Authorization header unquoted and unchanged.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
_MAX_TOKEN_BYTES = 4096


def load_bearer_token(
    section: str,
    token_file: str | os.PathLike[str] | None,
    token_env: str | None,
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """The token configured by ``<section>.bearer_token_file`` or ``<section>.bearer_token_env``
    (the name of an environment variable holding it), or None when neither is set.

    Surrounding whitespace (a file's trailing newline) is stripped. Raises ``ConfigError``
    when both are set, the file cannot be read, the variable is unset, or the token is empty
    or has characters an ``Authorization`` header cannot carry as they are.
    """
    env = os.environ if environ is None else environ
    if token_file and token_env:
        raise ConfigError(
            f"{section}.bearer_token_file",
            f"set either {section}.bearer_token_file or {section}.bearer_token_env, not both",
        )
    if token_file:
        key = f"{section}.bearer_token_file"
        try:
            raw = Path(token_file).read_bytes()[: _MAX_TOKEN_BYTES + 1]
        except OSError as exc:
            raise ConfigError(key, f"cannot read {token_file}: {exc.strerror or exc}") from None
        where = f"the file {token_file}"
    elif token_env:
        key = f"{section}.bearer_token_env"
        value = env.get(token_env)
        if not value:
            raise ConfigError(key, f"environment variable {token_env} is not set or is empty")
        raw = value.encode("utf-8", "surrogateescape")
        where = f"environment variable {token_env}"
    else:
        return None
    token = raw.strip()
    if not token:
        raise ConfigError(key, f"{where} holds no token")
    if len(token) > _MAX_TOKEN_BYTES:
        raise ConfigError(key, f"the token in {where} is longer than {_MAX_TOKEN_BYTES} bytes")
    if not set(token.decode("latin-1")) <= _TOKEN_CHARS:
        raise ConfigError(
            key,
            f"the token in {where} has characters other than letters, digits and -._~+/= "
            "(e.g. `openssl rand -hex 32` makes a good one)",
        )
    return token


def bearer_matches(header: str | bytes | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>``, compared in constant
    time. The scheme is case-insensitive (RFC 7235)."""
    if header is None:
        return False
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    scheme, _, given = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), token)


def metadata_bearer_matches(
    metadata: Iterable[tuple[str, str | bytes]] | None, token: bytes
) -> bool:
    """:func:`bearer_matches` on the ``authorization`` entry of gRPC metadata (keys arrive
    lowercase); a request with several such entries is refused."""
    values = [v for k, v in metadata or () if k == "authorization"]
    return len(values) == 1 and bearer_matches(values[0], token)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class _EncryptedKey(Exception):
    pass


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and a daemon would hang.
    raise _EncryptedKey


def server_ssl_context(
    section: str,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    client_ca_file: str | os.PathLike[str] | None,
) -> ssl.SSLContext | None:
    """A TLS server context from ``<section>.tls_*`` (None when no certificate is set), with
    each file checked on its own so the error names the key that is wrong: a certificate
    without a key, an unreadable file, a file that is not PEM, a key that does not match.

    The gRPC receiver builds its credentials from the same files; it calls this to validate
    them first, because grpc's own error is "cannot bind".
    """
    cert_key, key_key, ca_key = (f"{section}.tls_{n}_file" for n in ("cert", "key", "client_ca"))
    if not cert_file and not key_file:
        if client_ca_file:
            raise ConfigError(ca_key, f"needs {cert_key} and {key_key} (mutual TLS is TLS first)")
        return None
    if not cert_file:
        raise ConfigError(cert_key, f"needed with {key_key}")
    if not key_file:
        raise ConfigError(key_key, f"needed with {cert_key}")
    cert_pem = _read(cert_key, cert_file)
    _read(key_key, key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # Parses every certificate in the file, strictly: garbage here is the cert's fault.
        probe.load_verify_locations(cadata=cert_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(cert_key, f"{cert_file} is not a PEM certificate ({_why(exc)})") from None
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey:
        raise ConfigError(
            key_key, f"{key_file} is encrypted; the agent needs it without a passphrase"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            key_key,
            f"{key_file} is not an unencrypted PEM private key matching {cert_key} ({_why(exc)})",
        ) from None
    if client_ca_file:
        ca_pem = _read(ca_key, client_ca_file)
        try:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                ca_key, f"{client_ca_file} is not a PEM CA certificate ({_why(exc)})"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _read(key: str, path: str | os.PathLike[str]) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(key, f"{path} is not a PEM file (no -----BEGIN line)")
    return data


def _why(exc: BaseException) -> str:
    # "[SSL] PEM lib (_ssl.c:3900)": the bracket and the C file say nothing to an operator.
    text = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)", "", str(exc)).strip()
    return text or type(exc).__name__
