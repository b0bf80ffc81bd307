"""OTLP/gRPC receiver: spans, metrics and logs from OpenTelemetry clients into agent records.

See :mod:`wattspan.agent.receiver.server` for the status codes returned and the bounds,
:mod:`wattspan.agent.receiver.convert` for the validation rules,
:mod:`wattspan.agent.receiver.security` for bearer tokens and TLS files and
:mod:`wattspan.agent.receiver.peers` for the pid of clients that send none.
"""

from wattspan.agent.receiver.server import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    FD_RESERVE,
    STAT_KEYS,
    OtlpHandler,
    OtlpReceiver,
)

__all__ = [
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FD_RESERVE",
    "STAT_KEYS",
    "OtlpHandler",
    "OtlpReceiver",
]
