"""Every secret the suite creates, and every text it saw; at the end of the session none may contain any."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LeakRegistry:
    secrets: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def findings(self) -> list[str]:
        found = []
        corpus = [("output", t) for t in self.texts]
        corpus += [(str(p), p.read_text(errors="replace")) for p in self.files if p.exists()]
        for where, text in corpus:
            for secret in self.secrets:
                if secret in text:
                    found.append(f"{where}: contains the secret of key {secret[4:16]}")
        return found


LEAKS = LeakRegistry()
