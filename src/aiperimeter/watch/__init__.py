"""Watch: what the gateway's traffic says about its keys.

The audit stream (the gateway's JSON lines, or a Redis stream shared by replicas) is read as Observations; per-key
baselines are learned from them; departures become Alerts, delivered to the log, a webhook and, by severity, to
automatic actions. Metrics and the dashboard are read-only views of the same traffic.
"""
