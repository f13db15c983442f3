from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aiperimeter.policy.constraints.url import URLConstraint

ANY_PUBLIC = URLConstraint()
GOOD = URLConstraint(hosts=["good.com", "*.example.com", "bücher.de", "API.Partner.io."])
IPS = URLConstraint(schemes=["http", "https", "gopher"], allow_ip_literals=True)
PORTS = URLConstraint(hosts=["good.com"], ports=[443, 8443])
LISTED_IPS = URLConstraint(hosts=["1.1.1.1", "[2606:4700:4700::1111]", "good.com"], allow_ip_literals=True)
PRIVATE = URLConstraint(schemes=["http"], allow_private=True, allow_ip_literals=True)
USERINFO = URLConstraint(allow_userinfo=True, hosts=["good.com"])


@pytest.mark.parametrize(
    ("constraint", "url"),
    [
        pytest.param(ANY_PUBLIC, "https://good.com/path?q=1#frag", id="public-host"),
        pytest.param(GOOD, "https://good.com", id="listed"),
        pytest.param(GOOD, "HTTPS://GOOD.COM/", id="upper-case"),
        pytest.param(GOOD, "https://good.com./x", id="trailing-dot"),
        pytest.param(GOOD, "https://goo%64.com", id="percent-encoded-host"),
        pytest.param(GOOD, "https://a.example.com", id="wildcard-subdomain"),
        pytest.param(GOOD, "https://a.b.example.com/x", id="wildcard-deep"),
        pytest.param(GOOD, "https://bücher.de", id="idn-listed-unicode"),
        pytest.param(GOOD, "https://xn--bcher-kva.de", id="idn-listed-punycode"),
        pytest.param(GOOD, "https://api.partner.io", id="entry-normalised"),
        pytest.param(GOOD, "https://good.com#@evil.com", id="at-sign-in-fragment"),
        pytest.param(GOOD, "https://good.com/?next=https://evil.com@x", id="at-sign-in-query"),
        pytest.param(IPS, "https://8.8.8.8", id="public-ipv4"),
        pytest.param(IPS, "https://[2001:4860:4860::8888]", id="public-ipv6"),
        pytest.param(PORTS, "https://good.com", id="default-port"),
        pytest.param(PORTS, "https://good.com:8443/x", id="listed-port"),
        pytest.param(LISTED_IPS, "https://1.1.1.1/", id="listed-ip"),
        pytest.param(LISTED_IPS, "https://[2606:4700:4700:0::1111]/", id="listed-ipv6-other-spelling"),
        pytest.param(PRIVATE, "http://127.0.0.1:8080", id="private-allowed"),
        pytest.param(PRIVATE, "http://localhost", id="localhost-allowed"),
        pytest.param(USERINFO, "https://user:pass@good.com", id="userinfo-allowed"),
    ],
)
def test_allowed(constraint: URLConstraint, url: str) -> None:
    assert constraint.check(url) is None


@pytest.mark.parametrize(
    ("constraint", "url", "reason"),
    [
        # loopback in every spelling
        pytest.param(IPS, "http://127.1", "host '127.0.0.1' is a private address", id="short-ipv4"),
        pytest.param(IPS, "http://0177.0.0.1", "'127.0.0.1' is a private address", id="octal"),
        pytest.param(IPS, "http://0x7f.1", "'127.0.0.1' is a private address", id="hex"),
        pytest.param(IPS, "http://2130706433", "'127.0.0.1' is a private address", id="decimal"),
        pytest.param(IPS, "http://%31%32%37.0.0.1", "'127.0.0.1' is a private address", id="percent-encoded-ip"),
        pytest.param(IPS, "http://127.0.0.1.", "'127.0.0.1' is a private address", id="ip-trailing-dot"),
        pytest.param(IPS, "http://[::1]", "'::1' is a private address", id="ipv6-loopback"),
        pytest.param(IPS, "http://[::ffff:127.0.0.1]", "private address", id="ipv4-mapped"),
        pytest.param(IPS, "http://[::127.0.0.1]", "private address", id="ipv4-compatible"),
        pytest.param(IPS, "http://[64:ff9b::7f00:1]", "private address", id="nat64"),
        pytest.param(IPS, "http://[2002:7f00:1::]", "private address", id="6to4"),
        pytest.param(IPS, "http://0", "'0.0.0.0' is a private address", id="unspecified-short"),
        pytest.param(IPS, "http://[::]", "private address", id="ipv6-unspecified"),
        pytest.param(IPS, "gopher://0x7f.1/", "'127.0.0.1' is a private address", id="opaque-host-hex"),
        # private ranges
        pytest.param(IPS, "http://169.254.169.254/latest/meta-data", "private address", id="cloud-metadata"),
        pytest.param(IPS, "http://10.0.0.1", "private address", id="rfc1918-10"),
        pytest.param(IPS, "http://172.16.5.4", "private address", id="rfc1918-172"),
        pytest.param(IPS, "http://192.168.1.1", "private address", id="rfc1918-192"),
        pytest.param(IPS, "http://100.64.0.1", "private address", id="cgnat"),
        pytest.param(IPS, "http://224.0.0.1", "private address", id="multicast"),
        pytest.param(IPS, "http://240.0.0.1", "private address", id="reserved"),
        pytest.param(IPS, "http://[fe80::1]", "private address", id="ipv6-link-local"),
        pytest.param(IPS, "http://[fd00::1]", "private address", id="ipv6-unique-local"),
        pytest.param(IPS, "http://[ff02::1]", "private address", id="ipv6-multicast"),
        # IP literals at all
        pytest.param(ANY_PUBLIC, "https://8.8.8.8", "IP address hosts are not allowed", id="ip-literal"),
        pytest.param(ANY_PUBLIC, "https://134744072", "IP address hosts are not allowed", id="ip-literal-decimal"),
        pytest.param(LISTED_IPS, "https://1.0.0.1/", "host '1.0.0.1' is not allowed", id="unlisted-ip"),
        # private names
        pytest.param(ANY_PUBLIC, "https://localhost", "host 'localhost' is private", id="localhost"),
        pytest.param(ANY_PUBLIC, "https://LOCALHOST.", "host 'localhost' is private", id="localhost-case-dot"),
        pytest.param(ANY_PUBLIC, "https://api.localhost", "is private", id="sub-localhost"),
        pytest.param(ANY_PUBLIC, "https://printer.local", "is private", id="mdns"),
        pytest.param(ANY_PUBLIC, "https://metadata.google.internal", "is private", id="gcp-metadata"),
        pytest.param(ANY_PUBLIC, "https://nas.home.arpa", "is private", id="home-arpa"),
        pytest.param(ANY_PUBLIC, "https://metadata/computeMetadata", "host 'metadata' is private", id="single-label"),
        pytest.param(ANY_PUBLIC, "https://127.0.0.1.nip.io", "is private", id="wildcard-dns"),
        # host allowlist
        pytest.param(GOOD, "https://good.com.evil.com", "host 'good.com.evil.com' is not allowed", id="suffix-trick"),
        pytest.param(GOOD, "https://evilgood.com", "host 'evilgood.com' is not allowed", id="prefix-trick"),
        pytest.param(GOOD, "https://goodxcom", "host 'goodxcom'", id="dot-as-wildcard"),
        pytest.param(GOOD, "https://example.com", "host 'example.com' is not allowed", id="wildcard-not-apex"),
        pytest.param(GOOD, "https://gооd.com", "host 'xn--gd-fmca.com' is not allowed", id="cyrillic-homograph"),
        pytest.param(GOOD, "https://xn--gd-fmca.com", "host 'xn--gd-fmca.com' is not allowed", id="punycode"),
        pytest.param(GOOD, "https://good.com..", "host 'good.com.' is not allowed", id="two-trailing-dots"),
        # user info and parser differentials
        pytest.param(GOOD, "https://good.com@evil.com", "URL has user info", id="userinfo"),
        pytest.param(GOOD, "https://evil.com\\@good.com", "URL has user info", id="backslash-at"),
        pytest.param(GOOD, "https://good.com\\@evil.com", "URL has user info", id="backslash-at-reversed"),
        pytest.param(GOOD, "https://good.com\\.evil.com/", "backslash", id="backslash-in-host"),
        pytest.param(GOOD, "https://good.com;@evil.com", "URL has user info", id="semicolon-at"),
        pytest.param(USERINFO, "https://good.com@evil.com", "host 'evil.com' is not allowed", id="userinfo-host"),
        pytest.param(GOOD, "https://good.com\t.evil.com", "whitespace or control", id="tab"),
        pytest.param(GOOD, " https://good.com", "whitespace or control", id="leading-space"),
        # schemes and ports
        pytest.param(GOOD, "http://good.com", "scheme 'http' is not allowed", id="http"),
        pytest.param(GOOD, "file:///etc/passwd", "scheme 'file' is not allowed", id="file"),
        pytest.param(GOOD, "javascript:alert(1)", "scheme 'javascript' is not allowed", id="javascript"),
        pytest.param(GOOD, "gopher://good.com:70/_x", "scheme 'gopher' is not allowed", id="gopher"),
        pytest.param(GOOD, "data:text/html,x", "scheme 'data' is not allowed", id="data"),
        pytest.param(PORTS, "https://good.com:444", "port 444 is not allowed", id="port"),
        pytest.param(PORTS, "https://good.com:0", "port 0 is not allowed", id="port-zero"),
        # not URLs
        pytest.param(GOOD, "good.com", "invalid URL", id="no-scheme"),
        pytest.param(GOOD, "", "invalid URL", id="empty"),
        pytest.param(GOOD, "https://", "invalid URL", id="no-host"),
        pytest.param(GOOD, "https://good.com:99999", "invalid URL", id="port-out-of-range"),
        pytest.param(GOOD, 5, "URL must be a string", id="int"),
        pytest.param(GOOD, {"url": "https://good.com"}, "URL must be a string", id="object"),
    ],
)
def test_denied(constraint: URLConstraint, url: Any, reason: str) -> None:
    got = constraint.check(url)
    assert got is not None and reason in got


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"hosts": ["https://good.com"]}, "must be a host name", id="host-with-scheme"),
        pytest.param({"hosts": ["good.com:443"]}, "must be a host name", id="host-with-port"),
        pytest.param({"hosts": ["*"]}, "must be a host name", id="bare-wildcard"),
        pytest.param({"hosts": ["a.*.com"]}, "must be a host name", id="inner-wildcard"),
        pytest.param({"hosts": [""]}, "must be a host name", id="empty-host"),
        pytest.param({"ports": [0]}, "not between 1 and 65535", id="port-zero"),
        pytest.param({"ports": [70000]}, "not between 1 and 65535", id="port-too-big"),
        pytest.param({"ports": [True]}, "valid integer", id="port-bool"),
        pytest.param({"schemes": ["ht tp"]}, "is not a URL scheme", id="bad-scheme"),
        pytest.param({"allow_loopback": True}, "Extra inputs are not permitted", id="unknown-field"),
    ],
)
def test_load_time_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        URLConstraint(**fields)
    assert message in str(error.value)


def test_schemes_are_normalised() -> None:
    assert URLConstraint(schemes=["HTTPS:", "wss"]).schemes == ["https", "wss"]


def test_reasons_never_hold_user_info_or_path() -> None:
    secret = "hunter2-4f9a8b7c6d5e"
    for url in (f"https://admin:{secret}@good.com/", f"http://good.com/{secret}", f"https://evil.com/?k={secret}"):
        reason = GOOD.check(url)
        assert reason is not None and secret not in reason


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="htps:/\\@.[]%0x7f1:god.com#?~ \t", max_size=60))
def test_check_never_raises(url: str) -> None:
    reason = IPS.check(url)
    assert reason is None or isinstance(reason, str)
