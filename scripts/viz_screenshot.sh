#!/usr/bin/env bash
# docs/kedro_viz.png: what a person sees in `kedro viz` after expanding one dose to its
# jobs and one job to its nodes, taken in a real headless browser.
#
#   scripts/viz_screenshot.sh [OUTPUT.png]      (default docs/kedro_viz.png)
#
# Needs Chromium (Debian: apt-get install -y chromium) and Node.js with npm; installs
# playwright-core (the library only, no browser download) into VIZ_SHOT_NODE_DIR
# (default ~/.cache/fly64_viz_shot) the first time. kedro viz serves the project's
# pipelines from a scratch copy of conf/base (no data is needed to draw them). Choose
# the job with VIZ_SHOT_JOB (default dose_1e4.dense.test), the port with VIZ_SHOT_PORT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="$(realpath -m "${1:-$ROOT/docs/kedro_viz.png}")"
JOB="${VIZ_SHOT_JOB:-dose_1e4.dense.test}"
PORT="${VIZ_SHOT_PORT:-4147}"
NODE_DIR="${VIZ_SHOT_NODE_DIR:-$HOME/.cache/fly64_viz_shot}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

command -v node >/dev/null || { echo "viz_screenshot: needs Node.js (node, npm)" >&2; exit 2; }
[ -x "$CHROMIUM" ] || { echo "viz_screenshot: no Chromium at $CHROMIUM (apt-get install -y chromium, or set CHROMIUM)" >&2; exit 2; }
if [ ! -d "$NODE_DIR/node_modules/playwright-core" ]; then
    npm install --silent --prefix "$NODE_DIR" playwright-core >/dev/null
fi

WORK="$(mktemp -d)"
SERVER=""
cleanup() {
    # kedro viz's server outlives a plain SIGTERM: end its whole process group.
    [ -n "$SERVER" ] && kill -- "-$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/project/src" "$WORK/project/conf/local"
cp "$ROOT/pyproject.toml" "$WORK/project/"
cp -r "$ROOT/conf/base" "$ROOT/conf/logging.yml" "$WORK/project/conf/"

cd "$WORK/project"
KEDRO_DISABLE_TELEMETRY=1 setsid kedro viz run --no-browser --port "$PORT" >"$WORK/viz.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/api/main" >/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/viz.log" >&2; exit 1; }
    sleep 1
done

IFS=. read -r DOSE VIEW SPLIT <<<"$JOB"
cp "$ROOT/scripts/viz_screenshot.mjs" "$NODE_DIR/"
node "$NODE_DIR/viz_screenshot.mjs" "http://127.0.0.1:$PORT/" "$OUTPUT" "$DOSE" "$VIEW" "$SPLIT"
echo "wrote $OUTPUT"
