#!/usr/bin/env bash
# Stop the daemons that start.sh started (and only those), newest first, by the PIDs it recorded.
set -uo pipefail

STATE=${AREPAS_SLURM_STATE:-/tmp/arepas-slurm}
[ -f "$STATE/pids" ] || exit 0

# Jobs still running on a cluster started here would outlive slurmd; cancel them first.
if grep -q '^slurmctld ' "$STATE/pids" && command -v scancel >/dev/null 2>&1; then
  scancel --user "$(id -un)" >/dev/null 2>&1
fi

tac "$STATE/pids" | while read -r name pid; do
  # A recycled PID must not be hit: check that it still runs the daemon recorded for it.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  fi
done
rm -f "$STATE/pids"
