#!/usr/bin/env bash
# selftest.sh - check the Cinder harness itself, Cinder only (no bakfs): for each codec, a full
# backup plus three incrementals of a volume file with an unaligned tail, then restores compared
# by sha256 against the source.
#
#   bash tests/interop/selftest.sh
#
# S3: uses BAKFS_S3_ENDPOINT_URL / BAKFS_S3_ACCESS_KEY / BAKFS_S3_SECRET_KEY if set, otherwise
# runs scripts/start-radosgw.sh (idempotent: reuses a running cluster) and uses what it prints.
# Optional: SELFTEST_CODECS (default "zlib bz2 zstd none"), BAKFS_S3_BUCKET (default
# bakfs-selftest), BAKFS_S3_OBJECT_SIZE (default 1 MiB so the small volume spans 6 objects).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HARNESS=$ROOT/tests/interop/cinder_harness.py
CODECS=${SELFTEST_CODECS:-"zlib bz2 zstd none"}
MIB=$((1024 * 1024))
SIZE=$((5 * MIB + 12345))   # not a multiple of the block (32 KiB) nor the object size

log() { printf '[selftest %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

CINDER_PYTHON=$(bash "$ROOT/scripts/cinder-venv.sh" | sed -n 's/^CINDER_PYTHON=//p' | tail -n1)
[ -x "$CINDER_PYTHON" ] || die "scripts/cinder-venv.sh printed no CINDER_PYTHON"

if [ -z "${BAKFS_S3_ENDPOINT_URL:-}" ]; then
  log "no BAKFS_S3_ENDPOINT_URL: starting radosgw with scripts/start-radosgw.sh"
  rgw_out=$(bash "$ROOT/scripts/start-radosgw.sh")
  BAKFS_S3_ENDPOINT_URL=$(sed -n 's/^S3_ENDPOINT=//p' <<<"$rgw_out")
  BAKFS_S3_ACCESS_KEY=$(sed -n 's/^S3_ACCESS_KEY=//p' <<<"$rgw_out")
  BAKFS_S3_SECRET_KEY=$(sed -n 's/^S3_SECRET_KEY=//p' <<<"$rgw_out")
fi
export BAKFS_S3_ENDPOINT_URL BAKFS_S3_ACCESS_KEY BAKFS_S3_SECRET_KEY
export BAKFS_S3_BUCKET=${BAKFS_S3_BUCKET:-bakfs-selftest}
export BAKFS_S3_OBJECT_SIZE=${BAKFS_S3_OBJECT_SIZE:-$MIB}
log "S3 endpoint $BAKFS_S3_ENDPOINT_URL, bucket $BAKFS_S3_BUCKET"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bakfs-selftest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# edit FILE OP...: deterministic volume contents and changes.
#   make SIZE       text | random | zeros | random, ending in an unaligned tail
#   rand OFF LEN S  overwrite with seeded random bytes
#   zero OFF LEN    overwrite with zeros
edit() {
  python3 - "$@" <<'PY'
import random
import sys

path, op, *args = sys.argv[1:]
nums = [int(a) for a in args]
if op == "make":
    (size,) = nums
    mib = 1 << 20
    text = b"".join(b"line %07d of a compressible volume\n" % i for i in range(40000))[:mib]
    rng = random.Random(1)
    data = text + rng.randbytes(2 * mib) + bytes(mib)
    data += rng.randbytes(size - len(data))
    with open(path, "wb") as f:
        f.write(data)
    sys.exit(0)
with open(path, "r+b") as f:
    offset, length = nums[0], nums[1]
    f.seek(offset)
    if op == "rand":
        f.write(random.Random(nums[2]).randbytes(length))
    elif op == "zero":
        f.write(bytes(length))
    else:
        sys.exit(f"unknown op {op}")
PY
}

sha() { sha256sum "$1" | cut -d' ' -f1; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# codecs_used BACKUP_JSON...: the set of "compression" values in those backups' _metadata,
# read with boto3 from the Cinder venv (the harness never reads objects itself).
codecs_used() {
  "$CINDER_PYTHON" - "$@" <<'PY'
import json
import os
import sys

import boto3

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["BAKFS_S3_ENDPOINT_URL"],
    aws_access_key_id=os.environ["BAKFS_S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["BAKFS_S3_SECRET_KEY"],
    region_name="us-east-1",
)
sse = {}
sse_key = os.environ.get("BAKFS_S3_SSE_CUSTOMER_KEY")
sse_algorithm = os.environ.get("BAKFS_S3_SSE_CUSTOMER_ALGORITHM")
if sse_key and sse_algorithm:  # Cinder uses SSE-C only when both are set
    sse = {"SSECustomerKey": sse_key, "SSECustomerAlgorithm": sse_algorithm}
seen = set()
for path in sys.argv[1:]:
    with open(path) as f:
        backup = json.load(f)
    key = backup["prefix"] + "_metadata"
    body = s3.get_object(Bucket=backup["container"], Key=key, **sse)["Body"]
    for entry in json.loads(body.read())["objects"]:
        seen.update(info["compression"] for info in entry.values())
print(" ".join(sorted(seen)))
PY
}

failures=0
for codec in $CODECS; do
  export BAKFS_S3_COMPRESSION=$codec
  dir=$WORK/$codec
  mkdir -p "$dir"
  vol=$dir/volume.img
  volume_id=$(cat /proc/sys/kernel/random/uuid)
  edit "$vol" make "$SIZE"

  chain="["
  parent_args=()
  declare -A state_sha=()
  ids=()
  for level in 0 1 2 3; do
    case $level in
      1) edit "$vol" rand 40000 100 11                       # inside block 1
         edit "$vol" rand $((MIB - 30000)) 70000 12 ;;       # across an object boundary
      2) edit "$vol" zero $((MIB + 7 * 32768)) $((512 * 1024)) ;;  # random data -> zeros
      3) edit "$vol" rand $((SIZE - 5)) 5 13                 # the short tail block
         edit "$vol" rand $((3 * MIB)) 1 14 ;;               # zeros -> data
    esac
    backup_id=$(cat /proc/sys/kernel/random/uuid)
    t0=$(now)
    "$CINDER_PYTHON" "$HARNESS" backup --volume-file "$vol" --volume-id "$volume_id" \
      --backup-id "$backup_id" --name "selftest $codec L$level" "${parent_args[@]}" \
      >"$dir/backup$level.json"
    prefix=$(field prefix <"$dir/backup$level.json")
    count=$(field object_count <"$dir/backup$level.json")
    log "$codec: level $level backup $backup_id: $count objects in $(elapsed "$t0") s"
    parent=null
    [ "$level" -gt 0 ] && parent="\"${ids[level - 1]}\""
    [ "$level" -gt 0 ] && chain+=","
    chain+="{\"backup_id\":\"$backup_id\",\"volume_id\":\"$volume_id\","
    chain+="\"prefix\":\"$prefix\",\"parent_id\":$parent}"
    parent_args=(--parent-id "$backup_id" --parent-prefix "$prefix")
    ids+=("$backup_id")
    state_sha[$level]=$(sha "$vol")
  done
  # Any order is accepted: hand the chain over newest first.
  python3 -c 'import json, sys; print(json.dumps(json.loads(sys.argv[1])[::-1]))' "$chain]" \
    >"$dir/chain.json"

  check() {  # check LABEL FILE EXPECTED_SHA
    if [ "$(sha "$2")" = "$3" ] && [ "$(stat -c %s "$2")" = "$SIZE" ]; then
      log "$codec: $1: OK"
    else
      log "FAIL: $codec: $1: sha256 or size differs"
      failures=$((failures + 1))
    fi
  }

  t0=$(now)
  "$CINDER_PYTHON" "$HARNESS" restore --volume-file "$dir/new.img" --chain "@$dir/chain.json" \
    --backup-id "${ids[3]}" --volume-is-new >/dev/null
  log "$codec: restore of level 3 into a new volume in $(elapsed "$t0") s"
  check "level 3, new volume" "$dir/new.img" "${state_sha[3]}"

  head -c "$SIZE" /dev/urandom >"$dir/existing.img"
  "$CINDER_PYTHON" "$HARNESS" restore --volume-file "$dir/existing.img" \
    --chain "@$dir/chain.json" --backup-id "${ids[3]}" >/dev/null
  check "level 3, existing volume full of garbage" "$dir/existing.img" "${state_sha[3]}"

  "$CINDER_PYTHON" "$HARNESS" restore --volume-file "$dir/level1.img" \
    --chain "@$dir/chain.json" --backup-id "${ids[1]}" --volume-is-new >/dev/null
  check "level 1, new volume" "$dir/level1.img" "${state_sha[1]}"

  used=$(codecs_used "$dir"/backup{0,1,2,3}.json)
  case $codec in
    none) want="none" ;;
    *) want="$codec" ;;
  esac
  if [[ " $used " == *" $want "* ]]; then
    log "$codec: compression values in _metadata: $used"
  else
    log "FAIL: $codec: compression values in _metadata are '$used', no '$want'"
    failures=$((failures + 1))
  fi
  # Clean up with Cinder's delete_backup, newest first as Cinder requires.
  for level in 3 2 1 0; do
    prefix=$(field prefix <"$dir/backup$level.json")
    count=$(field object_count <"$dir/backup$level.json")
    deleted=$("$CINDER_PYTHON" "$HARNESS" delete --backup-id "${ids[level]}" \
      --volume-id "$volume_id" --prefix "$prefix" |
      python3 -c 'import json, sys; print(len(json.load(sys.stdin)["deleted"]))')
    if [ "$deleted" != $((count + 2)) ]; then
      log "FAIL: $codec: deleting level $level removed $deleted objects, not $((count + 2))"
      failures=$((failures + 1))
    fi
  done
  log "$codec: chain deleted"
  unset state_sha
done

if [ "$failures" -gt 0 ]; then
  die "$failures check(s) failed"
fi
log "all codecs passed: $CODECS"
