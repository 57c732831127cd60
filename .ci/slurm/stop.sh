#!/usr/bin/env bash
# Stop the daemons that start.sh started (and only those), by the PIDs it recorded.
set -uo pipefail

STATE=${AREPAS_SLURM_STATE:-/tmp/arepas-slurm}
[ -f "$STATE/pids" ] || exit 0

# Jobs still running on a cluster started here would outlive slurmd; cancel them first.
if grep -q '^slurmctld ' "$STATE/pids" && command -v scancel >/dev/null 2>&1; then
  scancel --user "$(id -un)" >/dev/null 2>&1
fi

stopping=()
while read -r name pid; do
  # A recycled PID must not be hit: check that it still runs the daemon recorded for it.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid" && stopping+=("$pid")
  fi
done <"$STATE/pids"
for pid in "${stopping[@]}"; do
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
done
rm -f "$STATE/pids"

# Snakemake's SLURM executor runs `scontrol show config` each time Snakemake starts, even for
# local runs; with a config that names a controller no longer running, that waits about 9 s.
# Without a config it returns at once, as before the cluster was started.
if [ -f "$STATE/wrote-config" ]; then
  rm -f /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf "$STATE/wrote-config"
fi
