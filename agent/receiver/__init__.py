"""OTLP/gRPC receiver: spans, metrics and logs from OpenTelemetry clients into agent records.

See :mod:`wattspan.agent.receiver.server` for the status codes returned and
:mod:`wattspan.agent.receiver.convert` for the validation rules.
"""

from wattspan.agent.receiver.server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    STAT_KEYS,
    OtlpHandler,
    OtlpReceiver,
)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "STAT_KEYS", "OtlpHandler", "OtlpReceiver"]
