"""Constraints on plain JSON values: a typed check for one named argument, and a JSON Schema for all of them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import re2
from pydantic import ConfigDict, Field, PrivateAttr, StrictFloat, StrictInt, field_validator, model_validator

from aiperimeter.policy.constraints.base import Constraint

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

JSONType = Literal["string", "number", "integer", "boolean", "array", "object"]
Number = StrictInt | StrictFloat


def _shown(text: str) -> str:
    """A name as it may appear in a reason: printable and at most 64 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_type(value: Any, kind: JSONType) -> bool:
    """JSON types as Python values: a bool is neither a number nor an integer; an integer is a Python int."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return _is_number(value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type: 1 is not True and "1" is not 1; 1 and 1.0 are the same number."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _compile(pattern: str | None, field: str) -> Any:
    if pattern is None:
        return None
    try:
        return re2.compile(pattern)
    except Exception as error:  # re2.error; its message names what is wrong with the pattern
        raise ValueError(f"{field}: {pattern[:64]!r} is not a valid RE2 pattern ({error})") from None


class ValueConstraint(Constraint):
    """Checks on one JSON value. Each check that is set must hold; a check that cannot apply to the value's type
    (`max` on a string, `pattern` on a number) denies it."""

    model_config = ConfigDict(populate_by_name=True)

    type: JSONType | None = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    pattern: str | None = None  # RE2, must match the whole string
    not_pattern: str | None = None  # RE2, must not be found anywhere in the string
    min: Number | None = None
    max: Number | None = None
    max_length: StrictInt | None = None  # characters of a string, items of an array

    _pattern: Any = PrivateAttr(default=None)
    _not_pattern: Any = PrivateAttr(default=None)

    @field_validator("pattern", "not_pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        _compile(value, "pattern")
        return value

    @field_validator("min", "max")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ValueConstraint:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.max_length is not None and self.max_length < 0:
            raise ValueError("max_length must be 0 or more")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._pattern = _compile(self.pattern, "pattern")
        self._not_pattern = _compile(self.not_pattern, "not_pattern")

    def check(self, value: Any) -> str | None:
        try:
            return self._judge(value)
        except Exception:
            return "unjudgeable value"

    def _judge(self, value: Any) -> str | None:
        if self.type is not None and not _is_type(value, self.type):
            return f"value is not of type {self.type}"
        if self.in_ is not None and not any(_same(value, allowed) for allowed in self.in_):
            return "value is not one of the allowed values"
        if self.not_in is not None and any(_same(value, denied) for denied in self.not_in):
            return "value is one of the denied values"
        # the public fields say whether a pattern is set: reading a private attribute is slow, and most rules have none
        if self.pattern is not None or self.not_pattern is not None:
            if not isinstance(value, str):
                return "value is not a string (a pattern applies)"
            if self.pattern is not None and not self._pattern.fullmatch(value):
                return "value does not match the pattern"
            if self.not_pattern is not None and self._not_pattern.search(value):
                return "value matches the denied pattern"
        if self.min is not None or self.max is not None:
            if not _is_number(value) or not math.isfinite(value):
                return "value is not a finite number (a minimum or maximum applies)"
            if self.min is not None and value < self.min:
                return f"value is below the minimum {self.min}"
            if self.max is not None and value > self.max:
                return f"value is above the maximum {self.max}"
        if self.max_length is not None:
            if not isinstance(value, str | list):
                return "value is not a string or an array (a maximum length applies)"
            if len(value) > self.max_length:
                return f"value is longer than {self.max_length}"
        return None


def _refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every reference keyword in a schema, with where it is."""
    if isinstance(node, dict):
        for key, item in node.items():
            where = f"{path}/{key}"
            if key in ("$ref", "$dynamicRef", "$recursiveRef"):
                yield where, item
            yield from _refs(item, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _refs(item, f"{path}/{index}")


def _pointer(parts: Any) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class SchemaConstraint(Constraint):
    """All of a call's arguments against a JSON Schema (draft 2020-12). References must be local (`#/...`): a
    schema is never fetched from anywhere. A denial names where and which keyword failed, never the value."""

    model_config = ConfigDict(populate_by_name=True)

    json_schema: dict[str, Any] = Field(alias="schema")

    _validator: Draft202012Validator = PrivateAttr()

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        for where, ref in _refs(value):
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise ValueError(f"reference at {where or '/'} must be local ('#/...'); schemas are never fetched")
        # Imported when a policy has a schema: jsonschema loads every optional format library it finds at import.
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as error:
            where = _pointer(error.absolute_path)
            raise ValueError(f"invalid JSON Schema at {where}: {error.message[:120]}") from None
        return value

    def model_post_init(self, context: Any, /) -> None:
        from jsonschema import Draft202012Validator
        from referencing import Registry

        # An empty registry with no retrieval: a reference that is not in the schema itself fails, it is not fetched.
        self._validator = Draft202012Validator(self.json_schema, registry=Registry())

    def check(self, value: Any) -> str | None:
        try:
            error = next(self._validator.iter_errors(value), None)
        except Exception:  # an unresolvable reference, recursion on deep nesting
            return "arguments cannot be checked against the schema"
        if error is None:
            return None
        return f"at {_shown(_pointer(error.absolute_path))}: fails '{error.validator}'"
