"""InfluxDB exporter (line protocol over the v1 ``/write`` or v2 ``/api/v2/write`` API).

Schema, configuration reference and delivery semantics: docs/influxdb.md.
"""

from wattspan.agent.exporters.influxdb.config import InfluxDBConfig, Secret, parse_config
from wattspan.agent.exporters.influxdb.exporter import InfluxDBExporter, from_config
from wattspan.agent.exporters.influxdb.lineprotocol import LineEncoder, split_lines

__all__ = [
    "InfluxDBConfig",
    "InfluxDBExporter",
    "LineEncoder",
    "Secret",
    "from_config",
    "parse_config",
    "split_lines",
]
