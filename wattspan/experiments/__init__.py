"""wattspan.experiments: experiments from one config file."""
