#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the `slurm` tests and for trying
# `rkbench run --executor slurm` without a cluster:
#
#   scripts/slurm-cluster.sh start    # install slurm-wlm and munge if missing (apt-get, as root), start
#   scripts/slurm-cluster.sh status   # exit 0 when the cluster answers and its node is up
#   scripts/slurm-cluster.sh stop     # stop only the daemons this script started
#
# Idempotent: `start` on a running cluster does nothing; a munged that was already running is used
# and left alone by `stop`. The configuration (one node with this machine's CPUs and memory, one
# partition, no accounting) and the daemons' logs and state live in $RKBENCH_SLURM_DIR
# (default /tmp/rkbench-slurm); /etc/slurm/slurm.conf becomes a link to it when there is none, so
# sbatch, squeue and scontrol find the cluster without SLURM_CONF. An existing slurm.conf that this
# script did not write is never touched: the script then refuses to start a second cluster.
set -euo pipefail

STATE=${RKBENCH_SLURM_DIR:-/tmp/rkbench-slurm}
CONF=$STATE/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by rkbench scripts/slurm-cluster.sh"

say() { echo "slurm-cluster: $*" >&2; }

ours_conf() { [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; }

# a pid file written by this script whose process is still the daemon it names
alive() {
  local name=$1 file=$STATE/started/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

munge_works() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

cluster_up() {
  command -v sinfo >/dev/null || return 1
  timeout 10 scontrol ping 2>/dev/null | grep -q "is UP" || return 1
  local state
  state=$(timeout 10 sinfo -h -N -o %T 2>/dev/null | head -1)
  case "$state" in idle*|mixed*|alloc*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    say "slurm-wlm and munge are not installed and cannot be installed here (needs root and apt-get)"
    return 1
  fi
  say "installing slurm-wlm and munge with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  # the memory slurmd itself measures (a larger RealMemory would drain the node)
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  [ -n "$mem" ] || mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
  mkdir -p "$STATE/ctld" "$STATE/slurmd" "$STATE/started" "$STATE/log"
  cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=rkbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule every few seconds (a requeued job starts again soon; the tests stay short)
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
# a job past its time limit gets SIGTERM, then SIGKILL KillWait seconds later; OverTimeLimit lets it
# run one more minute past the limit, so that the warning signal submitit asks for (USR2) always
# arrives, checkpoints and requeues before the kill, even with the 30 s granularity of the checks
KillWait=5
OverTimeLimit=1
MinJobAge=600
# a requeued job (time limit, preemption) may start again after this many seconds (default 120)
AuthInfo=cred_expire=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start() {
  if [ -e "$ETC_CONF" ] && ! ours_conf; then
    if cluster_up; then say "a Slurm cluster of this machine's own ($ETC_CONF) is up: using it"; return 0; fi
    say "$ETC_CONF exists and was not written by this script: not starting a second cluster"
    return 1
  fi
  if ours_conf && cluster_up; then say "already running ($CONF)"; return 0; fi
  install_packages
  write_conf
  mkdir -p /etc/slurm
  ln -sfn "$CONF" "$ETC_CONF"
  if ! munge_works; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_works && break; sleep 0.2; done
    munge_works || { say "munged did not start"; return 1; }
    pgrep -u munge -x munged -n >"$STATE/started/munged.pid" || true
  fi
  if ! alive slurmctld; then
    slurmctld -i
    for _ in $(seq 50); do [ -s "$STATE/slurmctld.pid" ] && break; sleep 0.2; done
    cp "$STATE/slurmctld.pid" "$STATE/started/slurmctld.pid"
  fi
  if ! alive slurmd; then
    slurmd
    for _ in $(seq 50); do [ -s "$STATE/slurmd.pid" ] && break; sleep 0.2; done
    cp "$STATE/slurmd.pid" "$STATE/started/slurmd.pid"
  fi
  for _ in $(seq 60); do
    if cluster_up; then say "up: $(sinfo -h -N -o '%N %c CPUs %m MB %T')"; return 0; fi
    # a node left down or drained by an earlier run of this script
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  say "the cluster did not come up; logs in $STATE/log"
  return 1
}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    if alive "$name"; then
      pid=$(cat "$STATE/started/$name.pid")
      kill "$pid"
      for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
      say "stopped $name ($pid)"
    fi
    rm -f "$STATE/started/$name.pid"
  done
  if ours_conf; then rm -f "$ETC_CONF"; fi
}

status() {
  if cluster_up; then
    say "up: $(sinfo -h -N -o '%N %c CPUs %m MB %T')"
  else
    say "not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
