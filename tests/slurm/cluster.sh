#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the integration test (tests/test_slurm.py).
#
#   tests/slurm/cluster.sh install        apt-get install slurm-wlm + munge if missing (root)
#   tests/slurm/cluster.sh start DIR      write DIR/slurm.conf, start munged, slurmctld, slurmd
#   tests/slurm/cluster.sh stop DIR       end the daemons started by `start DIR`, by their pids
#
# Loopback only (every daemon binds to 127.0.0.1 / a socket under DIR); no accounting storage.
# Two fake GPUs: gres.conf points at character devices (mknod, like /dev/null; plain files are
# refused), so SLURM allocates them and sets CUDA_VISIBLE_DEVICES per job. Clients use
# SLURM_CONF=DIR/slurm.conf (start prints it); the `srun` that Snakemake's job step runs inside
# each job is started without any SLURM_* variable, so it reads the default
# /etc/slurm/slurm.conf: start links that to DIR/slurm.conf (replacing only a link left by a
# test cluster that is no longer running) and stop removes the link. Ports: SLURMCTLD_PORT / SLURMD_PORT (defaults
# 16817 / 16818). The node claims 16 CPUs and 64 GB (SlurmdParameters=config_overrides), so the
# slurm-gpu profile's requests fit on a small machine; jobs share its real cores.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: installing slurm-wlm and munge needs root" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
}

# Wait until $1 (a pid file) names a live process; the daemons write it after forking.
wait_pid() {
    for _ in $(seq 100); do
        if [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "cluster.sh: no live process in $1" >&2
    return 1
}

# True when $1 (the target of /etc/slurm/slurm.conf) is a test cluster's config whose slurmctld is
# gone: a run killed before `stop` leaves its link behind, and it must not block the next run.
# Anything else (a live test cluster, a config this script did not write) is kept.
left_by_dead_cluster() {
    [ -e "$1" ] || return 0
    grep -qx 'ClusterName=llmflowtest' "$1" || return 1
    local pidfile
    pidfile=$(dirname "$1")/slurmctld.pid
    ! { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
}

start() {
    local dir host ctld_port slurmd_port
    dir=$(realpath -m "${1:?start needs a state folder}")
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: starting slurmd needs root" >&2; exit 1; }
    host=$(hostname -s)
    ctld_port=${SLURMCTLD_PORT:-16817}
    slurmd_port=${SLURMD_PORT:-16818}
    mkdir -p "$dir"/{state,spool,dev}
    for i in 0 1; do
        [ -c "$dir/dev/gpu$i" ] || mknod "$dir/dev/gpu$i" c 1 3
    done
    # A key of our own, so the cluster never depends on (or changes) the system's munge setup.
    [ -s "$dir/munge.key" ] || { head -c 1024 /dev/urandom >"$dir/munge.key"; chmod 0400 "$dir/munge.key"; }

    cat >"$dir/slurm.conf" <<EOF
ClusterName=llmflowtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for an hour: the test reads them back, and
# the Snakemake executor polls squeue (no accounting, so no sacct).
MinJobAge=3600
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=llmflow Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$dir/gres.conf" <<EOF
NodeName=$host Name=gpu File=$dir/dev/gpu[0-1]
EOF
    export SLURM_CONF=$dir/slurm.conf
    local link
    if [ -L /etc/slurm/slurm.conf ]; then
        link=$(readlink /etc/slurm/slurm.conf)
        if [ "$link" != "$dir/slurm.conf" ] && ! left_by_dead_cluster "$link"; then
            echo "cluster.sh: /etc/slurm/slurm.conf links to $link, a test cluster that is still running" >&2
            return 1
        fi
    elif [ -e /etc/slurm/slurm.conf ]; then
        echo "cluster.sh: /etc/slurm/slurm.conf exists and is not ours; another cluster is configured here" >&2
        return 1
    fi
    mkdir -p /etc/slurm
    ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf

    munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
    wait_pid "$dir/munged.pid"
    # Absolute -f paths: the daemons change directory when they start.
    slurmctld -f "$dir/slurm.conf"
    wait_pid "$dir/slurmctld.pid"
    slurmd -f "$dir/slurm.conf"
    wait_pid "$dir/slurmd.pid"
    for _ in $(seq 100); do
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        if sinfo -h -N -o %t 2>/dev/null | grep -qx idle; then
            echo "SLURM_CONF=$dir/slurm.conf"
            return 0
        fi
        sleep 0.2
    done
    echo "cluster.sh: node $host did not become idle: $(sinfo -N 2>&1 | tail -n +2)" >&2
    return 1
}

stop() {
    local dir pid
    dir=$(realpath -m "${1:?stop needs a state folder}")
    for daemon in slurmd slurmctld munged; do
        [ -s "$dir/$daemon.pid" ] || continue
        pid=$(cat "$dir/$daemon.pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/$daemon.pid"
    done
    if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$dir/slurm.conf" ]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

case $cmd in
    install) install ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: cluster.sh install|start DIR|stop DIR" >&2; exit 2 ;;
esac
