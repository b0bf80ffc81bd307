"""Errors shared across the agent's components."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. ``key`` is the dotted path, e.g. ``agent.interval``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class Backpressure(RuntimeError):
    """The agent is at one of its documented bounds (spans waiting for attribution, bytes
    of requests in flight): nothing of the request was kept, and the client should retry
    later. The OTLP receiver answers ``UNAVAILABLE`` with this message, which OTLP clients
    retry with backoff."""


class InvalidRequest(ValueError):
    """The whole request is malformed in a way protobuf parsing does not catch (e.g. an
    attribute that must hold JSON does not). Nothing was kept; retrying cannot help: the
    receiver answers ``INVALID_ARGUMENT``."""
