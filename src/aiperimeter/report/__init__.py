"""One renderer per output format. Values that came from scanned hosts are escaped for each format."""
