#!/usr/bin/env bash
# Send one image to a running server (serve_local.sh) and print its top-k classes.
#
#   local_test/predict.sh FILE [CONTENT_TYPE]
#
# CONTENT_TYPE defaults from the file name (image/jpeg, image/png, ...). Environment: PORT
# (default 8080), HOST (default 127.0.0.1, where serve_local.sh publishes), TOP_K (sent as
# SageMaker's CustomAttributes `top_k=N`; default: the server's). Exits non-zero on an HTTP error, printing its body.
set -euo pipefail

FILE="${1:?usage: predict.sh FILE [CONTENT_TYPE]}"
[[ -f "$FILE" ]] || { echo "predict.sh: no such file: $FILE" >&2; exit 2; }
if [[ $# -ge 2 ]]; then
    TYPE="$2"
else
    case "$(printf '%s' "$FILE" | tr '[:upper:]' '[:lower:]')" in
        *.jpg|*.jpeg) TYPE=image/jpeg ;;
        *.png) TYPE=image/png ;;
        *.webp) TYPE=image/webp ;;
        *.json) TYPE=application/json ;;
        *) TYPE=application/x-image ;;
    esac
fi
URL="http://${HOST:-127.0.0.1}:${PORT:-8080}/invocations"
HEADERS=(-H "Content-Type: $TYPE" -H "Accept: application/json")
if [[ -n "${TOP_K:-}" ]]; then
    HEADERS+=(-H "X-Amzn-SageMaker-Custom-Attributes: top_k=$TOP_K")
fi

BODY="$(mktemp)"
trap 'rm -f "$BODY"' EXIT
code="$(curl -sS -o "$BODY" -w '%{http_code}' -X POST "${HEADERS[@]}" --data-binary "@$FILE" "$URL")"
if [[ "$code" != 2* ]]; then
    echo "predict.sh: HTTP $code from $URL" >&2
    cat "$BODY" >&2; echo >&2
    exit 1
fi
if command -v python3 >/dev/null; then
    python3 -m json.tool "$BODY"
else
    cat "$BODY"; echo
fi
