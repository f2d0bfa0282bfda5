#!/usr/bin/env bash
# A real single-node SLURM cluster on one Debian box, for tests, CI and trying the SLURM path.
#
#   slurm/cluster.sh start     install slurm-wlm + munge (+ slurmdbd + MariaDB) if missing, write
#                              the configs, start the daemons, wait until the node is idle
#   slurm/cluster.sh stop      stop every daemon this script started (by PID file)
#   slurm/cluster.sh status    daemons and `sinfo`
#
# Root only, no systemd needed. `start` is idempotent: with the node already idle it returns
# at once. Settings (environment):
#   SLURM_STATE=/tmp/tpo-slurm   state, spool, logs, PID files
#   WITH_DBD=1                   also run MariaDB + slurmdbd, so that `sacct` works (submitit polls it)
#   CRED_EXPIRE=15               seconds a requeued job waits before it may start again (SLURM: 120)
#   KILL_WAIT=10                 seconds between SIGTERM and SIGKILL when a job is cancelled/requeued (SLURM: 30)
#   FAKE_GPUS=2                  GRES gpu devices to advertise (backed by /dev/null, /dev/zero, ...)
#   FORCE=1                      overwrite an /etc/slurm/slurm.conf this script did not write
# See slurm/README.md for what each setting is for and what goes wrong without it.
set -euo pipefail

STATE=${SLURM_STATE:-/tmp/tpo-slurm}
WITH_DBD=${WITH_DBD:-1}
CRED_EXPIRE=${CRED_EXPIRE:-15}
KILL_WAIT=${KILL_WAIT:-10}
FAKE_GPUS=${FAKE_GPUS:-2}
CONF=/etc/slurm/slurm.conf
MARK="# written by tpo-sweeps slurm/cluster.sh"
PIDFILES=("$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/slurmdbd.pid" /run/mysqld/mysqld.pid /run/munge/munged.pid)

say() { printf '[slurm/cluster.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

node_idle() { timeout 5 sinfo -h -o %t 2>/dev/null | grep -Eqx 'idle|mix|alloc'; }

wait_for() {  # wait_for <seconds> <what> <command...>
  local n=$1 what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what did not come up within ${n}s (logs: $STATE/log)"
}

install_packages() {
  local pkgs="slurm-wlm munge" missing=""
  [ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  say "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d: Debian's postinst scripts must not try to start services (there is no init)
  local rcd=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    rcd=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > "$rcd"; chmod +x "$rcd"
  fi
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  [ -z "$rcd" ] || rm -f "$rcd"
}

write_configs() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ "${FORCE:-0}" != 1 ]; then
    die "$CONF exists and was not written by this script; set FORCE=1 to replace it"
  fi
  local ncpu mem_mb acct gres_files=""
  ncpu=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  if [ "$WITH_DBD" = 1 ]; then
    acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost'
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  mkdir -p /etc/slurm
  cat > "$CONF" <<EOF
$MARK (edits are overwritten by 'start')
ClusterName=tpo
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
KillWait=$KILL_WAIT
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
# test every pending job every 2 s (defaults 60 s / 30 s): a requeued job then starts as soon
# as its cred_expire hold ends instead of at the next minute's scheduling pass
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # GRES files must be character devices; with TaskPlugin=task/none nothing is confined to them
  local devs=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty)
  [ "$FAKE_GPUS" -le ${#devs[@]} ] || die "FAKE_GPUS must be <= ${#devs[@]}"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    gres_files+="NodeName=localhost Name=gpu File=${devs[$i]}"$'\n'
  done
  printf '%s' "$gres_files" > /etc/slurm/gres.conf
}

start_munge() {
  mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
  wait_for 10 munged munge -n
}

start_dbd() {
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock >"$STATE/log/mariadb.log" 2>&1 &
    wait_for 30 MariaDB mariadb -e 'select 1'
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'tpo-slurm';
              CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > /etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=tpo-slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  [ -s "$STATE/slurmdbd.pid" ] && kill -0 "$(cat "$STATE/slurmdbd.pid")" 2>/dev/null || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
  sacctmgr -n show cluster format=cluster | grep -qw tpo || sacctmgr -i add cluster tpo >/dev/null
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
  command -v apt-get >/dev/null || die "needs a Debian/Ubuntu system (apt-get)"
  if command -v sinfo >/dev/null && node_idle; then say "already running"; sinfo; return 0; fi
  local t0=$SECONDS
  install_packages
  mkdir -p "$STATE"/{ctld,d,log}
  chown -R slurm:slurm "$STATE"
  write_configs
  start_munge
  [ "$WITH_DBD" = 1 ] && start_dbd
  [ -s "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null || slurmctld
  [ -s "$STATE/slurmd.pid" ] && kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null || slurmd -N localhost
  # a node drained in an earlier life stays drained in the saved state: resume it
  wait_for 30 slurmctld scontrol ping
  if timeout 5 sinfo -h -o %t | grep -Eq 'drain|down|inval'; then
    scontrol update nodename=localhost state=resume || true
  fi
  wait_for 30 "the node (idle)" node_idle
  say "up in $((SECONDS - t0)) s (state: $STATE)"
  sinfo
}

cmd_stop() {
  local pid f
  for f in "${PIDFILES[@]}"; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")   # read first: the daemons remove their own PID files on exit
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      say "stopped $(basename "$f" .pid) ($pid)"
    fi
  done
}

cmd_status() {
  local f
  for f in "${PIDFILES[@]}"; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
      echo "$(basename "$f" .pid): running ($(cat "$f"))"
    else
      echo "$(basename "$f" .pid): stopped"
    fi
  done
  command -v sinfo >/dev/null && timeout 5 sinfo || true
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
