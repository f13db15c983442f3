"""Talks to the providers."""

import os

import anthropic

ANTHROPIC_KEY = "{{fake sk-ant-api03- +b64url93 AA}}"
HF_TOKEN = "{{fake hf_ xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx}}"  # placeholder
GATEWAY_KEY = "{{fake +aipkey}}"
NOT_A_KEY = "aip_abcdefghijkl_0000000000000000000000000000000000000000000000000"
GROQ_KEY = "{{fake gsk_ +alnum20 WGdyb3FY +alnum24}}"  # aiperimeter:ignore[groq] revoked, kept for the replay test
client = anthropic.Anthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", ANTHROPIC_KEY))
