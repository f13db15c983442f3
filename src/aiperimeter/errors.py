"""The error hierarchy: every failure the project raises on purpose is one of these.

Client-facing errors render as the OpenAI error envelope so SDK clients show the message; the code is a stable,
low-cardinality string used in audit records and metrics. No error ever carries a secret or a stack trace.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class AiperimeterError(Exception):
    """Base of every deliberate error."""


class ConfigError(AiperimeterError):
    """Startup or usage problem: says where (file, field) and how to fix it. The CLI exits 2."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.field = field


class HTTPFailure(AiperimeterError):
    """An error that becomes an HTTP response with the OpenAI envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "code": self.code}})


class Deny(HTTPFailure):
    """A policy decision to stop a request before the upstream sees it."""

    status = 403
    type = "permission_error"


class BadRequest(Deny):
    status = 400
    type = "invalid_request_error"


class Unauthenticated(Deny):
    status = 401
    type = "authentication_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, headers={"WWW-Authenticate": 'Bearer realm="aiperimeter"'})


class Forbidden(Deny):
    status = 403


class ToolCallBlocked(Forbidden):
    """The tool policy refused a tool in the request, or a call in the response. Carries the decision taken."""

    def __init__(self, code: str, message: str, decision: object = None) -> None:
        super().__init__(code, message)
        self.decision = decision


class PayloadTooLarge(Deny):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(Deny):
    status = 415
    type = "invalid_request_error"


class NotFound(Deny):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(Deny):
    status = 405
    type = "invalid_request_error"


class Conflict(Deny):
    status = 409
    type = "invalid_request_error"


class RateLimited(Deny):
    status = 429
    type = "rate_limit_error"


class BackendUnavailable(HTTPFailure):
    """A state store is down: fail closed."""

    status = 503
    type = "service_unavailable"


class UpstreamError(HTTPFailure):
    """The model server could not be reached or did not answer in time."""

    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504


class InternalError(HTTPFailure):
    """An unexpected failure inside a stage: the request is denied with a generic message."""

    status = 500
    type = "server_error"

    def __init__(self) -> None:
        super().__init__("internal_error", "The gateway could not process this request.")
