"""wattspan.engines.stream: a SABER-style windowed stream engine on columnar batches."""
