"""The normalised tool call every wire format is read into, and the verdict a policy gives it.

Parsers read a call from OpenAI Chat Completions, OpenAI Responses, Anthropic Messages or Ollama chat into a
`ToolCall`; the policy judges only complete calls. Arguments that are not a JSON object (invalid, partial, a list)
keep `arguments=None` and an `error`: a policy denies them, it never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Action(StrEnum):
    """What happens to a call the policy does not allow."""

    BLOCK = "block"  # the whole response becomes a policy error
    STRIP = "strip"  # the call is removed, the rest delivered, with a notice in its place
    AUDIT = "audit"  # the call is delivered; the violation is recorded (rolling a policy out)


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | None  # the parsed arguments; None when they are not a JSON object
    call_id: str | None = None  # the call's id where the format has one (Ollama has none)
    kind: str = "function"  # "function", or "custom" (OpenAI free-text tools: the text is arguments["input"])
    error: str | None = None  # why the arguments are unusable: "invalid_json", "not_an_object", "incomplete"
    raw_size: int = 0  # bytes of the arguments as sent, for the audit summary


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision on one call. `delivered` says whether the client receives it."""

    decision: str  # "allow" | "block" | "strip" | "audit"
    rule: str | None = None  # the rule that decided, e.g. "tools.run_sql.args.query.sql.read_only"
    reason: str | None = None  # why, in words; never an argument's full value

    @property
    def delivered(self) -> bool:
        return self.decision in ("allow", "audit")


ALLOW = Verdict("allow")


class Judge(Protocol):
    """Judges one complete tool call. Parsers call it once per call, when its arguments are complete."""

    def __call__(self, call: ToolCall) -> Verdict: ...


@dataclass(slots=True)
class Decision:
    """A judged call, as recorded in the audit log and counted in metrics."""

    call: ToolCall
    verdict: Verdict
    extra: dict[str, Any] = field(default_factory=dict)
