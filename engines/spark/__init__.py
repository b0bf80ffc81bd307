"""wattspan.engines.spark: Spark jobs, stages and tasks as spans with their energy."""
