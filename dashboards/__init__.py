"""wattspan.dashboards."""
