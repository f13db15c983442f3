"""The dashboard on a real gateway's admin listener, with real traffic through the gateway, in a real browser.

The browser is the system's Chromium driven by Playwright (no browser is downloaded). It must draw the traffic with
data (SVG geometry, and a screenshot with the chart's colours in it), show the canary alert with its evidence, show
hostile names as text, load nothing from anywhere but the admin origin, and log no error or CSP violation.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp import web

from aiperimeter.state.sqlite import SQLiteKeyStore
from tests.integration.test_admin_api import admin_port
from tests.support.gateway import DB, GatewayProcess, add_key, start_gateway
from tests.support.http import Response, request
from tests.support.upstream import FakeUpstream

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
XSS = "<img src=x onerror=alert(1)>"
BURST = 20  # refusals from one address that the detector calls a burst
BLOCKED = "203.0.113.77"
BLOCK_REASON = "<b>probing</b> from a scanner"
CANARY_AGENT = "leaked-config-reader/1.0 <script>alert(2)</script>"
# The light theme's series colours (dashboard.css --k0..--k8): the traffic chart is drawn in these.
SERIES_RGB = [
    (0x25, 0x63, 0xEB), (0x16, 0xA3, 0x4A), (0xD9, 0x77, 0x06), (0x93, 0x33, 0xEA), (0x08, 0x91, 0xB2),
    (0xDB, 0x27, 0x77), (0x65, 0xA3, 0x0D), (0xEA, 0x58, 0x0C), (0x94, 0xA3, 0xB8),
]  # fmt: skip


# --- the site: a gateway with traffic, a suspended key, a blocked address and a used canary ---------------------


@dataclass
class Site:
    gateway: GatewayProcess
    port: int
    admin: str
    user: str
    ids: dict[str, str]
    requests: int  # requests sent through the gateway
    overview: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def basic(password: str, user: str = "ops") -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def get(site: Site, target: str, *headers: tuple[str, str], key: str | None = None) -> Response:
    return request(site.port, "GET", target, key=key, headers=list(headers))


async def _chat(request: web.BaseRequest) -> web.StreamResponse:
    """Usage grows with the number of messages; a stream answers as server-sent events."""
    doc = orjson.loads(await request.read())
    prompt, completion = 40 * len(doc.get("messages", [])), 25 * len(doc.get("messages", []))
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    if not doc.get("stream"):
        return web.json_response({"choices": [{"message": {"content": "ok"}}], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in ("one", "two", "three"):
        await response.write(b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % word.encode())
    await response.write(b'data: {"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _chat_body(messages: int, stream: bool = False) -> dict[str, object]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}] * messages}


def _store_call(data_dir: Path, call: str, *args: object) -> Any:
    async def run() -> Any:
        store = SQLiteKeyStore(data_dir / DB)
        try:
            return await getattr(store, call)(*args)
        finally:
            await store.close()

    return asyncio.run(run())


def wait_overview(site: Site, ready: Any, seconds: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = get(site, "/admin/api/overview?window=3600", key=site.admin)
        assert response.status == 200, response.body
        doc = response.json()
        if ready(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"the overview never showed the traffic: {doc}")


@pytest.fixture(scope="module")
def site(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("dashboard")
    _, admin = add_key(data_dir, "ops", scopes=frozenset({"admin"}))
    ids: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for name in ("web-app", XSS, "batch-jobs", "to-suspend", "planted"):
        record, secret = add_key(data_dir, name, canary=name == "planted")
        ids[name], secrets[name] = record.id, secret
    config = data_dir / "gateway.yaml"
    config.write_text("watch:\n  brute_force:\n    exempt: [127.0.0.0/8]\n")  # refusals in a burst, never slowed
    gateway = start_gateway(data_dir, upstream.url, "openai", "--admin-listen", "127.0.0.1:0", "--config", str(config))
    try:
        upstream.script("/v1/chat/completions", _chat)
        port, sent = gateway.port, 0
        for name, times, messages, stream in (("web-app", 8, 3, False), (XSS, 3, 1, False), ("batch-jobs", 4, 6, True)):
            for _ in range(times):
                done = request(
                    port, "POST", "/v1/chat/completions", key=secrets[name], body=_chat_body(messages, stream)
                )
                assert done.status == 200 and (b"[DONE]" in done.body) is stream
                sent += 1
        for _ in range(3):  # denied: a route the upstream kind does not allow
            assert request(port, "POST", "/v1/fine_tuning/jobs", key=secrets["web-app"], body={}).status in (403, 404)
            sent += 1
        for _ in range(BURST):  # denied: not a key, enough of them from one address to raise a denial burst
            assert request(port, "GET", "/v1/models", key="aip_not_a_key").status == 401
            sent += 1
        canary = request(port, "GET", "/v1/models", key=secrets["planted"], headers=[("User-Agent", CANARY_AGENT)])
        assert canary.status == 401
        sent += 1
        upstream.unscript()
        changed = request(admin_port(gateway), "POST", f"/admin/keys/{ids['to-suspend']}/suspend", key=admin)
        assert changed.status == 200
        _store_call(data_dir, "block", BLOCKED, time.time() + 3600, BLOCK_REASON, "test")
        built = Site(gateway, admin_port(gateway), admin, secrets["web-app"], ids, sent)
        built.overview = wait_overview(
            built,
            lambda doc: (
                doc["traffic"]["totals"]["requests"] >= sent
                and {"canary", "denial_burst"} <= {a["kind"] for a in doc["alerts"]}
            ),
        )
        yield built
    finally:
        gateway.stop()


# --- the API, over plain HTTP ----------------------------------------------------------------------------------


def test_the_overview_counts_the_traffic_by_key_reason_and_stream(site: Site) -> None:
    doc = site.overview
    traffic = doc["traffic"]
    assert doc["watch"] == {"enabled": True, "running": True, "message": None, "rejected": 0}
    assert traffic["totals"]["requests"] == site.requests
    assert traffic["totals"]["streams"] == 4
    per_key = {s["key"]: sum(s["values"]) for s in traffic["requests"] if s["kind"] == "key"}
    assert per_key[site.ids["web-app"]] == 8 + 3
    assert per_key[site.ids[XSS]] == 3
    assert per_key[site.ids["batch-jobs"]] == 4
    reasons = {d["reason"]: d["count"] for d in traffic["deny_totals"]}
    assert reasons == {"route_not_allowed": 3, "malformed_credentials": BURST, "invalid_key": 1}  # the canary: 1
    tokens = {t["key"]: (t["tokens_in"], t["tokens_out"]) for t in traffic["top_tokens"]}
    assert tokens[site.ids["web-app"]] == (8 * 120, 8 * 75)
    assert tokens[site.ids["batch-jobs"]] == (4 * 240, 4 * 150)
    assert doc["names"][site.ids[XSS]] == XSS
    assert [k["name"] for k in doc["suspended"]] == ["to-suspend"]
    assert [(b["address"], b["reason"]) for b in doc["blocks"]] == [(BLOCKED, BLOCK_REASON)]
    assert [k["name"] for k in doc["canaries"]] == ["planted"]
    (alert,) = [a for a in doc["alerts"] if a["kind"] == "canary"]
    assert alert["severity"] == "critical" and alert["key"] == site.ids["planted"]
    assert alert["details"]["user_agent"] == CANARY_AGENT


def evidence_of(site: Site) -> list[str]:
    (burst,) = [a for a in site.overview["alerts"] if a["kind"] == "denial_burst"]
    assert len(burst["evidence"]) >= 5
    return list(burst["evidence"])


def test_an_alerts_evidence_opens_its_audit_record(site: Site) -> None:
    for request_id in evidence_of(site):
        response = get(site, f"/admin/api/audit/{request_id}", basic(site.admin))
        assert response.status == 200
        record = response.json()
        assert record["request_id"] == request_id
        assert record["deny"] == "malformed_credentials" and record["client"] == "127.0.0.1"
    assert get(site, "/admin/api/audit/" + "0" * 24, key=site.admin).code == "record_not_held"
    assert get(site, "/admin/api/audit/not-an-id", key=site.admin).status == 400


@pytest.mark.parametrize(
    "target",
    ["/admin/dashboard", "/admin/dashboard/dashboard.js", "/admin/api/overview", "/admin/api/audit/" + "a" * 24],
)
def test_without_credentials_a_browser_is_asked_for_basic_ones(site: Site, target: str) -> None:
    for headers in ([], [basic("aip_wrong")], [("Authorization", "Basic %%%")], [basic("", "ops")]):
        response = get(site, target, *headers)
        assert response.status == 401, headers
        assert response.headers["www-authenticate"] == 'Basic realm="aiperimeter admin", charset="UTF-8"'
        assert b"aip_wrong" not in response.body and b"traffic" not in response.body
        assert response.json()["error"]["type"] == "authentication_error"


def test_a_key_without_the_admin_scope_is_refused_as_bearer_and_as_basic(site: Site) -> None:
    for response in (
        get(site, "/admin/api/overview", key=site.user),
        get(site, "/admin/dashboard", basic(site.user)),
    ):
        assert response.status == 403
        assert response.code == "admin_scope_required"
        assert b"traffic" not in response.body


def test_key_changing_routes_refuse_basic_auth(site: Site) -> None:
    """Basic credentials are remembered by the browser and sent by any page's forms: never for a change."""
    before = get(site, "/admin/keys", key=site.admin).json()["data"]
    created = request(site.port, "POST", "/admin/keys", headers=[basic(site.admin)], body={"name": "csrf"})
    suspended = request(site.port, "POST", f"/admin/keys/{site.ids['web-app']}/suspend", headers=[basic(site.admin)])
    listed = get(site, "/admin/keys", basic(site.admin))
    for response in (created, suspended, listed):
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert get(site, "/admin/keys", key=site.admin).json()["data"] == before


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/admin/api/overview?window=59", 400),
        ("GET", "/admin/api/overview?window=1209601", 400),
        ("GET", "/admin/api/overview?window=3600&window=60", 400),
        ("GET", "/admin/api/overview?window=1h", 400),
        ("GET", "/admin/api/overview?since=0", 400),
        ("GET", "/admin/dashboard?x=1", 400),
        ("GET", "/admin/dashboard/dashboard.html", 404),
        ("GET", "/admin/dashboard/../keys", 404),
        ("GET", "/admin/api/keys", 404),
        ("POST", "/admin/api/overview", 405),
        ("HEAD", "/admin/dashboard", 405),
        ("DELETE", "/admin/api/audit/" + "a" * 24, 405),
    ],
)
def test_malformed_requests_are_refused_clearly(site: Site, method: str, target: str, status: int) -> None:
    response = request(site.port, method, target, key=site.admin)
    assert response.status == status
    if method != "HEAD":
        assert response.json()["error"]["message"]


def test_every_dashboard_response_carries_the_strict_headers(site: Site) -> None:
    for target in ("/admin/dashboard", "/admin/dashboard/dashboard.js", "/admin/dashboard/dashboard.css",
                   "/admin/api/overview?window=21600"):  # fmt: skip
        response = get(site, target, basic(site.admin))
        assert response.status == 200, target
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
    assert get(site, "/admin/dashboard/", basic(site.admin)).headers["location"] == "/admin/dashboard"


def test_with_watch_off_the_api_says_so(upstream: FakeUpstream, tmp_path: Path) -> None:
    _, admin = add_key(tmp_path, "ops", scopes=frozenset({"admin"}))
    _, user = add_key(tmp_path, "user")
    config = tmp_path / "gateway.yaml"
    config.write_text("watch:\n  enabled: false\n")
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--admin-listen", "127.0.0.1:0", "--config", str(config))
    try:
        assert request(gateway.port, "GET", "/v1/models", key=user).status == 200
        port = admin_port(gateway)
        doc = request(port, "GET", "/admin/api/overview?window=3600", key=admin).json()
        assert doc["traffic"] is None
        assert doc["watch"]["enabled"] is False and doc["watch"]["running"] is False
        assert "watch.enabled: false" in str(doc["watch"]["message"])
        assert doc["alerts"] == [] and doc["suspended"] == []
        assert request(port, "GET", "/admin/api/audit/" + "a" * 24, key=admin).code == "watch_off"
    finally:
        gateway.stop()


# --- the page, in Chromium ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_driver() -> Iterator[Playwright]:
    missing = None
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        missing = f"{CHROMIUM} is not installed (Debian: apt-get install chromium; `make test` installs it as root)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install -e '.[test]')"
    if missing is not None:
        if os.environ.get("AIPERIMETER_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{missing}, and this run requires every service test to run")
        pytest.skip(missing)
    with sync_playwright() as driver:
        yield driver


@dataclass
class Visit:
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        found = self.page.evaluate("() => window.__cspViolations || []")
        assert isinstance(found, list)
        return [str(v) for v in found]


CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


def visit(driver: Playwright, profile: Path, origin: str, password: str | None) -> Visit:
    context = driver.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=FLAGS,
        headless=True,
        http_credentials={"username": "ops", "password": password} if password is not None else None,
        color_scheme="light",
        viewport={"width": 1280, "height": 900},
    )
    page = context.pages[0] if context.pages else context.new_page()
    seen = Visit(context, page)

    def route(route: Any) -> None:
        url = route.request.url
        if url == origin or url.startswith(origin + "/"):
            route.continue_()
        else:
            seen.elsewhere.append(url)
            route.abort()

    context.route("**/*", route)
    context.on("request", lambda r: seen.requests.append(r.url))
    context.add_init_script(CSP_LISTENER)
    page.on("console", lambda m: seen.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(f"page error: {e}"))

    def dialog(d: Any) -> None:
        seen.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    return seen


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit, non-interlaced PNG (what Chromium's screenshots are)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    pixel = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * pixel
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind_ = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - pixel] if i >= pixel else 0
            up = previous[i]
            corner = previous[i - pixel] if i >= pixel else 0
            if kind_ == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind_ == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind_ == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind_ == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line) if pixel == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3))
        previous = line
    return width, height, rows


def palette_pixels(png: bytes) -> dict[int, int]:
    """How many pixels of each series colour (within a small tolerance for anti-aliasing) the image holds."""
    width, _, rows = decode_png(png)
    counts: dict[int, int] = {}
    for row in rows:
        for x in range(width):
            r, g, b = row[3 * x], row[3 * x + 1], row[3 * x + 2]
            for index, (pr, pg, pb) in enumerate(SERIES_RGB):
                if abs(r - pr) + abs(g - pg) + abs(b - pb) <= 12:
                    counts[index] = counts.get(index, 0) + 1
                    break
    return counts


def test_the_page_draws_the_traffic_alerts_and_lists_in_chromium(
    site: Site, browser_driver: Playwright, tmp_path: Path
) -> None:
    seen = visit(browser_driver, tmp_path / "profile", site.origin, site.admin)
    page = seen.page
    try:
        response = page.goto(f"{site.origin}/admin/dashboard")
        assert response is not None and response.status == 200
        page.wait_for_selector("html[data-state=ready]", timeout=15000)

        # The traffic chart: one filled area per key with traffic, with real geometry.
        areas = page.eval_on_selector_all(
            "#traffic-chart svg path.area",
            "paths => paths.map(p => [p.getAttribute('d').length, p.getBBox().width, p.getBBox().height])",
        )
        drawn = [a for a in areas if a[0] > 10 and a[1] > 0 and a[2] > 0]
        assert len(drawn) >= 4, areas  # web-app, the hostile name, batch-jobs, no valid key (and the canary)
        bars = page.eval_on_selector_all(
            "#deny-chart svg rect:not(.hit)",
            "rects => rects.filter(r => r.getBBox().width > 0 && r.getBBox().height > 0).length",
        )
        assert bars >= 2  # route_not_allowed and malformed_credentials (and the canary's invalid key)
        assert page.eval_on_selector_all("#token-chart svg rect", "rects => rects.length") >= 6

        # What a person sees: the chart's own colours fill a good part of its picture.
        shot = tmp_path / "traffic-chart.png"
        page.locator("#traffic-chart svg").screenshot(path=str(shot))
        colours = palette_pixels(shot.read_bytes())
        assert sum(colours.values()) >= 300, colours
        assert len(colours) >= 3, colours
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # Hostile names are text: no element is made of them, no script of theirs runs.
        legend = page.inner_text("#traffic-legend")
        assert f"{XSS} ({site.ids[XSS]})" in legend
        assert page.locator("img").count() == 0
        assert BLOCK_REASON in page.inner_text("#block-list")
        assert page.locator("#block-list b").count() == 0

        # The canary alert with the caller's details; the burst's evidence opening its audit records.
        canary = page.locator("#alert-list li.alert.sev-critical")
        assert canary.count() == 1
        text = canary.inner_text()
        assert f"canary key {site.ids['planted']}" in text and CANARY_AGENT in text
        assert page.locator("#alert-list script").count() == 0
        burst = page.locator("#alert-list li.alert.sev-high")
        assert "refused" in burst.inner_text()
        evidence = evidence_of(site)
        assert burst.locator(".evidence button").count() == min(len(evidence), 12)
        burst.locator(".evidence button").first.click()
        page.wait_for_selector("#record[open] #record-body table", timeout=10000)
        record = page.inner_text("#record-body")
        assert f"request_id\t{evidence[0]}" in record and "deny\tmalformed_credentials" in record
        page.click("#record-close")
        assert page.locator("#record[open]").count() == 0

        assert "to-suspend" in page.inner_text("#suspended-list")
        assert BLOCKED in page.inner_text("#block-list")
        assert "planted" in page.inner_text("#canary-list tr.tripped")

        # Hovering the chart reads out its values; another range asks for another window.
        box = page.locator("#traffic-chart svg .hit").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
        assert "total" in page.inner_text("#tip")
        with page.expect_response(lambda r: "window=86400" in r.url) as answer:
            page.click('#range button[data-range="24h"]')
        assert answer.value.status == 200
        page.wait_for_function("document.querySelector('#range [aria-pressed=true]').dataset.range === '24h'")
        assert page.url.endswith("#24h")

        assert seen.elsewhere == []
        assert all(url.startswith(site.origin + "/") for url in seen.requests), seen.requests
        assert seen.errors == []
        assert seen.violations() == []
        assert seen.dialogs == []
    finally:
        seen.context.close()


@pytest.mark.parametrize("password", [None, "aip_wrong"], ids=["no-credentials", "wrong-password"])
def test_without_the_admin_key_the_browser_gets_no_page(
    site: Site, browser_driver: Playwright, tmp_path: Path, password: str | None
) -> None:
    from playwright.sync_api import Error

    seen = visit(browser_driver, tmp_path / "profile", site.origin, password)
    try:
        if password is None:
            with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):  # challenged, with nothing to answer
                seen.page.goto(f"{site.origin}/admin/dashboard")
        else:
            response = seen.page.goto(f"{site.origin}/admin/dashboard")
            assert response is not None and response.status == 401
            assert response.headers["www-authenticate"].startswith("Basic ")
            assert "authentication_error" in seen.page.content()
        assert seen.requests and set(seen.requests) == {f"{site.origin}/admin/dashboard"}  # no script, no data
        assert seen.dialogs == []
    finally:
        seen.context.close()
