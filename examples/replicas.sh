#!/usr/bin/env bash
# Three replicas of `watch` sharing one PostgreSQL database, against the
# Tinker simulator on loopback; one replica is SIGKILLed midway and its runs
# are taken over. Then `status` shows who holds each run.
#
#   pip install -e '.[cli,postgres]' pgserver     # from a clone
#   bash examples/replicas.sh                     # about a minute
#
# With DSN=postgresql://... set, your own database is used instead of a
# throwaway one (pgserver). Only processes this script started are stopped.
set -euo pipefail
PY=${PYTHON:-python3}
PORT=${PORT:-8765}
LEASE=${LEASE:-6}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${OWN_DSN:-}" ]; then
        "$PY" -c 'import sys, pgserver; pgserver.get_server(sys.argv[1], cleanup_mode="delete")' \
            "$WORK/pg" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${DSN:-}" ]; then
    OWN_DSN=1
else
    DSN=$("$PY" -W ignore -c 'import sys, pgserver
print(pgserver.get_server(sys.argv[1], cleanup_mode=None).get_uri())' "$WORK/pg")
fi

"$PY" -m trio_tinkex_recovery simulate --port "$PORT" --runs 12 \
    --checkpoint-every 2 --corrupt-every 6 --duration 70 > "$WORK/simulator.log" &
PIDS+=($!)
sleep 2
export TINKER_BASE_URL="http://127.0.0.1:$PORT" TINKER_API_KEY=tml-simulator
RUNS=$(printf 'run-%d ' $(seq 1 12))

replica() {  # replica NAME [RUN...]: a watcher whose lines are prefixed by NAME
    local name=$1; shift
    "$PY" -m trio_tinkex_recovery watch --state "$DSN" --lease "$LEASE" \
        --plain --poll-interval 2 --duration 60 "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
    PIDS+=($!)
    LAST=$!
}

replica a $RUNS          # adds the runs to the database, and watches its share
VICTIM=$LAST
replica b
replica c
sleep 20
echo "--- who holds what:"
"$PY" -m trio_tinkex_recovery status --state "$DSN" | head -16
echo "--- SIGKILL replica a (pid $VICTIM): another polls its runs within $LEASE s + $LEASE/3 s + the poll interval"
kill -9 "$VICTIM"
sleep $((LEASE * 2 + 5))
echo "--- after the takeover:"
"$PY" -m trio_tinkex_recovery status --state "$DSN" | head -16
wait "${PIDS[0]}" 2>/dev/null || true
