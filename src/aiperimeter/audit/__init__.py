"""`aiperimeter audit`: the causes of exposure, found from the inside (listeners, configurations, leaked keys)."""
