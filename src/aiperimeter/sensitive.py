"""A wrapper that keeps secrets out of logs, reprs and error messages."""

from __future__ import annotations

import hmac


class Secret:
    """Holds a secret value; `str()` and `repr()` never show it. Call `reveal()` where it must be used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "*****"

    def __repr__(self) -> str:
        return "Secret('*****')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
