"""aiperimeter: close the perimeter around self-hosted AI services."""

__version__ = "0.1.0"
