"""Tests of the fuzz targets, their oracles and the engine (tests/hardening/fuzz)."""
