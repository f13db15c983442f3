#!/usr/bin/env bash
set -euo pipefail
MODEL=/models/qwen2.5-7b-instruct-q4_k_m.gguf
llama-server -m "$MODEL" --host 0.0.0.0 --port 8080 &
vllm serve Qwen/Qwen2.5-7B-Instruct --host 127.0.0.1 --api-key "$VLLM_API_KEY" &
jupyter lab --ip 0.0.0.0 --ServerApp.token='' --no-browser
