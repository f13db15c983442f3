"""Hardening runners: attacks, fuzzing, faults and load, importable from pytest and from benchmarks/soak.py."""
