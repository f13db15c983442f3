"""Typed constraints on one tool-call argument: each judges parsed facts (a SQL tree, a shell AST, a WHATWG URL, a
normalised path), never the raw text alone."""
