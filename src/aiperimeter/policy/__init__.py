"""Tool-call policy: which tools a key may declare and call, and typed constraints on their arguments."""
