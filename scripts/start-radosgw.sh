#!/usr/bin/env bash
# start-radosgw.sh - bring up a minimal single-node Ceph cluster (1 mon + 1 OSD,
# no mgr) plus a RADOS Gateway (S3 API) on 127.0.0.1, from scratch, on Debian 12.
# bakfs's tests, demo and benchmark use it as their real S3 server: unlike moto it enforces
# Content-MD5, SSE-C, SigV4 credentials and conditional PUT (see docs/testing.md).
# Runs the daemons directly (no systemd needed), as root, everything under $RGW_DIR.
# A cluster whose daemons were killed (a reboot, a stopped sandbox) is restarted; one that does
# not serve again within a few minutes is replaced by a fresh one: it only holds test data.
#
#   sudo ./start-radosgw.sh            # install if needed, bootstrap or restart, print endpoint
#   sudo ./start-radosgw.sh stop       # stop daemons, keep data (a later start reuses it)
#   sudo ./start-radosgw.sh purge      # stop daemons and delete $RGW_DIR
#   sudo ./start-radosgw.sh status
#
# Environment (all optional):
#   RGW_DIR         state directory                    (default $HOME/.cache/bakfs/rgw)
#   RGW_PORT        S3 port on 127.0.0.1               (default 7480)
#   RGW_ACCESS_KEY  S3 access key                      (default bakfs-access-key)
#   RGW_SECRET_KEY  S3 secret key                      (default bakfs-secret-key-0123456789abcdef)
#   RGW_STORE       bluestore (file-backed, survives restarts) or memstore (RAM only;
#                   a restart wipes it and bootstraps a new cluster)        (default bluestore)
#   RGW_BLOCK_GB    size of the sparse bluestore block file / memstore cap  (default 16)
#   RGW_OSD_MEM_MB  osd_memory_target in MiB (bluestore cache etc.)         (default 1024)
#   RGW_NO_INSTALL  set to 1 to skip the apt-get step
# Ports (all on 127.0.0.1): mon 3300+6789 (fixed), OSD 6800-6807, S3 $RGW_PORT; so one cluster
# per machine at a time. cephx is off (auth none); S3 requests are still SigV4-authenticated.
set -euo pipefail

RGW_DIR=${RGW_DIR:-$HOME/.cache/bakfs/rgw}
RGW_PORT=${RGW_PORT:-7480}
RGW_ACCESS_KEY=${RGW_ACCESS_KEY:-bakfs-access-key}
RGW_SECRET_KEY=${RGW_SECRET_KEY:-bakfs-secret-key-0123456789abcdef}
RGW_STORE=${RGW_STORE:-bluestore}
RGW_BLOCK_GB=${RGW_BLOCK_GB:-16}
RGW_OSD_MEM_MB=${RGW_OSD_MEM_MB:-1024}
CONF=$RGW_DIR/ceph.conf
export CEPH_CONF=$CONF

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ceph_() { timeout 60 ceph -c "$CONF" "$@"; }

install_packages() {
  [ "${RGW_NO_INSTALL:-0}" = 1 ] && return 0
  if command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null &&
     command -v radosgw >/dev/null && command -v curl >/dev/null; then
    return 0
  fi
  log "installing ceph-mon ceph-osd radosgw (Debian 12: Ceph 16.2 pacific)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends ceph-mon ceph-osd radosgw curl
}

# A pid file names a live daemon only if that pid still runs a Ceph daemon: after a reboot or a
# killed sandbox the number may belong to an unrelated process. A zombie counts as gone.
pid_alive() {
  local pid comm stat
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] || return 1
  case $comm in ceph-mon|ceph-osd|radosgw) return 0 ;; *) return 1 ;; esac
}

write_conf() {
  local fsid=$1
  mkdir -p "$RGW_DIR"/{mon,osd,run,log,rgw}
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = $RGW_DIR/keyring
run_dir = $RGW_DIR/run
admin_socket = $RGW_DIR/run/\$name.asok
pid_file = $RGW_DIR/run/\$name.pid
log_file = $RGW_DIR/log/\$name.log
mon_data = $RGW_DIR/mon/\$cluster-\$id
osd_data = $RGW_DIR/osd/\$cluster-\$id
# one OSD: replica size 1, no host-level failure domain, small fixed PG counts
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
mon_allow_pool_delete = true
# commit map changes quickly: the first radosgw-admin call creates ~7 pools, one map change each
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
# quiet, small footprint
mon_data_avail_warn = 2
mon_data_avail_crit = 1
debug_ms = 0
log_to_stderr = false
err_to_stderr = false

[osd]
osd_objectstore = $RGW_STORE
bluestore_block_create = true
bluestore_block_size = $((RGW_BLOCK_GB * 1024 * 1024 * 1024))
bluestore_fsck_on_mount = false
memstore_device_bytes = $((RGW_BLOCK_GB * 1024 * 1024 * 1024))
osd_memory_target = $((RGW_OSD_MEM_MB * 1024 * 1024))
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_max_object_size = 134217728

[client.rgw.a]
# radosgw defaults ms_mon_client_mode to 'secure', impossible with auth=none
ms_mon_client_mode = crc
client_mount_timeout = 60
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw_data = $RGW_DIR/rgw
# allow SSE-C over plain http on loopback
rgw_crypt_require_ssl = false
rgw_enable_usage_log = false
rgw_thread_pool_size = 64
EOF
}

start_mon() {
  pid_alive "$RGW_DIR/run/mon.a.pid" && return 0
  log "starting ceph-mon"
  ceph-mon -c "$CONF" -i a
}

start_osd() {
  pid_alive "$RGW_DIR/run/osd.0.pid" && return 0
  log "starting ceph-osd ($RGW_STORE)"
  ceph-osd -c "$CONF" -i 0
}

start_rgw() {
  pid_alive "$RGW_DIR/run/client.rgw.a.pid" && return 0
  log "starting radosgw on 127.0.0.1:$RGW_PORT"
  radosgw -c "$CONF" -n client.rgw.a
}

osd_state() { timeout 10 ceph -c "$CONF" daemon osd.0 status 2>/dev/null | sed -n 's/.*"state": "\(.*\)".*/\1/p'; }

# The OSD's own state, not the osdmap: after an unclean stop the map still shows the dead
# instance as up until the monitor learns otherwise.
wait_osd_up() {
  local i
  for i in $(seq 1 "${1:-240}"); do
    [ "$(osd_state)" = active ] && return 0
    pid_alive "$RGW_DIR/run/osd.0.pid" || { [ "$i" -gt 20 ] && { log "ceph-osd exited"; return 1; }; }
    sleep 0.25
  done
  return 1
}

# On a restart after an unclean stop (killed daemons, a reboot), the osdmap still lists the dead
# OSD instance as up. A booting OSD that must first report its fullness (a nearly full store)
# is then ignored by the monitor until that stale entry times out, 15 min later. Marking the
# dead instance down first lets the new one boot at once.
mark_dead_osd_down() {
  [[ "$(ceph_ osd dump 2>/dev/null)" == *$'\nosd.0 up '* ]] || return 0
  log "marking the previous (dead) osd.0 instance down"
  ceph_ osd down 0 >/dev/null 2>&1 || true
}

# Without a mgr nothing reports usage; the OSD knows. Warn before the store refuses writes.
warn_if_nearly_full() {
  local block=$RGW_DIR/osd/ceph-0/block allocated used
  [ -f "$block" ] || return 0  # memstore
  allocated=$(timeout 10 ceph -c "$CONF" daemon osd.0 perf dump 2>/dev/null |
      sed -n 's/.*"bluestore_allocated": \([0-9]*\).*/\1/p') || return 0
  [ -n "$allocated" ] || return 0
  used=$((100 * allocated / $(stat -c %s "$block")))
  if [ "$used" -ge 75 ]; then
    log "WARNING: the S3 test cluster is ${used}% full (it refuses writes at 95%); delete old buckets or run '$0 purge'"
  fi
}

wait_rgw() {
  local i
  for i in $(seq 1 240); do
    if curl -s -o /dev/null "http://127.0.0.1:$RGW_PORT/"; then return 0; fi
    pid_alive "$RGW_DIR/run/client.rgw.a.pid" || { [ "$i" -gt 20 ] && die "radosgw exited; see $RGW_DIR/log/client.rgw.a.log"; }
    sleep 0.5
  done
  die "radosgw not answering on port $RGW_PORT; see $RGW_DIR/log/client.rgw.a.log"
}

bootstrap() {
  local fsid osd_uuid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  log "bootstrapping new cluster in $RGW_DIR (fsid $fsid)"
  write_conf "$fsid"
  ceph-authtool --create-keyring "$RGW_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$RGW_DIR/keyring" --gen-key -n client.admin \
      --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  monmaptool --create --clobber --fsid "$fsid" \
      --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' "$RGW_DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$RGW_DIR/monmap" --keyring "$RGW_DIR/keyring"
  start_mon
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  ceph_ osd new "$osd_uuid" >/dev/null
  mkdir -p "$RGW_DIR/osd/ceph-0"
  log "mkfs osd.0 ($RGW_STORE, ${RGW_BLOCK_GB} GiB sparse)"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$RGW_DIR/log/osd-mkfs.log" 2>&1 ||
      { cat "$RGW_DIR/log/osd-mkfs.log" >&2; die "osd mkfs failed"; }
  start_osd
  wait_osd_up || die "osd.0 did not become active; see $RGW_DIR/log/osd.0.log"
  touch "$RGW_DIR/.bootstrapped"
}

ensure_user() {
  local out
  if timeout 60 radosgw-admin -c "$CONF" user info --uid=bakfs >/dev/null 2>&1; then return 0; fi
  log "creating S3 user 'bakfs'"
  out=$(timeout 120 radosgw-admin -c "$CONF" user create --uid=bakfs --display-name="bakfs test user" \
      --access-key="$RGW_ACCESS_KEY" --secret-key="$RGW_SECRET_KEY" 2>&1 >/dev/null) ||
      { log "radosgw-admin user create failed (exit $?): ${out:-no output (timed out?)}"; return 1; }
}

# Start the daemons of an existing cluster; false if it does not serve within a few minutes.
restart_existing() {
  start_mon
  pid_alive "$RGW_DIR/run/osd.0.pid" || mark_dead_osd_down
  start_osd
  wait_osd_up 240 || { log "osd.0 did not become active (state: $(osd_state))"; return 1; }
  ensure_user
}

stop_all() {
  local n p pid
  for n in client.rgw.a osd.0 mon.a; do
    p=$RGW_DIR/run/$n.pid
    if pid_alive "$p"; then
      pid=$(cat "$p")
      log "stopping $n (pid $pid)"
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$p"
  done
}

cmd=${1:-start}
case $cmd in
  start)
    [ "$(id -u)" = 0 ] || die "run as root"
    t0=$(date +%s.%N)
    install_packages
    if [ -f "$RGW_DIR/.bootstrapped" ] && [ "$RGW_STORE" = memstore ] && ! pid_alive "$RGW_DIR/run/osd.0.pid"; then
      # a restarted memstore OSD comes back with its PGs stuck: memstore is for throw-away clusters only
      log "memstore OSD is not running: data is gone, bootstrapping a fresh cluster"
      stop_all; rm -rf "$RGW_DIR"
    fi
    if [ -f "$RGW_DIR/.bootstrapped" ] && ! restart_existing; then
      # The cluster is the tests' throw-away S3 server: one that cannot come back is replaced.
      log "the cluster in $RGW_DIR did not come back (see $RGW_DIR/log); replacing it with a fresh one (its S3 data is lost)"
      stop_all; rm -rf "$RGW_DIR"
    fi
    if [ ! -f "$RGW_DIR/.bootstrapped" ]; then
      rm -rf "$RGW_DIR"; mkdir -p "$RGW_DIR"
      bootstrap
      ensure_user || die "could not create the S3 user; see $RGW_DIR/log"  # also creates the rgw pools
    fi
    start_rgw
    wait_rgw
    warn_if_nearly_full
    t1=$(date +%s.%N)
    log "ready in $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s"
    echo "S3_ENDPOINT=http://127.0.0.1:$RGW_PORT"
    echo "S3_ACCESS_KEY=$RGW_ACCESS_KEY"
    echo "S3_SECRET_KEY=$RGW_SECRET_KEY"
    echo "S3_REGION=us-east-1"
    echo "RGW_PIDS=$(cat "$RGW_DIR"/run/{mon.a,osd.0,client.rgw.a}.pid | paste -sd,)"
    ;;
  stop)  stop_all ;;
  purge) stop_all; rm -rf "$RGW_DIR"; log "removed $RGW_DIR" ;;
  status)
    for n in mon.a osd.0 client.rgw.a; do
      if pid_alive "$RGW_DIR/run/$n.pid"; then echo "$n running (pid $(cat "$RGW_DIR/run/$n.pid"))"; else echo "$n stopped"; fi
    done
    pid_alive "$RGW_DIR/run/mon.a.pid" && ceph_ -s || true
    ;;
  *) die "usage: $0 [start|stop|purge|status]" ;;
esac
