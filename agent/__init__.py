"""wattspan.agent."""
