"""Deny every route the upstream kind's allowlist does not admit; admin routes need the admin scope."""

from __future__ import annotations

from typing import ClassVar

from aiperimeter.errors import Forbidden
from aiperimeter.gateway.pipeline import Exchange, Stage
from aiperimeter.gateway.routes import RouteTable
from aiperimeter.keys import ADMIN_SCOPE


class RoutePolicy(Stage):
    name: ClassVar[str] = "route_policy"

    def __init__(self, table: RouteTable, kind: str) -> None:
        self.table = table
        self.kind = kind

    async def on_request(self, ex: Exchange) -> None:
        found = self.table.match(ex.method, ex.path)
        if found is None:
            raise Forbidden(
                "route_not_allowed",
                f"This method and path are not on the gateway's allowlist for {self.kind} upstreams.",
            )
        ex.route, ex.params = found
        if ex.route.admin and (ex.key is None or ADMIN_SCOPE not in ex.key.scopes):
            raise Forbidden("admin_scope_required", "This route changes the model server; it needs an admin key.")
