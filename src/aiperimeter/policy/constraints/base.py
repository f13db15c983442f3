"""What every argument constraint is: a strict, frozen pydantic model with a `check` method."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Constraint(BaseModel):
    """Validated from the policy file; unknown fields are errors that name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check(self, value: Any) -> str | None:
        """None when `value` is allowed; otherwise a short reason that names what is wrong (a statement type, a
        table, a command, a host), never the whole value, which may carry data or secrets."""
        raise NotImplementedError
