#!/usr/bin/env bash
# Serve SmolLM2-135M-Instruct with llama.cpp's llama-server on 127.0.0.1:$PORT (default 8080),
# tools enabled (--jinja with llama.cpp's ChatML tool template). Builds it first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="$(bash scripts/build_llama_server.sh | tail -n 1)"
PORT="${PORT:-8080}"
echo "[local-model] SmolLM2-135M-Instruct on http://127.0.0.1:$PORT (OpenAI: /v1, Anthropic: /v1/messages); Ctrl-C stops it"
exec "$DEST/bin/llama-server" -m "$DEST/SmolLM2-135M-Instruct.gguf" --host 127.0.0.1 \
  --port "$PORT" --jinja --chat-template-file "$DEST/chatml-tools.jinja" --ctx-size 8192 \
  --alias smollm2 --no-webui
