"""Data-driven detection: fingerprints of AI services (and later secret and misconfiguration rules)."""
