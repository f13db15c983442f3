"""Every fingerprint's own examples, the schema, and honeypots that no product-specific fingerprint may match."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aiperimeter.catalog.loader import fingerprints, load_fingerprint
from aiperimeter.catalog.match import best_match, identify
from aiperimeter.catalog.replay import example_answer, replies_for
from aiperimeter.catalog.schema import Example, Fingerprint
from aiperimeter.errors import ConfigError
from tests.catalog.honeypots import HONEYPOTS

CATALOG = fingerprints()
BY_ID = {fp.id: fp for fp in CATALOG}


def _cases(kind: str) -> list[object]:
    return [
        pytest.param(fp, example, id=f"{fp.id}:{example.name}")
        for fp in CATALOG
        for example in getattr(fp.examples, kind)
    ]


SECRET_KEY = re.compile(r"(^|_)(access_|refresh_|id_)?token$|secret$|password$|api_?key$", re.IGNORECASE)


def _secret_values(docs: list[object]) -> list[str]:
    found: list[str] = []
    for doc in docs:
        if isinstance(doc, dict):
            for key, value in doc.items():
                if isinstance(value, str) and len(value) >= 8 and SECRET_KEY.search(key):
                    found.append(value)
                else:
                    found += _secret_values([value])
        elif isinstance(doc, list):
            found += _secret_values(doc)
    return found


@pytest.mark.parametrize(("fp", "example"), _cases("match"))
def test_match_example(fp: Fingerprint, example: Example) -> None:
    answer = example_answer(fp, example)
    found = identify(fp, replies_for([fp], answer)[fp.id])
    assert found is not None, "the fingerprint does not recognise its own example"
    assert found.verdict == example.verdict
    if example.version is not None:
        assert found.version == example.version
    if example.models is not None:
        assert list(found.models) == example.models
    # Evidence never repeats a secret the service handed out (Langflow's auto-login token, settings dumps).
    evidence = " ".join(e.excerpt for e in found.evidence)
    for secret in _secret_values([r.json_ for r in example.responses.values()]):
        assert secret not in evidence
    # Judged against the whole catalog, no other product claims this service first.
    winner = best_match(list(CATALOG), replies_for(CATALOG, answer))
    assert winner is not None and winner.fingerprint.id == fp.id


@pytest.mark.parametrize(("fp", "example"), _cases("no_match"))
def test_no_match_example(fp: Fingerprint, example: Example) -> None:
    answer = example_answer(fp, example)
    assert identify(fp, replies_for([fp], answer)[fp.id]) is None


@pytest.mark.parametrize("honeypot", sorted(HONEYPOTS))
def test_honeypots_match_no_specific_product(honeypot: str) -> None:
    replies = replies_for(CATALOG, HONEYPOTS[honeypot])
    claimed = [fp.id for fp in CATALOG if not fp.generic and identify(fp, replies[fp.id]) is not None]
    assert claimed == []


def test_ids_are_unique_and_lookalikes_are_mutual_enough() -> None:
    assert len(BY_ID) == len(CATALOG)
    for fp in CATALOG:
        assert fp.id not in fp.lookalikes


def test_an_invalid_entry_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text(
        Path(__file__)
        .parents[2]
        .joinpath("src/aiperimeter/catalog/data/fingerprints/ollama.yaml")
        .read_text()
        .replace("id: ollama", "id: broken")
        .replace("method: GET", "method: POST")
        .replace("{id: root, path: /}", "{id: root, path: /, method: POST}")
    )
    with pytest.raises(ConfigError) as error:
        load_fingerprint(bad)
    assert str(bad) in str(error.value) and "probes" in str(error.value) and "JSON-RPC" in str(error.value)
