"""wattspan.engines."""
