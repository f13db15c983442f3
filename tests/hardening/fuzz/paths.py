"""Target: the request target (split_target, check_path) and route matching, against a model of how servers read paths.

The gateway authorises the path it forwards. An upstream may read that path differently: decode it once or twice,
remove dot segments, collapse `//`, turn `\\` into `/`, drop `;params` or a trailing slash, ignore case. The oracle:
for a target the gateway accepts and routes, no such reading may land on a route of a higher class (above all an
admin route) than the one the gateway authorised.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

from aiperimeter.errors import BadRequest
from aiperimeter.gateway.routes import ROUTES, Route, RouteTable
from aiperimeter.gateway.target import split_target
from tests.hardening.fuzz.engine import OracleFailure, Target

HOST = "gw.test"
METHODS = ("GET", "POST", "HEAD", "DELETE")
RANK = {"info": 0, "models": 0, "inference": 1, "admin": 2}
TABLES = {kind: RouteTable.for_kind(kind) for kind in ROUTES}
Split = Callable[[str, str | None], tuple[str, str]]


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, written out (not posixpath: a second, independent reading)."""
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    tail = "/" if path.endswith(("/.", "/..")) else ""
    return "/" + "/".join(out) + tail


def _steps(path: str) -> Iterator[str]:
    yield path.replace("\\", "/")
    yield re.sub("/{2,}", "/", path)
    yield remove_dot_segments(path)
    yield re.sub(";[^/]*", "", path)
    yield path.rstrip("/") or "/"
    yield path.rstrip(".") or "/"
    yield path.split("\x00")[0]
    yield path.lower()


def readings(path: str, raw_target: str) -> set[str]:
    """Every path a lenient server might route for `path`: each step alone and chained, after zero to two decodes."""
    found: set[str] = set()
    starts = {path, unquote(path), unquote(unquote(path))}
    if not raw_target.startswith("/"):
        starts.add(urlsplit(raw_target).path)
    for start in starts:
        frontier = {start}
        for _ in range(3):  # chains of up to three steps
            frontier = {step for item in frontier for step in _steps(item)} - found
            found |= frontier
        found.add(start)
    return {p for p in found if p.startswith("/")}


def higher(route: Route, authorised: Route) -> bool:
    return route is not authorised and RANK[route.cls] > RANK[authorised.cls]


def check(data: bytes, split: Split = split_target, tables: dict[str, RouteTable] = TABLES) -> None:
    raw = data.decode("latin-1")
    try:
        path, _query = split(raw, HOST)
    except BadRequest:
        return
    for kind, table in tables.items():
        for method in METHODS:
            found = table.match(method, path)
            if found is None:
                continue
            authorised = found[0]
            for reading in readings(path, raw.partition("?")[0]):
                other = table.match(method, reading)
                if other is not None and higher(other[0], authorised):
                    raise OracleFailure(
                        f"{kind} {method} {raw!r}: authorised as {authorised.path} ({authorised.cls}), "
                        f"a server may read {reading!r} = {other[0].path} ({other[0].cls})"
                    )


# --- inputs -----------------------------------------------------------------------------------------------------------

_ALL = sorted({r.path.replace("{digest}", "sha256-ab").replace("{id}", "0") for rs in ROUTES.values() for r in rs})
ROUTE_PATHS = [p.replace("{model...}", "llama3") for p in _ALL]
OPEN_ENDED = sorted({r.path.split("{")[0] + "m/" for rs in ROUTES.values() for r in rs if "{" in r.path})
ADMIN_PATHS = sorted({r.path for rs in ROUTES.values() for r in rs if r.admin and "{" not in r.path})
TRICKS = [
    "/../", "/./", "//", "\\", "%2e", "%2E", "%2f", "%2F", "%5c", "%252e", "%252f", "%25", "%00", "%0a", ";", ";x=1",
    "/.", "/..", "..%2f", "%2e%2e/", ".%2e", "%c0%ae", "%ef%bc%8f", "%u002e", "?", "#", "@", ":", "~", "%20", " ",
    "\t", "\x00", "/%2e%2e/", "/v1/../", "/api/tags/../", "%3b", "%3f", "%23", "*",
]  # fmt: skip
DOTS = ["..", "%2e%2e", ".%2e", "%252e%252e", "..;", "..%00", "%2E.", "."]
PREFIXES = ["", "http://gw.test", "https://gw.test", "HTTP://GW.TEST", "http://gw.test:80", "http://other", "//gw.test"]


def generate(rng: random.Random) -> bytes:
    path = rng.choice(ROUTE_PATHS)
    if rng.random() < 0.3:  # the routes that take the rest of the path are where a climb out could hide
        climb = (rng.choice(DOTS) + rng.choice(["/", "%2f", "\\"])) * rng.randint(0, 4)
        path = rng.choice(OPEN_ENDED) + climb + rng.choice(ADMIN_PATHS).lstrip("/")
    for _ in range(rng.randint(0, 3)):
        at = rng.randint(0, len(path))
        roll = rng.random()
        if roll < 0.4:
            piece = rng.choice(TRICKS)
        elif roll < 0.55:  # climb out of the route to an admin one, in some spelling of '..'
            piece = "/" + (rng.choice(DOTS) + "/") * rng.randint(1, 4) + rng.choice(ADMIN_PATHS).lstrip("/")
        elif roll < 0.8:
            piece = rng.choice(["/../", "/..;/", "/%2e%2e/", "/"]) + rng.choice(ADMIN_PATHS).lstrip("/")
        else:
            piece = rng.choice(["", "/"]) + path[rng.randrange(len(path)) :]
        path = path[:at] + piece + path[at:]
    if rng.random() < 0.2:
        path = "".join(c.upper() if rng.random() < 0.3 else c for c in path)
    if rng.random() < 0.15:
        path = rng.choice(PREFIXES) + path
    if rng.random() < 0.15:
        path += "?" + rng.choice(["model=x", "a=/../pull", "x=%2e", ""])
    return path.encode("latin-1", "replace")


TARGET = Target(
    name="request_path",
    check=check,
    generate=generate,
    seeds=[p.encode() for p in ROUTE_PATHS],
    tokens=[t.encode("latin-1") for t in TRICKS] + [p.encode() for p in ADMIN_PATHS],
    max_len=512,
)
