#!/usr/bin/env bash
# Create benchmarks/.venv: typedmesh (editable, from this repo) plus the peer frameworks
# the overhead benchmark compares against. Only PyPI is contacted; no LLM is ever called.
#
#   bash benchmarks/setup.sh && benchmarks/.venv/bin/python benchmarks/overhead.py
#
# PYTHON=python3.12 bash benchmarks/setup.sh   picks another interpreter (>= 3.11).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# the provider extras make the "import typedmesh loads no SDK" check meaningful
"$venv/bin/python" -m pip install --quiet -e "$repo[openai,anthropic]"
# The peers. Each is optional for overhead.py (its rows are skipped when missing), so a
# failed install is reported and does not stop the others.
for pkg in langgraph langgraph-checkpoint-sqlite langchain-core pydantic-ai-slim; do
    if ! "$venv/bin/python" -m pip install --quiet "$pkg"; then
        echo "setup.sh: could not install $pkg; overhead.py will skip its rows" >&2
    fi
done
"$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
    | grep -iE '^(typedmesh|langgraph|langgraph-checkpoint-sqlite|langchain-core|pydantic-ai-slim|pydantic|rich|openai|anthropic)==' \
    || true
echo "ready: $venv/bin/python $here/overhead.py"
