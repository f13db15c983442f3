"""Hold a key to its tool policy. Request side here; the response side runs inside forward.

Before forwarding: the tools a request declares, the tool it forces and the tool results it sends back are checked
against the key's policy (a JWT's claim, or the gateway's default). The response's tool calls are then judged one
by one as forward relays it, through the wire format's guard (`gateway/tools/`), so no call reaches the client
unjudged, streamed or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from aiperimeter.errors import BadRequest, Forbidden, ToolCallBlocked
from aiperimeter.gateway.pipeline import Exchange, Stage
from aiperimeter.gateway.tools import anthropic, ollama, openai_chat, openai_responses
from aiperimeter.gateway.tools.casefold import case_variant, may_hide
from aiperimeter.policy.calls import Decision, ToolCall, Verdict
from aiperimeter.policy.engine import summarise

if TYPE_CHECKING:
    from aiperimeter.policy.engine import Policy, PolicySet

# Which wire format each tool-capable route speaks. Routes not listed take no tools.
FORMATS: dict[str, ModuleType] = {
    "/v1/chat/completions": openai_chat,
    "/chat/completions": openai_chat,  # llama.cpp
    "/v1/responses": openai_responses,
    "/v1/messages": anthropic,
    "/v1/messages/count_tokens": anthropic,
    "/api/chat": ollama,
    "/invocations": openai_chat,  # vLLM (admin scope): runs chat completions
}
STREAMS_BY_DEFAULT = frozenset({"/api/chat"})  # Ollama streams unless the request says "stream": false
# Body fields that carry tools in some format: on a route this stage cannot read tools from, they are refused.
TOOL_FIELDS = ("tools", "functions", "tool_choice", "function_call", "mcp_servers", "tool_resources")
# Field names that carry tools, calls or results in some format. Go's encoding/json (Ollama, LocalAI) matches object
# keys to them without regard to case, so `Tools` is `tools` upstream: a case variant of one is refused.
KNOWN_FIELDS = frozenset(
    {"model", "stream", "messages", "input", "prompt", "role", "content", "tools", "functions", "tool_choice",
     "function_call", "function", "custom", "allowed_tools", "mcp_servers", "container", "name", "type", "arguments",
     "tool_calls", "tool_call_id", "tool_name", "tool_use_id", "call_id", "output", "id"}
)  # fmt: skip
# Objects under these keys are the caller's own data (schemas, arguments), decoded as maps, not matched to fields.
FREE_FORM = frozenset({"parameters", "input_schema", "schema", "arguments", "input", "metadata", "properties"})


@dataclass(slots=True)
class ToolPlan:
    """One request's tool policy, its wire format, and every decision taken on it (request and response side)."""

    policy: Policy
    format: ModuleType
    streamed: bool = False  # the request asked for a stream: the response is judged as one, whatever its label
    decisions: list[Decision] = field(default_factory=list)

    def judge(self, call: ToolCall) -> Verdict:
        return self.policy.judge(call)

    def audit(self) -> list[dict[str, object]]:
        """The decisions as the audit log keeps them: names, ids, rule and an argument summary; no value."""
        return [
            {
                "tool": d.call.name[:128],
                "call_id": d.call.call_id[:128] if d.call.call_id else None,
                "decision": d.verdict.decision,
                "rule": d.verdict.rule,
                "side": d.extra.get("side", "response"),
                "args": summarise(d.call.arguments),
                "reason": d.verdict.reason[:200] if d.verdict.reason else None,
                "error": d.call.error,
                "policy": self.policy.name,
            }
            for d in self.decisions[:256]
        ]


class ToolPolicy(Stage):
    name: ClassVar[str] = "tool_policy"

    def __init__(self, policies: PolicySet, default: str | None) -> None:
        self.policies = policies
        self.default = default

    async def on_request(self, ex: Exchange) -> None:
        key = ex.key
        name = (key.tool_policy if key is not None else None) or self.default
        if name is None or ex.json is None:
            return
        policy = self.policies.get(name)
        if policy is None:
            # A key naming a policy this gateway lacks is a configuration slip; failing open would drop every rule.
            raise Forbidden(
                "tool_policy_unknown",
                f"This key is held to the tool policy {name!r}, which this gateway has not loaded; "
                "the operator must add it to the tool policies folder.",
            )
        wire = FORMATS.get(ex.path)
        if wire is None:
            for tool_field in TOOL_FIELDS:
                if tool_field in ex.json:
                    raise Forbidden(
                        "tools_not_supported_here",
                        f"This key is held to a tool policy, and this route's {tool_field!r} field cannot be checked.",
                    )
            return
        variant = case_variant(ex.json, KNOWN_FIELDS, FREE_FORM) if may_hide(ex.body) else None
        if variant is not None:
            raise BadRequest(
                "ambiguous_field",
                f"The request body has a field {variant[:64]!r} that some servers read as another, known field; "
                "spell field names exactly.",
            )
        streamed = ex.json.get("stream", ex.path in STREAMS_BY_DEFAULT) is True
        plan = ex.tools = ToolPlan(policy, wire, streamed)
        try:
            plan.decisions.extend(policy.check_request(wire.read_request(ex.json)))
        except ToolCallBlocked as refused:
            if isinstance(refused.decision, Decision):
                plan.decisions.append(refused.decision)
            raise
