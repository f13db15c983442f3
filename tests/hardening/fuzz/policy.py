"""Target: the policy engine and its path and URL constraints, against a simple model of the same policy.

The policy lists three tools: `get_time` (any arguments), `read_file` (a `path` under /srv/data) and `fetch` (an
https `url` on api.example.com). The model is written independently: deny by default, RFC 3986 dot-segment removal
for paths, and two other URL parsers (urllib, yarl) for hosts. The oracle: the engine allows => the model allows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import yarl

from aiperimeter.policy.calls import ToolCall, Verdict
from aiperimeter.policy.engine import Policy
from aiperimeter.policy.model import PolicyFile
from tests.hardening.fuzz.engine import OracleFailure, Target
from tests.hardening.fuzz.paths import remove_dot_segments

_RESOLVABLE = re.compile(r"[a-z0-9._\-]+|\[[0-9a-f:.]+\]")
ROOT = "/srv/data"
HOST = "api.example.com"
SPEC: dict[str, Any] = {
    "action": "block",
    "tools": {
        "get_time": None,
        "read_file": {"args": {"path": {"required": True, "type": "string", "path": {"roots": [ROOT]}}}},
        "fetch": {"args": {"url": {"required": True, "type": "string", "url": {"hosts": [HOST]}}}},
    },
}
POLICY = Policy("fuzz", PolicyFile.model_validate(SPEC))
Evaluate = Callable[[ToolCall], Verdict]


def path_allowed(value: Any) -> bool:
    if not isinstance(value, str) or "\x00" in value or not value:
        return False
    absolute = value if value.startswith("/") else f"{ROOT}/{value}"
    normal = remove_dot_segments(re.sub("/+", "/", absolute))  # POSIX: repeated slashes are one
    return normal == ROOT or normal.startswith(ROOT + "/")


def _host(host: str | None) -> str:
    """The host a reader would connect to; "" when it has none a resolver would take (e.g. `\\api.example.com`)."""
    name = unquote(host or "").lower().rstrip(".")
    return name if _RESOLVABLE.fullmatch(name) else ""


def _whatwg_host(url: str) -> str | None:
    """The host a WHATWG reader (browsers, Node's fetch) takes for a special scheme: any run of '/' and '\\' after
    the scheme is skipped, the authority ends at '/', '\\', '?' or '#', user info ends at its last '@'."""
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in ("http", "https"):
        return None
    authority = re.split(r"[/\\?#]", rest.lstrip("/\\"), maxsplit=1)[0]
    host = authority.rpartition("@")[2]
    return host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.partition(":")[0]


def _reader_hosts(url: str) -> set[str]:
    """The host each independent reader takes; one that refuses the URL reaches none."""
    hosts = set()
    for read in (lambda: urlsplit(url).hostname, lambda: yarl.URL(url).host, lambda: _whatwg_host(url)):
        try:
            hosts.add(_host(read()))
        except ValueError:
            hosts.add("")
    return hosts


def url_allowed(value: Any) -> bool:
    """An https URL that no reader takes to a host other than the allowed one (a reader that finds no host at all
    cannot be pointed anywhere)."""
    if not isinstance(value, str):
        return False
    try:
        split = urlsplit(value.strip())
    except ValueError:
        return False
    return split.scheme.lower() == "https" and _reader_hosts(value.strip()) <= {HOST, ""} and not split.username


def model_allows(call: ToolCall) -> bool:
    args = call.arguments
    if call.error is not None or not isinstance(args, dict):
        return False
    if call.name == "get_time":
        return True
    if call.name == "read_file":
        return set(args) == {"path"} and path_allowed(args["path"])
    if call.name == "fetch":
        return set(args) == {"url"} and url_allowed(args["url"])
    return False


def call_of(data: bytes) -> ToolCall:
    """A JSON document {"name", "arguments"}; anything else is the argument text of a tool picked by the first byte."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("name"), str):
        args = doc.get("arguments")
        if isinstance(args, dict):
            return ToolCall(doc["name"], args)
        return ToolCall(doc["name"], None, error="not_an_object")
    text = data[1:].decode("utf-8", "surrogateescape")
    if data[:1] and data[0] % 2:
        return ToolCall("fetch", {"url": text})
    return ToolCall("read_file", {"path": text})


def check(data: bytes, evaluate: Evaluate = POLICY.judge) -> None:
    call = call_of(data)
    verdict = evaluate(call)
    if verdict.delivered and not model_allows(call):
        raise OracleFailure(f"the engine allows {call.name}({call.arguments!r}) but the model forbids it")


# --- inputs -----------------------------------------------------------------------------------------------------------

PATHS = [
    "/srv/data/a.txt", "a.txt", "/srv/data/../etc/passwd", "../../etc/shadow", "/srv/data2/x", "/srv/dat",
    "/srv/data/./b/../c", "//srv/data/x", "/srv//data/x", "/srv/data/%2e%2e/x", "/srv/data/\x00/../../x", "~/x",
    "/srv/data/..", "/srv/data/...", "/SRV/DATA/x", "/srv/data\\..\\x", "/proc/self/environ", "",
]  # fmt: skip
URLS = [
    "https://api.example.com/x", "https://api.example.com.evil.com/", "https://evil.com\\@api.example.com/",
    "https://api.example.com@evil.com/", "http://api.example.com/", "HTTPS://API.EXAMPLE.COM/",
    "https://api.example.com./", "https://api%2eexample.com/", "https://evil.com#@api.example.com",
    "https://evil.com?@api.example.com", " https://api.example.com/", "https://api.example.com:8443/",
    "https://[::1]/", "https://127.0.0.1/", "//api.example.com/", "https:api.example.com", "https://аpi.example.com/",
    "https://api.example.com\t.evil/", "https://user:pw@api.example.com/",
]  # fmt: skip


def generate(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        return b"\x00" + rng.choice(PATHS).encode("utf-8", "surrogateescape")
    if roll < 0.8:
        return b"\x01" + rng.choice(URLS).encode()
    name = rng.choice(["get_time", "read_file", "fetch", "rm", "Read_file", "fetch ", ""])
    args: Any = rng.choice([{}, {"path": rng.choice(PATHS)}, {"url": rng.choice(URLS)}, [], None, {"path": 1}])
    if isinstance(args, dict) and rng.random() < 0.3:
        args = {**args, "extra": 1}
    return orjson.dumps({"name": name, "arguments": args})


TARGET = Target(
    name="policy_engine",
    check=check,
    generate=generate,
    seeds=[b"\x00" + p.encode() for p in PATHS] + [b"\x01" + u.encode() for u in URLS],
    tokens=[b"/", b"..", b"../", b"./", b"\\", b"@", b"#", b"?", b"%2e", b"%2f", b":", b".", b"//", b"%00", b"\t"],
    max_len=1024,
)
