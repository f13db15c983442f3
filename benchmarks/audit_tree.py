"""Deterministic test tree for audit_bench.py: a mixed monorepo with fake AI-provider keys planted at known lines.

The tree mixes Python, JavaScript/TypeScript (with minified bundles whose lines run to hundreds of KB), JSON, YAML
(compose, Kubernetes, CI), Markdown, .env files, shell, TOML, CSV and log files (a few of them large), lock files,
vendored *.min.js, a `node_modules` and a `.git` folder. Keys are made by the project's own fake-key generator
(`aiperimeter.catalog.fake`) from one seeded random.Random, so the same seed and size give the same bytes. Keys go
only into project files: never into node_modules, .git, lock files or *.min.js, which some scanners skip by design.
Decoys (placeholders, env references, hashes, UUIDs) are planted the same way; none of them is a secret.

Layout: OUT/tree/... is what the scanners read; OUT/.truth.json (provider, file and line of every key and decoy,
never a key's value) sits outside it and is written last, so its presence means a complete tree.

Run: .venv/bin/python benchmarks/audit_tree.py [--size-mb 220] [--out /tmp/aiperimeter-audit-bench] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import string
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiperimeter.catalog.fake import fake

VERSION = 1  # part of the truth file's parameters: bump it whenever the output changes, so old trees are remade
DEFAULT_OUT = Path("/tmp/aiperimeter-audit-bench")
KEYS_PER_PROVIDER = 18


@dataclass(frozen=True)
class Provider:
    name: str
    spec: str  # aiperimeter.catalog.fake spec
    env: str  # the variable name the provider's docs use
    prefixed: bool  # False: nothing in the key itself names the provider, only the name it is assigned to
    call: str  # a Python client constructor holding the key
    url: str
    header: str = "Authorization: Bearer {key}"


PROVIDERS = [
    Provider(
        "OpenAI",
        "sk-proj- +b64url74 T3BlbkFJ +b64url74",
        "OPENAI_API_KEY",
        True,
        'OpenAI(api_key="{key}")',
        "https://api.openai.com/v1/chat/completions",
    ),
    Provider(
        "Anthropic",
        "sk-ant-api03- +b64url93 AA",
        "ANTHROPIC_API_KEY",
        True,
        'anthropic.Anthropic(api_key="{key}")',
        "https://api.anthropic.com/v1/messages",
        "x-api-key: {key}",
    ),
    Provider(
        "Hugging Face",
        "hf_ +alpha34",
        "HF_TOKEN",
        True,
        'InferenceClient(token="{key}")',
        "https://api-inference.huggingface.co/models/gpt2",
    ),
    Provider(
        "Groq",
        "gsk_ +alnum20 WGdyb3FY +alnum24",
        "GROQ_API_KEY",
        True,
        'Groq(api_key="{key}")',
        "https://api.groq.com/openai/v1/chat/completions",
    ),
    Provider(
        "Google",
        "AIza +b64url35",
        "GOOGLE_API_KEY",
        True,
        'genai.Client(api_key="{key}")',
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-1.5-flash:generateContent",
        "x-goog-api-key: {key}",
    ),
    Provider(
        "Perplexity",
        "pplx- +alnum48",
        "PERPLEXITY_API_KEY",
        True,
        'OpenAI(api_key="{key}", base_url="https://api.perplexity.ai")',
        "https://api.perplexity.ai/chat/completions",
    ),
    Provider(
        "Replicate",
        "r8_ +b64url37",
        "REPLICATE_API_TOKEN",
        True,
        'replicate.Client(api_token="{key}")',
        "https://api.replicate.com/v1/predictions",
    ),
    Provider(
        "OpenRouter",
        "sk-or-v1- +hex64",
        "OPENROUTER_API_KEY",
        True,
        'OpenAI(base_url="https://openrouter.ai/api/v1", api_key="{key}")',
        "https://openrouter.ai/api/v1/chat/completions",
    ),
    Provider(
        "xAI", "xai- +b64url80", "XAI_API_KEY", True, 'Client(api_key="{key}")', "https://api.x.ai/v1/chat/completions"
    ),
    Provider(
        "NVIDIA",
        "nvapi- +b64url64",
        "NVIDIA_API_KEY",
        True,
        'OpenAI(base_url="https://integrate.api.nvidia.com/v1", api_key="{key}")',
        "https://integrate.api.nvidia.com/v1/chat/completions",
    ),
    Provider(
        "Tavily",
        "tvly- +b64url32",
        "TAVILY_API_KEY",
        True,
        'TavilyClient(api_key="{key}")',
        "https://api.tavily.com/search",
    ),
    Provider(
        "Cerebras",
        "csk- +lowalnum48",
        "CEREBRAS_API_KEY",
        True,
        'Cerebras(api_key="{key}")',
        "https://api.cerebras.ai/v1/chat/completions",
    ),
    Provider(
        "LangSmith",
        "lsv2_pt_ +hex32 _ +hex10",
        "LANGSMITH_API_KEY",
        True,
        'langsmith.Client(api_key="{key}")',
        "https://api.smith.langchain.com/runs",
        "x-api-key: {key}",
    ),
    Provider(
        "Pinecone",
        "pcsk_ +alnum5 _ +alnum63",
        "PINECONE_API_KEY",
        True,
        'Pinecone(api_key="{key}")',
        "https://api.pinecone.io/indexes",
        "Api-Key: {key}",
    ),
    Provider(
        "Mistral AI",
        "+alnum32",
        "MISTRAL_API_KEY",
        False,
        'Mistral(api_key="{key}")',
        "https://api.mistral.ai/v1/chat/completions",
    ),
    Provider(
        "DeepSeek",
        "sk- +hex32",
        "DEEPSEEK_API_KEY",
        False,
        'OpenAI(api_key="{key}", base_url="https://api.deepseek.com")',
        "https://api.deepseek.com/chat/completions",
    ),
    Provider(
        "Cohere",
        "+alnum40",
        "COHERE_API_KEY",
        False,
        'cohere.ClientV2(api_key="{key}")',
        "https://api.cohere.com/v2/chat",
    ),
]

# Where a key is written, by file format. {key} marks the key's line; a template flagged True needs a key that
# names its provider itself (a prefixed key), since its line carries no provider name.
KEY_CONTEXTS: dict[str, list[tuple[str, bool]]] = {
    "env": [("{env}={key}", False), ('export {env}="{key}"', False), ("{env}='{key}'", False)],
    "py": [
        ('{lenv} = "{key}"', False),
        ('os.environ["{env}"] = "{key}"', False),
        ('{env} = os.getenv("{env}", "{key}")', False),
        ("    client = {call}", False),
        ('    headers = {{"{hname}": "{hvalue}"}}', True),
    ],
    "js": [
        ('const {camel} = "{key}";', False),
        ("process.env.{env} = '{key}';", False),
        ('  apiKey: "{key}",', True),
        ("    headers: {{ '{hname}': `{hvalue}` }},", True),
    ],
    "bundle": [('{env}:"{key}"', False), ('"process.env.{env}":"{key}"', False), ('apiKey:"{key}"', True)],
    "json": [('    "{lenv}": "{key}",', False), ('  "apiKey": "{key}",', True), ('      "{hname}": "{hvalue}"', True)],
    "yaml": [
        ("      {env}: {key}", False),
        ("      - {env}={key}", False),
        ('  {lenv}: "{key}"', False),
        ('            - name: {env}\n              value: "{key}"', True),
    ],
    "md": [
        ('curl {url} \\\n  -H "{hname}: {hvalue}" \\\n  -H "Content-Type: application/json"', True),
        ('export {env}="{key}"', False),
        ("    {lenv} = '{key}'", False),
    ],
    "sh": [("export {env}={key}", False), ('curl -sS {url} -H "{hname}: {hvalue}" -d @request.json', True)],
    "log": [
        ("{ts} WARN  settings: loaded {env}={key} from environment", False),
        ("{ts} DEBUG httpx: POST {url} headers={{'{lhname}': '{hvalue}'}}", True),
    ],
    "csv": [("{n},svc-{n},{env},{key},2024-03-{day:02d}", True)],
    "toml": [('{lenv} = "{key}"', False)],
}
# How often a key lands in each format.
KEY_FORMATS = {
    "env": 20,
    "py": 18,
    "js": 11,
    "bundle": 5,
    "json": 10,
    "yaml": 12,
    "md": 8,
    "sh": 4,
    "log": 6,
    "csv": 3,
    "toml": 3,
}

# Lines that look like keys to a careless scanner and are not: (format, kind, template).
DECOYS: list[tuple[str, str, str]] = [
    ("env", "placeholder", "OPENAI_API_KEY=sk-proj-..."),
    ("env", "placeholder", "ANTHROPIC_API_KEY=YOUR_API_KEY"),
    ("env", "placeholder", "HF_TOKEN=hf_" + "x" * 34),
    ("env", "env reference", "GROQ_API_KEY=${{GROQ_API_KEY}}"),
    ("env", "placeholder", "OPENROUTER_API_KEY=<your-openrouter-key>"),
    ("env", "placeholder", "MISTRAL_API_KEY=your-mistral-api-key"),
    ("env", "hash", "BUILD_SHA={hex40}"),
    ("env", "uuid", "DEPLOY_ID={uuid}"),
    ("py", "env reference", 'api_key = os.environ["OPENAI_API_KEY"]'),
    ("py", "placeholder", 'client = anthropic.Anthropic(api_key="sk-ant-api03-...")'),
    ("py", "placeholder", 'api_key = "YOUR_API_KEY"'),
    ("py", "hash", 'MODEL_REVISION = "{hex40}"'),
    ("py", "hash", 'EXPECTED_SHA256 = "{hex64}"'),
    ("py", "uuid", 'REQUEST_ID = "{uuid}"'),
    ("js", "placeholder", 'const apiKey = process.env.OPENAI_API_KEY ?? "sk-...";'),
    ("js", "placeholder", '  apiKey: "<YOUR_GROQ_API_KEY>",'),
    ("js", "hash", 'export const COMMIT = "{hex40}";'),
    ("js", "uuid", 'const traceId = "{uuid}";'),
    ("json", "placeholder", '    "api_key": "YOUR_API_KEY",'),
    ("json", "hash", '    "sha": "{hex40}",'),
    ("json", "uuid", '    "id": "{uuid}",'),
    ("json", "hash", '    "integrity": "sha512-{b64_86}==",'),
    ("yaml", "env reference", "      OPENAI_API_KEY: ${{OPENAI_API_KEY}}"),
    ("yaml", "hash", "    image: ghcr.io/acme/api@sha256:{hex64}"),
    ("yaml", "hash", "  checksum: {hex64}"),
    ("yaml", "placeholder", '  apiKey: "<your-api-key>"'),
    ("yaml", "uuid", "  uid: {uuid}"),
    ("md", "placeholder", 'export OPENAI_API_KEY="sk-..."'),
    ("md", "env reference", '  -H "Authorization: Bearer $ANTHROPIC_API_KEY" \\'),
    ("md", "hash", "Fixed in commit {hex40}."),
    ("md", "placeholder", "Set `PINECONE_API_KEY=pcsk_...` in your shell."),
    ("log", "uuid", "{ts} INFO  request trace_id={uuid} span_id={hex16} status=200"),
    ("log", "hash", "{ts} INFO  artifact uploaded sha256={hex64}"),
]


def _words(text: str) -> list[str]:
    return text.split()


WORDS = _words(
    "user account order invoice model prompt token session cache queue batch record event metric report config "
    "request response client server worker task job embedding vector index document chunk message stream route "
    "policy tenant project dataset feature label score budget limit window retry backoff payload schema"
)
VERBS = _words("get set load save build parse render fetch update delete create sync merge split score rank check")
LOREM = _words(
    "the service reads its settings at start-up and keeps them for the life of the process so restarts pick up "
    "changes each worker pulls a batch from the queue scores it against the current model and writes the result "
    "back latency stays under budget when the cache is warm but cold starts cost a few seconds on small machines"
)
# Provider names in code and docs: real projects mention them everywhere, which is what keyword prefilters meet.
MENTIONS = ["openai", "anthropic", "mistral", "cohere", "groq", "deepseek", "gemini", "pinecone", "langsmith"]


def _w(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(LOREM) for _ in range(n))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choices("0123456789abcdef", k=n))


def _py_block(rng: random.Random) -> str:
    a, b, v = _w(rng), _w(rng), rng.choice(VERBS)
    return rng.choice(
        [
            f"\n\ndef {v}_{a}(self, {b}_id: int, *, limit: int = {rng.randint(1, 500)}) -> list[{a.title()}]:\n"
            f'    """{_sentence(rng, 9).capitalize()}."""\n'
            f"    rows = self.db.query({a.title()}).filter_by({b}_id={b}_id).limit(limit).all()\n"
            f"    if not rows:\n"
            f'        logger.debug("no {a} for %s", {b}_id)\n'
            f"        return []\n"
            f"    return [self._{v}(row) for row in rows]",
            f"\n\nclass {a.title()}{b.title()}(BaseModel):\n"
            f"    {a}_id: int\n    {b}: str | None = None\n    weight: float = {rng.random():.3f}\n"
            f'    tags: list[str] = Field(default_factory=list, description="{_sentence(rng, 6)}")',
            f"    for {a} in {b}s:\n        if {a}.{v}_at is None:\n            continue\n"
            f"        total += {a}.amount * {rng.randint(2, 99)}",
            f'    response = client.chat.completions.create(model="{rng.choice(MENTIONS)}-{rng.randint(1, 9)}", '
            f'messages=[{{"role": "user", "content": prompt}}], max_tokens={rng.randint(64, 4096)})',
            f"    # {_sentence(rng, 12)}\n    {a}_{b} = {v}_{a}({b}, timeout={rng.randint(1, 60)})",
            f'@router.{rng.choice(["get", "post", "put"])}("/{a}s/{{{b}_id}}")\n'
            f"async def {v}_{a}_endpoint({b}_id: int, session: Session = Depends(get_session)) -> dict[str, Any]:\n"
            f'    return {{"{a}": await {v}_{a}(session, {b}_id), "ok": True}}',
        ]
    )


def _js_block(rng: random.Random) -> str:
    a, b, v = _w(rng), _w(rng), rng.choice(VERBS)
    return rng.choice(
        [
            f"\nexport async function {v}{a.title()}({b}Id: string): Promise<{a.title()}[]> {{\n"
            f"  const res = await fetch(`/api/{a}s/${{{b}Id}}?limit={rng.randint(1, 200)}`);\n"
            f"  if (!res.ok) throw new Error(`{v} {a} failed: ${{res.status}}`);\n"
            f"  return (await res.json()) as {a.title()}[];\n}}",
            f"\nexport interface {a.title()}{b.title()} {{\n  id: string;\n  {a}: number;\n  {b}?: string | null;\n}}",
            f"  const [{a}, set{a.title()}] = useState<{b.title()} | null>(null);\n"
            f"  useEffect(() => {{ {v}{a.title()}(props.{b}Id).then(set{a.title()}); }}, [props.{b}Id]);",
            f"// {_sentence(rng, 10)}\nconst {a}{b.title()} = {rng.randint(0, 9999)};",
            f'  const completion = await client.chat.completions.create({{ model: "{rng.choice(MENTIONS)}-latest", '
            f"messages, temperature: {rng.random():.2f} }});",
            f'    <div className="{a}-{b}" onClick={{() => {v}{a.title()}(id)}}>{{{a}.{b}}}</div>',
        ]
    )


def _minified_piece(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    n = rng.randint(10, 9999)
    return rng.choice(
        [
            f'function(e,t,n){{"use strict";var r=n({n}),o=n.n(r);t.{a}=function(){{return o().{b}}}}}',
            f'{n}:function(e,t){{e.exports={{{a}:"{b}",size:{n},flag:!0}}}}',
            f"const {a[0]}{n}=({b})=>{b}.{a}?.map(x=>x.id).filter(Boolean)??[]",
            f'"{a}-{b}":{{"label":"{_sentence(rng, 4)}","n":{n}}}',
            f'if(!{a[0]}&&{b[0]}>{n})throw new Error("{a} {b}")',
        ]
    )


def _json_block(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    return (
        f'  {{\n    "{a}_id": {rng.randint(1, 10**6)},\n    "{b}": "{_sentence(rng, 3)}",\n'
        f'    "enabled": {rng.choice(["true", "false"])},\n    "weight": {rng.random():.4f},\n'
        f'    "tags": ["{a}", "{b}"]\n  }},'
    )


def _yaml_block(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    return rng.choice(
        [
            f"  {a}-{b}:\n    image: ghcr.io/acme/{a}:{rng.randint(1, 9)}.{rng.randint(0, 30)}\n"
            f"    restart: unless-stopped\n    environment:\n      LOG_LEVEL: info\n"
            f'      {a.upper()}_LIMIT: "{rng.randint(1, 500)}"\n'
            f'    ports:\n      - "127.0.0.1:{rng.randint(3000, 9999)}:80"',
            f"        - name: {a}-{b}\n          image: acme/{a}:{rng.randint(1, 40)}\n          resources:\n"
            f"            limits: {{cpu: {rng.randint(1, 8)}, memory: {rng.randint(1, 32)}Gi}}",
            f"  # {_sentence(rng, 8)}\n  {a}_{b}: {rng.randint(0, 10**5)}",
            f"      - name: {a.title()} {b}\n        run: make {a}-{b} MODEL={rng.choice(MENTIONS)}-small",
        ]
    )


def _md_block(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    return rng.choice(
        [
            f"\n## {a.title()} {b}s\n\n{_sentence(rng, 30).capitalize()}. Voilà — {_sentence(rng, 20)}.",
            f"\n- `{a}_{b}`: {_sentence(rng, 10)}\n- `{b}_{a}`: {_sentence(rng, 8)}",
            f"\n```bash\nmake {a}\n./scripts/{b}.sh --{a} {rng.randint(1, 99)}\n```",
            f"\n| {a} | {b} | notes |\n|---|---|---|\n| {rng.randint(1, 99)} | {rng.random():.2f} | "
            f"{_sentence(rng, 5)} |",
            f"\nUsing {rng.choice(MENTIONS).title()} for {a}s: {_sentence(rng, 18)}.",
        ]
    )


def _sh_block(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    return (
        f'\n{a}_{b}() {{\n  local dir="${{1:-/var/lib/{a}}}"\n  mkdir -p "$dir"\n'
        f'  rsync -a --delete "build/{b}/" "$dir/"\n  echo "{_sentence(rng, 5)}"\n}}'
    )


def _toml_block(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    return f'\n[{a}.{b}]\nenabled = true\nlimit = {rng.randint(1, 1000)}\nlabel = "{_sentence(rng, 3)}"'


def _log_message(rng: random.Random) -> str:
    a, b = _w(rng), _w(rng)
    return rng.choice(
        [
            f"INFO  {a}.{b}: handled {rng.randint(1, 500)} items in {rng.randint(1, 900)} ms",
            f"DEBUG http: GET /api/{a}s/{rng.randint(1, 10**5)} 200 {rng.randint(100, 90000)}b",
            f"WARN  {a}: retrying {b} after {rng.randint(1, 30)}s ({_sentence(rng, 4)})",
            f"ERROR {a}.{b}: {_sentence(rng, 6)}",
            f"INFO  llm: model={rng.choice(MENTIONS)} prompt_tokens={rng.randint(5, 4000)} "
            f"completion_tokens={rng.randint(5, 900)}",
        ]
    )


POOLS: dict[str, Callable[[random.Random], str]] = {
    "py": _py_block,
    "js": _js_block,
    "json": _json_block,
    "yaml": _yaml_block,
    "md": _md_block,
    "sh": _sh_block,
    "toml": _toml_block,
}
HEADERS = {
    "py": "from __future__ import annotations\n\nimport logging\nimport os\nfrom typing import Any\n\n"
    "logger = logging.getLogger(__name__)",
    "js": "import { useEffect, useState } from 'react';\nimport OpenAI from 'openai';",
    "json": "[",
    "yaml": "services:",
    "md": "# Notes",
    "sh": "#!/usr/bin/env bash\nset -euo pipefail",
    "toml": '[project]\nname = "acme"',
    "env": "# local settings, never commit",
}
FOOTERS = {"json": '  {"end": true}\n]'}


@dataclass
class Planned:
    path: str  # relative to the tree root, with /
    fmt: str
    size: int  # bytes aimed at
    # (text, possibly several lines; the index of the line that holds the key; truth entry)
    plants: list[tuple[str, int, dict[str, object]]] = field(default_factory=list)


class Tree:
    def __init__(self, seed: int, size_mb: float) -> None:
        self.rng = random.Random(seed)
        self.budget = int(size_mb * 1_000_000)
        self.files: list[Planned] = []
        self.pools = {fmt: [make(self.rng) for _ in range(3000)] for fmt, make in POOLS.items()}
        self.minified = [_minified_piece(self.rng) for _ in range(3000)]
        self.messages = [_log_message(self.rng) for _ in range(3000)]

    def size(self, median: int, cap: int) -> int:
        return int(min(max(self.rng.lognormvariate(0, 0.9) * median, 120), cap))

    def plan(self) -> None:
        """Every file with its format and size: shares of the budget per kind, a few big files, nested folders."""
        rng, mb = self.rng, self.budget / 220e6  # big files scale with the size asked for
        services = ["api", "worker", "gateway", "billing", "search", "ingest", "notifier", "auth", "rag", "evals"]
        apps = ["dashboard", "console", "chat", "landing"]
        subs = ["core", "models", "routes", "services", "utils", "adapters", "jobs", "schemas"]

        def fill(share: float, make: Callable[[], tuple[str, str, int]]) -> None:
            total = 0
            while total < share * self.budget:
                path, fmt, size = make()
                self.files.append(Planned(path, fmt, size))
                total += size

        def nested(*parts: str) -> str:
            depth = rng.randint(0, 3)
            return "/".join([*parts, *rng.sample(subs, depth)])

        counter = iter(range(10**9))

        def py() -> tuple[str, str, int]:
            svc = rng.choice(services)
            where = "tests" if rng.random() < 0.2 else nested("src", svc.replace("-", "_"))
            return f"services/{svc}/{where}/{_w(rng)}_{next(counter)}.py", "py", self.size(7000, 120_000)

        def js() -> tuple[str, str, int]:
            app = rng.choice(apps)
            ext = rng.choice(["ts", "tsx", "js", "mjs"])
            return f"web/{app}/{nested('src')}/{_w(rng)}{next(counter)}.{ext}", "js", self.size(6000, 90_000)

        def small(fmt: str, median: int, cap: int, place: Callable[[], str]) -> Callable[[], tuple[str, str, int]]:
            return lambda: (place(), fmt, self.size(median, cap))

        fill(0.12, py)
        fill(0.13, js)
        bundles = lambda: (  # noqa: E731
            f"web/{rng.choice(apps)}/dist/assets/index-{_hex(rng, 8)}.js",
            "bundle",
            self.size(400_000, 3_000_000),
        )
        self.files.append(Planned(f"web/{apps[0]}/dist/assets/vendor-{_hex(rng, 8)}.js", "bundle", int(6e6 * mb)))
        fill(0.04, bundles)
        self.files.append(Planned("data/exports/catalog.json", "json", int(8e6 * mb)))
        fill(0.08, small("json", 8000, 400_000, lambda: f"{nested('config')}/{_w(rng)}-{next(counter)}.json"))
        fill(
            0.03,
            small("yaml", 3000, 40_000, lambda: f"deploy/k8s/{_w(rng)}/{_w(rng)}-{next(counter)}.yaml"),
        )
        fill(
            0.015,
            small(
                "yaml",
                3000,
                40_000,
                lambda: f"{rng.choice(['deploy/compose', '.github/workflows'])}/{_w(rng)}-{next(counter)}.yml",
            ),
        )
        fill(0.07, small("md", 5000, 80_000, lambda: f"{nested('docs')}/{_w(rng)}-{_w(rng)}-{next(counter)}.md"))
        env_names = [".env", ".env.local", ".env.production", ".env.staging", "config/app.env"]
        fill(
            0.002,
            small("env", 600, 3000, lambda: f"services/{rng.choice(services)}-{next(counter)}/{rng.choice(env_names)}"),
        )
        fill(0.01, small("sh", 2500, 20_000, lambda: f"scripts/{_w(rng)}/{_w(rng)}-{next(counter)}.sh"))
        fill(0.005, small("toml", 1500, 10_000, lambda: f"services/{rng.choice(services)}/cfg-{next(counter)}.toml"))
        self.files.append(Planned("logs/app-2024-03.log", "log", int(18e6 * mb)))
        self.files.append(Planned("logs/access-2024-03.log", "log", int(10e6 * mb)))
        fill(0.02, small("log", 60_000, 2_000_000, lambda: f"logs/{_w(rng)}/{_w(rng)}-{next(counter)}.log"))
        self.files.append(Planned("data/exports/events.csv", "csv", int(15e6 * mb)))
        fill(0.03, small("csv", 100_000, 3_000_000, lambda: f"data/{_w(rng)}/{_w(rng)}-{next(counter)}.csv"))
        for app in apps:  # lock files: hashes everywhere, never a key
            self.files.append(Planned(f"web/{app}/package-lock.json", "lock", int(2.2e6 * mb)))
        for svc in services:
            self.files.append(Planned(f"services/{svc}/poetry.lock", "poetry", int(0.25e6 * mb)))
        fill(0.02, small("min", 150_000, 900_000, lambda: f"web/{rng.choice(apps)}/vendor/{_w(rng)}.min.js"))
        fill(0.07, self._node_module)
        # Fill what is left of the budget (the big files counted above) with Python, the most common kind.
        planned = sum(f.size for f in self.files)
        git_share = int(0.05 * self.budget)
        while planned + git_share < self.budget:
            path, fmt, size = py()
            self.files.append(Planned(path, fmt, size))
            planned += size
        self.git_bytes = git_share

    def _node_module(self) -> tuple[str, str, int]:
        rng = self.rng
        package = f"{rng.choice(['', '@acme/', '@types/'])}{_w(rng)}-{_w(rng)}"
        name, fmt = rng.choice(
            [("index.js", "js"), ("README.md", "md"), ("package.json", "json"), ("dist/index.min.js", "min")]
        )
        return f"node_modules/{package}/{rng.randint(0, 999)}/{name}", fmt, self.size(8000, 300_000)

    def assign(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """Pick the file, context and key for every plant; truth entries get their line when the file is written."""
        rng = self.rng
        candidates: dict[str, list[Planned]] = {}
        for f in self.files:
            if not f.path.startswith("node_modules/"):
                candidates.setdefault(f.fmt, []).append(f)
        weights = {fmt: [f.size**0.5 for f in files] for fmt, files in candidates.items()}
        keys: list[dict[str, object]] = []
        for provider in PROVIDERS:
            for _ in range(KEYS_PER_PROVIDER):
                while True:
                    fmt = rng.choices(list(KEY_FORMATS), list(KEY_FORMATS.values()))[0]
                    usable = [t for t, needs_prefix in KEY_CONTEXTS[fmt] if provider.prefixed or not needs_prefix]
                    if usable:
                        break
                template = rng.choice(usable)
                key = fake(provider.spec, rng)
                hname, hvalue = provider.header.format(key=key).split(": ", 1)
                text = template.format(
                    key=key,
                    env=provider.env,
                    lenv=provider.env.lower(),
                    camel="".join(p.title() for p in provider.env.lower().split("_")).replace("Api", "API"),
                    call=provider.call.format(key=key),
                    url=provider.url,
                    hname=hname,
                    lhname=hname.lower(),
                    hvalue=hvalue,
                    ts=self.timestamp(),
                    n=rng.randint(1, 9999),
                    day=rng.randint(1, 28),
                )
                target = rng.choices(candidates[fmt], weights[fmt])[0]
                entry: dict[str, object] = {
                    "provider": provider.name,
                    "file": target.path,
                    "line": 0,
                    "format": fmt,
                    "context": template.split("{key}")[0].strip()[:40],
                }
                at = next(i for i, line in enumerate(text.split("\n")) if key in line)
                target.plants.append((text, at, entry))
                keys.append(entry)
        decoys: list[dict[str, object]] = []
        for _ in range(6):
            for fmt, kind, template in DECOYS:
                text = template.format(
                    hex40=_hex(rng, 40),
                    hex64=_hex(rng, 64),
                    hex16=_hex(rng, 16),
                    uuid=fake("+uuid", rng),
                    b64_86="".join(rng.choices(string.ascii_letters + string.digits + "+/", k=86)),
                    ts=self.timestamp(),
                )
                target = rng.choices(candidates[fmt], weights[fmt])[0]
                entry = {"kind": kind, "file": target.path, "line": 0, "format": fmt, "text": template[:60]}
                target.plants.append((text, 0, entry))
                decoys.append(entry)
        return keys, decoys

    def timestamp(self) -> str:
        r = self.rng
        return f"2024-03-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"

    def body(self, f: Planned) -> list[str]:
        """Filler lines for one file, about f.size bytes."""
        rng = self.rng
        lines: list[str] = []
        size = 0

        def add(text: str) -> None:
            nonlocal size
            lines.extend(text.split("\n"))
            size += len(text) + 1

        if f.fmt in HEADERS:
            add(HEADERS[f.fmt])
        if f.fmt in self.pools:
            pool = self.pools[f.fmt]
            while size < f.size:
                add(rng.choice(pool))
        elif f.fmt == "env":
            while size < f.size:
                add(f"{_w(rng).upper()}_{_w(rng).upper()}={rng.choice([_w(rng), str(rng.randint(0, 9999)), 'true'])}")
        elif f.fmt in ("bundle", "min"):
            while size < f.size:
                length = rng.randint(20_000, 400_000) if f.fmt == "bundle" else rng.randint(2_000, 60_000)
                pieces: list[str] = []
                n = 0
                while n < length:
                    pieces.append(rng.choice(self.minified))
                    n += len(pieces[-1]) + 1
                add(",".join(pieces) + ";")
        elif f.fmt == "log":
            messages = self.messages
            while size < f.size:
                add(f"{self.timestamp()} {rng.choice(messages)}")
        elif f.fmt == "csv":
            add("id,user,region,amount,currency,created_at,status")
            while size < f.size:
                add(
                    f"{rng.randint(1, 10**7)},{_w(rng)}{rng.randint(1, 999)},{rng.choice(['eu', 'us', 'ap'])},"
                    f"{rng.random() * 1000:.2f},EUR,2024-03-{rng.randint(1, 28):02d},{rng.choice(['ok', 'failed'])}"
                )
        elif f.fmt == "lock":
            add('{\n  "name": "app",\n  "lockfileVersion": 3,\n  "packages": {')
            while size < f.size:
                name = f"{_w(rng)}-{_w(rng)}"
                version = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"
                integrity = "".join(rng.choices(string.ascii_letters + string.digits + "+/", k=86))
                add(
                    f'    "node_modules/{name}": {{\n      "version": "{version}",\n'
                    f'      "resolved": "https://registry.npmjs.org/{name}/-/{name}-{version}.tgz",\n'
                    f'      "integrity": "sha512-{integrity}=="\n    }},'
                )
            add('    "": {}\n  }\n}')
        elif f.fmt == "poetry":
            while size < f.size:
                name = f"{_w(rng)}-{_w(rng)}"
                add(
                    f'[[package]]\nname = "{name}"\nversion = "{rng.randint(0, 9)}.{rng.randint(0, 30)}"\n'
                    f'files = [\n    {{file = "{name}.whl", hash = "sha256:{_hex(rng, 64)}"}},\n]\n'
                )
        return lines

    def write_file(self, root: Path, f: Planned) -> int:
        rng = self.rng
        lines = self.body(f)
        if f.fmt == "bundle":
            # Keys inside minified lines, spliced between two statements; one key per line, so (file, line) is unique.
            free = list(range(len(lines)))
            for text, _, entry in f.plants:
                if not free:
                    lines.append(",".join(rng.choices(self.minified, k=200)) + ";")
                    free.append(len(lines) - 1)
                index = free.pop(rng.randrange(len(free)))
                line = lines[index]
                cut = line.find(",", rng.randrange(len(line)))
                cut = len(line) - 1 if cut < 0 else cut
                lines[index] = f"{line[:cut]},{text}{line[cut:]}"
                entry["line"] = index + 1
        else:
            first = 2 if f.fmt in HEADERS else 0
            spots = sorted((rng.randint(first, max(first, len(lines))), i) for i in range(len(f.plants)))
            for spot, i in reversed(spots):  # from the bottom up, so the spots above keep their index
                lines[spot:spot] = f.plants[i][0].split("\n")
            offset = 0  # lines that plants above this one added
            for spot, i in spots:
                text, at, entry = f.plants[i]
                entry["line"] = spot + offset + at + 1
                offset += text.count("\n") + 1
        if f.fmt in FOOTERS:
            lines.append(FOOTERS[f.fmt])
        raw = ("\n".join(lines) + "\n").encode()
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        return len(raw)

    def write_git(self, root: Path) -> int:
        """A .git-like folder: loose objects and a pack (zlib, as git stores them), refs, logs, a binary index."""
        rng, git, written = self.rng, root / ".git", 0
        (git / "refs/heads").mkdir(parents=True, exist_ok=True)
        small = {
            "HEAD": "ref: refs/heads/main\n",
            "config": "[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
            "refs/heads/main": _hex(rng, 40) + "\n",
            "packed-refs": "".join(f"{_hex(rng, 40)} refs/tags/v{i}.0\n" for i in range(200)),
            "logs/HEAD": "".join(
                f"{_hex(rng, 40)} {_hex(rng, 40)} Dev <dev@example.com> {1700000000 + i} +0000\tcommit: update\n"
                for i in range(2000)
            ),
        }
        for name, text in small.items():
            (git / name).parent.mkdir(parents=True, exist_ok=True)
            written += (git / name).write_text(text)
        index = rng.randbytes(min(2_000_000, self.git_bytes // 10))
        (git / "index").write_bytes(index)
        written += len(index)
        pool = self.pools["py"] + self.pools["js"]
        pack = bytearray()
        while written + len(pack) < self.git_bytes:
            blob = "\n".join(rng.choices(pool, k=rng.randint(5, 60))).encode()
            obj = zlib.compress(b"blob %d\0" % len(blob) + blob)
            if rng.random() < 0.3:  # a loose object
                target = git / "objects" / _hex(rng, 2) / _hex(rng, 38)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(obj)
                written += len(obj)
            else:
                pack += obj
        (git / "objects/pack").mkdir(parents=True, exist_ok=True)
        (git / f"objects/pack/pack-{_hex(rng, 40)}.pack").write_bytes(bytes(pack))
        return written + len(pack)


def generate(out: Path, size_mb: float = 220, seed: int = 7) -> dict[str, object]:
    """Write OUT/tree and OUT/.truth.json (removing an older tree first); returns the truth document."""
    started = time.monotonic()
    root = out / "tree"
    truth_path = out / ".truth.json"
    truth_path.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    tree = Tree(seed, size_mb)
    tree.plan()
    keys, decoys = tree.assign()
    total = node_modules = 0
    for f in tree.files:
        n = tree.write_file(root, f)
        total += n
        if f.path.startswith("node_modules/"):
            node_modules += n
    git = tree.write_git(root)
    truth: dict[str, object] = {
        "parameters": {"version": VERSION, "seed": seed, "size_mb": size_mb},
        "bytes": {"total": total + git, "node_modules": node_modules, "git": git},
        "files": len(tree.files),
        "keys": keys,
        "decoys": decoys,
    }
    truth_path.write_text(json.dumps(truth, indent=1))
    print(
        f"wrote {root}: {len(tree.files):,} files, {(total + git) / 1e6:.1f} MB, {len(keys)} keys, "
        f"{len(decoys)} decoys in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return truth


def load_truth(out: Path, size_mb: float, seed: int) -> dict[str, object] | None:
    """The truth of an existing complete tree made with these parameters, else None."""
    try:
        truth: dict[str, object] = json.loads((out / ".truth.json").read_text())
    except (OSError, ValueError):
        return None
    return truth if truth.get("parameters") == {"version": VERSION, "seed": seed, "size_mb": size_mb} else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=220)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    generate(args.out, args.size_mb, args.seed)


if __name__ == "__main__":
    main()
