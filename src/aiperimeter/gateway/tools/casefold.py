"""Keys a case-insensitive decoder would read as another field.

Go's encoding/json (Ollama and its api package, LocalAI, go-openai, the Go SDKs) matches an object key to a struct
field without regard to case, folding U+017F to `s` and U+212A to `k` too. So `Tool_calls` is `tool_calls` to such
a reader while a guard that reads exact keys sees nothing: a key that is not a known field but folds to one is
refused as unreadable, in requests and responses alike.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

MAX_DEPTH = 64
# A key that could fold to another name holds an uppercase or non-ASCII letter, or an escape: most events have none.
_SUSPECT_KEY = re.compile(rb'[A-Z\x80-\xff\\][^"]*"\s*:')


def may_hide(raw: bytes) -> bool:
    """Cheap pre-check on raw JSON: False when no key could be a case variant (then `case_variant` finds none).
    Most events have no uppercase ASCII letter, no byte past ASCII and no escape: they skip even the regex."""
    if raw.islower() and raw.isascii() and b"\\" not in raw:
        return False
    return _SUSPECT_KEY.search(raw) is not None


def hides_a_field(raw: bytes, doc: Any, known: Collection[str], free_form: Collection[str] = ()) -> bool:
    """Whether parsed JSON `doc` (read from `raw`) has a key a case-insensitive reader takes for a known field."""
    return may_hide(raw) and case_variant(doc, known, free_form) is not None


def case_variant(doc: Any, known: Collection[str], free_form: Collection[str] = (), depth: int = 0) -> str | None:
    """The first object key in `doc` that is not in `known` but folds to a name in it. Objects under a key in
    `free_form` (the caller's own data: arguments, schemas) are not walked."""
    if depth > MAX_DEPTH:
        return "(nesting)"
    if isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict | list) and (found := case_variant(item, known, free_form, depth + 1)):
                return found
        return None
    if not isinstance(doc, dict):
        return None
    for key, value in doc.items():
        name = str(key)
        if name not in known and name.casefold() in known:
            return name
        nested = isinstance(value, list) or (isinstance(value, dict) and name not in free_form)
        if nested and (found := case_variant(value, known, free_form, depth + 1)):
            return found
    return None
