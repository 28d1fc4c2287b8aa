#!/usr/bin/env bash
# cinder-venv.sh - create (once) a separate virtualenv holding real OpenStack Cinder 29.0.0,
# used by tests/interop/cinder_harness.py to prove bakfs's format compatibility against
# Cinder's own S3 backup driver.
#
#   bash scripts/cinder-venv.sh        # create or reuse; last stdout line: CINDER_PYTHON=...
#
# Environment (optional):
#   BAKFS_CINDER_VENV   venv directory           (default $HOME/.cache/bakfs/cinder-venv)
#   BAKFS_CINDER_PY     interpreter for the venv (default python3; Cinder 29 needs >= 3.10)
#
# Idempotent: a marker file inside the venv records what was installed; when it matches, the
# script returns at once without touching the network. Progress goes to stderr.
set -euo pipefail

VENV=${BAKFS_CINDER_VENV:-$HOME/.cache/bakfs/cinder-venv}
BASE_PY=${BAKFS_CINDER_PY:-python3}
# Everything Cinder's S3 backup driver imports at run time: boto3 is only in Cinder's "s3" extra;
# zstd (python-zstd, `import zstd`, NOT `zstandard`) is a plain Cinder requirement already, named
# anyway because chunkeddriver needs it for backup_compression_algorithm=zstd.
REQUIREMENTS=('cinder[s3]==29.0.0' 'zstd>=1.5.0.0')
MARKER="$VENV/.bakfs-cinder-ready"
WANT="requirements=${REQUIREMENTS[*]}"

log() { printf '[cinder-venv %s] %s\n' "$(date +%T)" "$*" >&2; }
ready() { [ -f "$MARKER" ] && [ "$(<"$MARKER")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; }

if ready; then
  echo "CINDER_PYTHON=$VENV/bin/python"
  exit 0
fi

# Several test processes may call this at once on a fresh machine: one installs, the others
# wait for it and then find the marker.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if ready; then
  echo "CINDER_PYTHON=$VENV/bin/python"
  exit 0
fi

start=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV with $("$BASE_PY" --version 2>&1)"
  "$BASE_PY" -m venv "$VENV"
fi
rm -f "$MARKER"
log "installing ${REQUIREMENTS[*]}"
# pip may warn once per package about file:// index directories named in the machine's pip
# config that do not exist; drop those lines (only those) so real problems stay visible.
"$VENV/bin/python" -m pip install --quiet "${REQUIREMENTS[@]}" 2>&1 |
  { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
log "checking that the S3 backup driver imports"
# (-W: importing cinder imports eventlet, which warns that it is deprecated)
"$VENV/bin/python" -W "ignore::Warning:cinder" - >&2 <<'PY'
import zstd  # noqa: F401  (python-zstd, used by Cinder's zstd compressor)
import cinder.backup.drivers.s3  # noqa: F401
from importlib.metadata import version
assert version("cinder") == "29.0.0", version("cinder")
PY
printf '%s' "$WANT" >"$MARKER"
log "ready in $((SECONDS - start)) s"
echo "CINDER_PYTHON=$VENV/bin/python"
