"""The command line: parse, call the core, render, exit with 0 (clean), 1 (findings) or 2 (usage/config)."""
