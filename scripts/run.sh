#!/usr/bin/env bash
# The main job: set up, serve the dashboard at once (the reference results in results/ from the
# first minute), then run the quick experiments of all three tasks in this terminal while the
# dashboard shows their runs as they train. Finished runs are skipped when this is run again.
# When the experiments are done the dashboard keeps serving until Ctrl-C.
#   SN_SKIP_EXPERIMENTS=1 bash scripts/run.sh   # only the demo and the dashboard
#   SN_RUNS_ROOT=/path bash scripts/run.sh      # where your run directories go (default runs/)
#   SN_REFERENCE_ROOT=/path                     # the reference results shown beside them (default results/)
#   SN_PORT=8501                                # the dashboard's port
#   SN_LOG_DIR=logs                             # where the dashboard's (and a second grid part's) log goes
#   SN_SKIP_SETUP=1                             # skip scripts/setup.sh (the .venv is ready)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -n "${SN_SKIP_SETUP:-}" ] || bash scripts/setup.sh
PY=.venv/bin/python
ROOT="${SN_RUNS_ROOT:-runs}"
PORT="${SN_PORT:-8501}"
export SN_RUNS_ROOT="$ROOT"
export SN_REFERENCE_ROOT="${SN_REFERENCE_ROOT:-results}"
LOGS="${SN_LOG_DIR:-logs}"
mkdir -p "$ROOT" "$LOGS"
DASHBOARD_LOG="$LOGS/dashboard.log"

echo "== 1/5 the dashboard =="
.venv/bin/streamlit run app.py --server.headless true --server.port "$PORT" \
    --browser.gatherUsageStats false >"$DASHBOARD_LOG" 2>&1 &
DASHBOARD_PID=$!
trap 'kill "$DASHBOARD_PID" 2>/dev/null || true' EXIT
for _ in $(seq 60); do  # wait until it answers (at most a minute)
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://localhost:$PORT/_stcore/health', timeout=2)" 2>/dev/null; then
        break
    fi
    kill -0 "$DASHBOARD_PID" 2>/dev/null || { echo "the dashboard did not start; see $DASHBOARD_LOG" >&2; exit 1; }
    sleep 1
done
echo "   dashboard: http://localhost:$PORT  (reference results from $SN_REFERENCE_ROOT/ now; your runs"
echo "   in $ROOT/ appear as they train; its log: $DASHBOARD_LOG)"

echo "== 2/5 the sn library in a few seconds (python -m sn) =="
"$PY" -m sn

if [ -z "${SN_SKIP_EXPERIMENTS:-}" ]; then
    # A failed run is marked failed and its grid goes on (exit 1); a run directory holding another
    # configuration stops a grid before it starts (exit 2, naming the keys): keep going.
    echo "== 3/5 classification, Table 2 at CPU scale (python -m tasks.classify --experiment table2-quick) =="
    # table2-quick runs each run on one thread: two parts of its grid side by side use both cores
    # (the second part's output goes to $LOGS/table2-quick-part2.log)
    (for runs in '*_8x2_*' '*_8x1_*'; do
        "$PY" -m tasks.classify --experiment table2-quick --root "$ROOT" --runs "$runs" || true
     done) >"$LOGS/table2-quick-part2.log" 2>&1 &
    PART2=$!
    for runs in '*_8x32_*' '*_8x8_*' '*_1x16_*'; do
        "$PY" -m tasks.classify --experiment table2-quick --root "$ROOT" --runs "$runs" || echo "(a table2-quick run did not complete; see above)"
    done
    wait "$PART2" || true
    echo "   (the second part's log: $LOGS/table2-quick-part2.log)"
    "$PY" -m analysis.results --root "$ROOT" --experiment table2-quick || true
    echo "== 4/5 style transfer, in/bn/sn (python -m tasks.stylize --experiment stylize-quick) =="
    "$PY" -m tasks.stylize --experiment stylize-quick --root "$ROOT" || echo "(stylize-quick did not complete; see above)"
    echo "== 5/5 ENAS controller with ln/gn/sn (python -m tasks.enas --experiment enas-quick) =="
    "$PY" -m tasks.enas --experiment enas-quick --root "$ROOT" || echo "(enas-quick did not complete; see above)"
    echo "== experiments done =="
fi

echo "   the dashboard keeps serving on http://localhost:$PORT (Ctrl-C to stop)"
wait "$DASHBOARD_PID"
