"""wattspan: resource and energy attribution for data and ML pipelines."""

__version__ = "0.1.0"
