#!/usr/bin/env bash
# Start a throwaway one-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) on this
# machine, for the workflow's SLURM test. Debian/Ubuntu, run as root. PID 1 is often not systemd in
# containers and CI runners, so every daemon is started by hand; the PIDs of the daemons started
# here are written to $STATE/pids so that stop.sh ends exactly those. Daemons that are already
# running are used as they are and left alone. Prints `sinfo` once the node accepts jobs.
#
#   bash .ci/slurm/start.sh                 # about 10 s once the packages are installed
#   bash .ci/slurm/stop.sh
#   bash .ci/slurm/start.sh --install-only  # only install the packages (CI set-up)
set -euo pipefail

STATE=${AREPAS_SLURM_STATE:-/tmp/arepas-slurm}
PACKAGES=(slurm-wlm slurmctld slurmd slurmdbd slurm-client munge mariadb-server)

if [ "$(id -u)" -ne 0 ]; then
  echo "start.sh: must run as root (it installs packages and writes /etc/slurm)" >&2
  exit 2
fi

missing=0
for binary in slurmctld slurmd slurmdbd sacct munged mariadbd; do
  command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing=1
done
if [ "$missing" -eq 1 ]; then
  echo "start.sh: installing ${PACKAGES[*]} with apt-get" >&2
  apt-get update -qq
  # The packages' own service start-up fails without systemd; it is done by hand below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" >/dev/null
fi
[ "${1:-}" = "--install-only" ] && exit 0

mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm \
  /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
touch "$STATE/pids"

running() { pgrep -x "$1" >/dev/null 2>&1; }
# The PID file names a running process of that daemon (not a file left by an earlier one).
pid_runs() {  # pid_runs NAME PIDFILE
  local pid
  pid=$(cat "$2" 2>/dev/null) && [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
record() { echo "$1 $2" >>"$STATE/pids"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "start.sh: gave up waiting for $what; logs are in /var/log/slurm" >&2
  return 1
}

# Configuration is only (re)written while no SLURM daemon uses it.
if ! running slurmctld && ! running slurmd && ! running slurmdbd; then
  host=$(hostname -s)
  # The node as slurmd sees the hardware (CPUs, sockets, cores, threads). Not `nproc`: it
  # honours OMP_NUM_THREADS, which test runs set to 1, and would hide all but one CPU.
  hardware=$(/usr/sbin/slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=.*//')
  # Leave a fifth of the memory to the system and the workflow's own process.
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10))
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# Snakemake's SLURM executor puts the rule name into the job comment; keep it for sacct.
AccountingStoreFlags=job_comment
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=${host} NodeAddr=127.0.0.1 ${hardware} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
  # slurmdbd refuses a config file that others can read (it holds the database password).
  chmod 600 /etc/slurm/slurmdbd.conf
  touch "$STATE/wrote-config"
fi

if ! running munged; then
  [ -s /etc/munge/munge.key ] || {
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  }
  rm -f /run/munge/munged.pid
  su -s /bin/sh munge -c /usr/sbin/munged
  wait_for 10 munged pid_runs munged /run/munge/munged.pid
  record munged "$(cat /run/munge/munged.pid)"
fi

if ! running mariadbd; then
  /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
    >>/var/log/slurm/mariadb.log 2>&1 &
  record mariadbd $!
  wait_for 30 MariaDB mariadb -e 'select 1'
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

if ! running slurmdbd; then
  rm -f /run/slurmdbd.pid
  /usr/sbin/slurmdbd
  wait_for 20 slurmdbd pid_runs slurmdbd /run/slurmdbd.pid
  record slurmdbd "$(cat /run/slurmdbd.pid)"
fi
wait_for 20 "the accounting daemon" sacctmgr -n list cluster
# sacct, which the Snakemake executor uses to follow jobs, needs the cluster in the database.
sacctmgr -i add cluster local >/dev/null 2>&1 || true

if ! running slurmctld; then
  # A throwaway cluster: forget the name of an earlier one that used this state directory.
  rm -f /var/spool/slurmctld/clustername /run/slurmctld.pid
  /usr/sbin/slurmctld
  wait_for 20 slurmctld pid_runs slurmctld /run/slurmctld.pid
  record slurmctld "$(cat /run/slurmctld.pid)"
fi
if ! running slurmd; then
  rm -f /run/slurmd.pid
  /usr/sbin/slurmd
  wait_for 20 slurmd pid_runs slurmd /run/slurmd.pid
  record slurmd "$(cat /run/slurmd.pid)"
fi

node_ready() { sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'; }
wait_for 30 "the node to become idle" node_ready
sinfo
