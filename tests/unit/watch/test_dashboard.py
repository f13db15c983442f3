"""The dashboard's pure parts: which credential a request presents, its query, its routes, and the static files."""

from __future__ import annotations

import base64
import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from aiperimeter.errors import BadRequest, Unauthenticated
from aiperimeter.watch.dashboard import (
    BASIC_CHALLENGE,
    CSP,
    DEFAULT_WINDOW,
    STATIC,
    challenge,
    credential,
    owns,
    page_weight,
    static_file,
    window_of,
)

KEY = "aip_aaaaaaaaaaaa_secret"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param([("Authorization", basic(f"ops:{KEY}"))], id="basic"),
        pytest.param([("Authorization", basic(f":{KEY}"))], id="basic-no-user"),
        pytest.param([("authorization", "basic " + basic(f"x:{KEY}")[6:])], id="basic-lowercase"),
        pytest.param([("Authorization", f"Bearer {KEY}")], id="bearer"),
        pytest.param([("x-api-key", KEY)], id="x-api-key"),
    ],
)
def test_the_admin_key_is_read_from_basic_or_bearer(pairs: list[tuple[str, str]]) -> None:
    assert credential(headers(*pairs)) == KEY


def test_a_password_may_hold_colons() -> None:
    assert credential(headers(("Authorization", basic("ops:a:b")))) == "a:b"


@pytest.mark.parametrize(
    ("pairs", "code"),
    [
        pytest.param([], "missing_credentials", id="none"),
        pytest.param([("Authorization", "Basic !!!")], "malformed_credentials", id="not-base64"),
        pytest.param([("Authorization", "Basic " + base64.b64encode(b"\xff:\xfe").decode())], "malformed_credentials",
                     id="not-utf8"),
        pytest.param([("Authorization", basic("no-colon"))], "missing_credentials", id="no-colon"),
        pytest.param([("Authorization", basic("ops:"))], "missing_credentials", id="empty-password"),
        pytest.param([("Authorization", basic(f"ops:{KEY}")), ("x-api-key", KEY)], "malformed_credentials",
                     id="basic-and-x-api-key"),
        pytest.param([("Authorization", basic(f"ops:{KEY}")), ("Authorization", f"Bearer {KEY}")],
                     "malformed_credentials", id="two-authorizations"),
        pytest.param([("Authorization", f"Digest {KEY}")], "malformed_credentials", id="other-scheme"),
    ],
)  # fmt: skip
def test_malformed_credentials_are_refused(pairs: list[tuple[str, str]], code: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        credential(headers(*pairs))
    assert refused.value.code == code
    assert KEY not in refused.value.message


def test_a_refusal_asks_the_browser_for_basic_credentials() -> None:
    refusal = challenge(Unauthenticated("invalid_key", "no"))
    assert refusal.headers == {"WWW-Authenticate": BASIC_CHALLENGE}
    assert BASIC_CHALLENGE == 'Basic realm="aiperimeter admin", charset="UTF-8"'


@pytest.mark.parametrize(
    ("query", "window"),
    [
        pytest.param(None, DEFAULT_WINDOW, id="absent"),
        pytest.param("", DEFAULT_WINDOW, id="empty"),
        pytest.param("window=60", 60, id="smallest"),
        pytest.param("window=604800", 604800, id="7d"),
        pytest.param("window=1209600", 1209600, id="largest"),
    ],
)
def test_window_parameter(query: str | None, window: int) -> None:
    assert window_of(query) == window


@pytest.mark.parametrize(
    "query",
    [
        "window=59", "window=1209601", "window=", "window=-60", "window=3600.0", "window=1e3", "window=0x10",
        "window=%33600", "window=3600&window=60", "window=3600&x=1", "x=1", "window", "Window=3600",
        "window=３６００", "window=99999999999999999999",
    ],
)  # fmt: skip
def test_bad_window_parameters_are_refused(query: str) -> None:
    with pytest.raises(BadRequest):
        window_of(query)


@pytest.mark.parametrize(
    ("target", "owned"),
    [
        ("/admin/dashboard", True),
        ("/admin/dashboard/", True),
        ("/admin/dashboard/dashboard.js", True),
        ("/admin/api/overview?window=60", True),
        ("/admin/api/audit/abc", True),
        ("/admin/keys", False),
        ("/admin/dashboards", False),
        ("/admin/metrics", False),
        ("/admin/healthz", False),
    ],
)
def test_routes_the_dashboard_owns(target: str, owned: bool) -> None:
    assert owns(target) is owned


# --- the static files: nothing external, nothing that parses data as HTML ---


def test_the_page_loads_nothing_from_elsewhere() -> None:
    text = b"".join(static_file(name) for name in STATIC).decode()
    urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", text))
    assert urls <= {"http://www.w3.org"}, urls  # the SVG namespace, which is a name, not a fetch
    assert "@import" not in text and "url(" not in static_file("dashboard.css").decode()


def test_the_script_never_parses_html_or_code_from_strings() -> None:
    script = static_file("dashboard.js").decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"style\"", "srcdoc", "javascript:"):  # fmt: skip
        assert sink not in script, sink


def test_the_page_has_no_inline_script_or_style() -> None:
    page = static_file("dashboard.html").decode()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/admin/dashboard/dashboard.js" defer>']
    assert "<style" not in page and re.search(r"\s(style|on[a-z]+)=", page) is None
    assert "script-src 'self'" in CSP and "default-src 'none'" in CSP


def test_page_weight_is_small() -> None:
    assert page_weight() < 64 * 1024
