"""The built-in demo: a small model server with canned answers, and the script `make demo` runs."""
