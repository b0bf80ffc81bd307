"""Errors shared across the agent's components."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. ``key`` is the dotted path, e.g. ``agent.interval``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
