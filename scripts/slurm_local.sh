#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `ssl-bench run --launcher slurm` and for
# its tests: writes a minimal slurm.conf (this host as the only node, every core, one partition),
# starts munge, slurmctld and slurmd, and waits until `sinfo` shows the node ready.
#
#   scripts/slurm_local.sh [start]   start it (idempotent); prints the SLURM_CONF to export
#   scripts/slurm_local.sh stop      stop the daemons this script started
#   scripts/slurm_local.sh env       print the export line only
#
# Needs the SLURM and munge daemons (Debian/Ubuntu: apt-get install slurm-wlm munge) and root
# (slurmd starts jobs as their users).  State, logs and the config live in $SLURM_LOCAL_DIR
# (default /tmp/ssl-bench-slurm); nothing under /etc is changed.
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/ssl-bench-slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"
ACTION="${1:-start}"

say() { echo "slurm_local: $*" >&2; }

stop() {
    for daemon in slurmd slurmctld munged; do
        pidfile="$DIR/$daemon.pid"
        if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            kill "$(cat "$pidfile")" && say "stopped $daemon"
        fi
        rm -f "$pidfile"
    done
}

if [[ "$ACTION" == "stop" ]]; then stop; exit 0; fi
if [[ "$ACTION" == "env" ]]; then echo "export SLURM_CONF=$CONF"; exit 0; fi
if [[ "$ACTION" != "start" ]]; then say "unknown action $ACTION (start, stop, env)"; exit 2; fi

for tool in munged slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || { say "$tool is not installed (apt-get install slurm-wlm munge)"; exit 3; }
done
if [[ "$(id -u)" != 0 ]]; then say "run as root: slurmd starts jobs as their users"; exit 3; fi

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
cat > "$CONF.tmp" <<EOF
# written by scripts/slurm_local.sh: one node ($HOST), one partition
ClusterName=ssl-bench-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=10
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
mv "$CONF.tmp" "$CONF"
export SLURM_CONF="$CONF"

# munge: the machine's key (the package makes one), its socket under $DIR
if ! [[ -f "$DIR/munged.pid" ]] || ! kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; then
    key=/etc/munge/munge.key
    [[ -f "$key" ]] || { say "no $key (the munge package creates it; or: mungekey --create)"; exit 3; }
    mkdir -p /run/munge
    munged --force --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/seed" --socket=/run/munge/munge.socket.2
    say "started munged"
fi
if ! [[ -f "$DIR/slurmctld.pid" ]] || ! kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    slurmctld -f "$CONF"
    say "started slurmctld"
fi
if ! [[ -f "$DIR/slurmd.pid" ]] || ! kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; then
    slurmd -f "$CONF"
    say "started slurmd"
fi

for _ in $(seq 1 60); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)"
    if [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]; then
        say "node $HOST is $state ($CPUS CPUs); logs in $DIR/log"
        echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 1
done
say "the node did not become ready in 60 s (state: ${state:-none}); see $DIR/log"
exit 1
