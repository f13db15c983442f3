"""A loaded policy judges tool calls (response side) and what a request says about tools (request side).

Judging order for one call, first failure wins: hosted or unreadable -> listed -> arguments parse -> schema ->
required arguments -> each argument's value checks, then its parser -> arguments the rule does not list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiperimeter.errors import BadRequest, ToolCallBlocked
from aiperimeter.gateway.tools.base import RequestTools
from aiperimeter.policy.calls import ALLOW, Action, Decision, ToolCall, Verdict
from aiperimeter.policy.model import PolicyFile, ToolRule

_ARGUMENT_ERRORS = {
    "invalid_json": "the arguments are not valid JSON",
    "not_an_object": "the arguments are not a JSON object",
    "incomplete": "the arguments were incomplete when the response ended",
    "too_large": "the arguments are too large to judge",
}


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    spec: PolicyFile
    source: str = ""  # the file it was loaded from

    def _deny(self, rule: ToolRule | None, where: str, reason: str, *, malformed: bool = False) -> Verdict:
        action = (rule.action if rule is not None else None) or self.spec.action
        if action is Action.AUDIT and malformed:
            action = Action.STRIP  # a call nobody can execute is never delivered, even while auditing
        return Verdict(action.value, where, reason)

    def judge(self, call: ToolCall) -> Verdict:
        if call.error in ("hosted", "unreadable"):
            what = "runs at the provider" if call.error == "hosted" else "could not be read"
            return self._deny(
                None, "tools.hosted", f"{call.name!r} {what}; the gateway cannot check it", malformed=True
            )
        rule = self.spec.tools.get(call.name)
        base = f"tools.{call.name[:128]}"
        args = call.arguments
        if args is None:  # before the listing: a call nobody can execute is not delivered, listed or not, audit or not
            reason = _ARGUMENT_ERRORS.get(call.error or "", "the arguments are unusable")
            return self._deny(rule, f"{base}.arguments", reason, malformed=True)
        if rule is None:
            return self._deny(None, "tools.not_listed", f"tool {call.name[:64]!r} is not in policy {self.name!r}")
        if rule.schema_ is not None:
            problem = rule.schema_.check(args)
            if problem is not None:
                return self._deny(rule, f"{base}.schema", problem)
        if rule.args is None:
            return ALLOW
        for name, arg in rule.args.items():
            if name not in args:
                if arg.required:
                    return self._deny(rule, f"{base}.args.{name}.required", f"argument {name!r} is required")
                continue
            value = args[name]
            problem = arg.check(value)
            if problem is not None:
                return self._deny(rule, f"{base}.args.{name}.value", problem)
            for kind, constraint in arg.typed():
                problem = constraint.check(value)
                if problem is not None:
                    return self._deny(rule, f"{base}.args.{name}.{kind}", problem)
        if not rule.allow_other_args:
            for name in args:
                if name not in rule.args:
                    return self._deny(rule, f"{base}.args.not_listed", f"argument {str(name)[:64]!r} is not listed")
        return ALLOW

    # --- request side ---------------------------------------------------------------------------------------------

    def check_request(self, tools: RequestTools) -> list[Decision]:
        """Refuse a request that declares, forces or returns results for tools this policy does not allow.

        Hosted tools are refused whatever the action: their calls run where the gateway cannot see them, so not
        even an audit could record them. Earlier calls in the history are judged again: a result may only answer a
        call that would have been delivered. Returns the decisions to record; raises to refuse.
        """
        audit = self.spec.action is Action.AUDIT
        recorded: list[Decision] = []

        def refuse(code: str, name: str, rule: str, message: str) -> ToolCallBlocked:
            decision = Decision(ToolCall(name[:128], None), Verdict("block", rule, code), {"side": "request"})
            return ToolCallBlocked(code, message, decision)

        for other in tools.hosted_other:
            raise refuse(
                "hosted_tool_not_allowed",
                other,
                "tools.hosted",
                f"The request field {other[:64]!r} makes the provider run tools out of the gateway's sight; "
                f"tool policy {self.name!r} does not allow it.",
            )
        for declared in tools.declared:
            if declared.hosted:
                raise refuse(
                    "hosted_tool_not_allowed",
                    declared.name or declared.type,
                    "tools.hosted",
                    f"The tool type {declared.type[:64]!r} runs at the provider, where the gateway cannot check its "
                    f"calls; tool policy {self.name!r} does not allow it.",
                )
            if declared.name is None:
                raise BadRequest("invalid_tools", "Every tool in the request needs a name.")
        for name in [d.name for d in tools.declared if d.name is not None] + tools.forced:
            if name in self.spec.tools:
                continue
            if not audit:
                raise refuse(
                    "tool_not_allowed",
                    name,
                    "tools.not_listed",
                    f"The tool {name[:64]!r} is not allowed by tool policy {self.name!r}.",
                )
            verdict = Verdict("audit", "tools.not_listed", "not in the policy")
            recorded.append(Decision(ToolCall(name[:128], None), verdict, {"side": "request"}))
        delivered_ids: set[str] = set()
        delivered_names: set[str] = set()
        refused_ids: set[str] = set()
        for call in tools.history:
            verdict = self.judge(call)
            if verdict.decision == "audit":
                recorded.append(Decision(call, verdict, {"side": "history"}))
            if verdict.delivered:
                if call.call_id is not None:
                    delivered_ids.add(call.call_id)
                delivered_names.add(call.name)
            elif call.call_id is not None:
                refused_ids.add(call.call_id)
        for call_id, tool_name in tools.results:
            if call_id is not None and call_id in delivered_ids and call_id not in refused_ids:
                continue  # an id shared with a refused call answers that call too: refused below
            if call_id is None and tool_name is None:
                raise BadRequest("invalid_tool_result", "A tool result names neither its call id nor its tool.")
            if call_id is None and tool_name in delivered_names:
                continue  # Ollama: results name their tool, not a call
            label = tool_name or call_id or ""
            if (call_id is not None and call_id in refused_ids) or (
                call_id is None and tool_name not in delivered_names
            ):
                raise refuse(
                    "tool_result_not_allowed",
                    label,
                    "tools.results",
                    f"A tool result answers a call that tool policy {self.name!r} does not allow; "
                    "remove the call and its result from the conversation.",
                )
            raise refuse(
                "tool_result_unknown",
                label,
                "tools.results",
                "A tool result answers no tool call in the conversation; send the assistant turn that made the call.",
            )
        return recorded


@dataclass(slots=True)
class PolicySet:
    """Every policy the gateway loaded, by name."""

    policies: dict[str, Policy] = field(default_factory=dict)

    def get(self, name: str) -> Policy | None:
        return self.policies.get(name)

    def __len__(self) -> int:
        return len(self.policies)

    def names(self) -> list[str]:
        return sorted(self.policies)


def summarise(arguments: dict[str, Any] | None) -> dict[str, str] | None:
    """What the audit log keeps of a call's arguments: each name with its type and size, never a value."""
    if arguments is None:
        return None
    out: dict[str, str] = {}
    for index, (name, value) in enumerate(arguments.items()):
        if index == 32:
            out["..."] = f"{len(arguments) - 32} more"
            break
        key = str(name)[:64]
        if isinstance(value, str):
            out[key] = f"string({len(value)})"
        elif isinstance(value, bool) or value is None:
            out[key] = type(value).__name__.lower()
        elif isinstance(value, int | float):
            out[key] = "number"
        elif isinstance(value, list):
            out[key] = f"array({len(value)})"
        elif isinstance(value, dict):
            out[key] = f"object({len(value)})"
        else:
            out[key] = type(value).__name__
    return out
