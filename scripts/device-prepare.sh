#!/usr/bin/env bash
# Prepares what a GPU run of scripts/device-check.sh carries, on this (GPU-less) machine, and
# checks that it fits the device tool's 64 MiB carry (tracked files + .device + dist):
#   .device/node.xz               this Node, compressed (the GPU machine has none)
#   .device/node_modules/         the packages dist/ requires at run time
#   .device/diffusekit.node.xz    the addon built with CUDA for sm_90a only (H100/H200), ~2 MB
#   .device/reference.tar.xz      the tiny-sd part of the golden reference (--no-reference: left out)
# and dist/. Then run, with carry [".device", "dist"]:
#   xz -dc .device/node.xz > /tmp/node && chmod +x /tmp/node && export PATH=/tmp:$PATH && bash scripts/device-check.sh $OUT
# Usage: scripts/device-prepare.sh [--no-reference]
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
mkdir -p .device/node_modules
[ -f .device/node.xz ] || xz -T2 -c "$(command -v node)" > .device/node.xz
for p in node-gyp-build pngjs jpeg-js commander; do
  rm -rf ".device/node_modules/$p" && cp -r "node_modules/$p" .device/node_modules/
done

# ninja does not follow .cuh includes for CUDA sources here: rebuild the CUDA objects every time
touch native/cuda/*.cu
npx cmake-js compile --out build/device --CDDIFFUSEKIT_CUDA=ON --CDCMAKE_CUDA_ARCHITECTURES=90a-real > build/device-build.log 2>&1 ||
  { tail -20 build/device-build.log; exit 1; }
xz -T2 -9 -c build/device/Release/diffusekit.node > .device/diffusekit.node.xz
git rev-parse --short HEAD > .device/ADDON_COMMIT

rm -f .device/reference.tar.xz
if [ "${1:-}" != "--no-reference" ]; then
  ref="${DIFFUSEKIT_REFERENCE_DIR:-../shared/reference}"
  tar -C "$ref" -cf - cases/components_manifest.json cases/unet.safetensors cases/vae.safetensors \
    models/tiny-sd/unet models/tiny-sd/vae | xz -T2 -9 > .device/reference.tar.xz
fi
npm run build:ts > /dev/null

tracked=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb .device dist | awk '{s += $1} END {print s}')
total=$((tracked + carried))
echo "carry: tracked $((tracked / 1048576)) MiB + .device and dist $((carried / 1048576)) MiB = $((total / 1048576)) MiB of 64"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "over the 64 MiB carry: leave labs out of .device, or rerun with --no-reference" >&2
  exit 1
fi
