#!/usr/bin/env bash
# The main job: set everything up on a fresh machine, demonstrate the library, run the quick
# experiments of all three tasks (about 1 h 15 min on 2 CPU cores; finished runs are skipped
# when this is run again), then serve the dashboard on them.
#   SN_SKIP_EXPERIMENTS=1 bash scripts/run.sh   # only the demo and the dashboard
#   SN_RUNS_ROOT=/path bash scripts/run.sh      # where run directories go (default runs/)
#   SN_PORT=8501                                # the dashboard's port
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY=.venv/bin/python
ROOT="${SN_RUNS_ROOT:-runs}"
export SN_RUNS_ROOT="$ROOT"

echo "== 1/5 the sn library in a few seconds (python -m sn) =="
"$PY" -m sn

if [ -z "${SN_SKIP_EXPERIMENTS:-}" ]; then
    # A failed run is marked failed and its grid goes on (exit 1); a run directory holding another
    # configuration stops a grid before it starts (exit 2, naming the keys): keep going to the dashboard.
    echo "== 2/5 classification, Table 2 at CPU scale (python -m tasks.classify --experiment table2-quick) =="
    "$PY" -m tasks.classify --experiment table2-quick --root "$ROOT" || echo "(table2-quick did not complete; see above)"
    "$PY" -m analysis.results --root "$ROOT" --experiment table2-quick || true
    echo "== 3/5 style transfer, in/bn/sn (python -m tasks.stylize --experiment stylize-quick) =="
    "$PY" -m tasks.stylize --experiment stylize-quick --root "$ROOT" || echo "(stylize-quick did not complete; see above)"
    echo "== 4/5 ENAS controller with ln/gn/sn (python -m tasks.enas --experiment enas-quick) =="
    "$PY" -m tasks.enas --experiment enas-quick --root "$ROOT" || echo "(enas-quick did not complete; see above)"
fi

echo "== 5/5 the dashboard: http://localhost:${SN_PORT:-8501} (Ctrl-C to stop) =="
exec .venv/bin/streamlit run app.py --server.headless true --server.port "${SN_PORT:-8501}"
