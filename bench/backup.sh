#!/usr/bin/env bash
# ferry backup benchmark (not a test): `ferry backup` into a repository — a first run, a run with
# nothing changed and a run after 1% of the files changed — from a folder (fs:) and from the S3
# sandbox, side by side with restic backing up the same folder.
#
#   bench/backup.sh [full|quick]      (default: full)
#
#   full    FILES=100000 files for fs: and restic, S3_FILES=100000 for the S3 sandbox
#   quick   a trial of the script: 2,000 files for both; prints only
#
# The tree: FILES files in nested folders (dNN/dN/dN/, 50 files each), sizes log-uniform from 1 to
# 64 KiB, incompressible pseudo-random content from SEED (bench/backuphelper.py gen). The S3
# sandbox (`ferry sandbox s3`: s3s-fs, with its own paged listing) serves a bucket made the same
# way with S3_FILES files: the first S3_FILES files of the tree. Before run 3, 1% of each changes: new content for 0.5% of the
# files, 0.25% added, 0.25% deleted. Each run, under /usr/bin/time, into its own repository:
#
#   ferry backup fs:TREE --repo R --json
#   restic backup TREE --json            (restic -r R, its cache in BENCH_DIR/restic-cache)
#   ferry backup s3://bench-tree --endpoint-url EP --repo R --json
#
# Recorded per run: wall time, ferry's counts (or restic's summary), the files new or rewritten
# in the repository (bytes, and which of them are the run's record: runs/<id>/ for ferry,
# snapshots/ for restic), the repository's du -sb and disk usage against the payload, CPU, peak
# RSS, and for S3 the sandbox's requests by operation (from s3s's debug log: FERRY_LOG for the
# sandbox only). restic cannot read S3, so the S3 table is ferry alone. Then the issue's
# targets, met or MISSED: a no-change run under 5% of the first run's wall time and under 1 MiB
# written beyond its run record; the repository within 5% of the payload.
#
# Needs restic (Debian: apt-get install restic) and /usr/bin/time; installs nothing.
#
# Environment:
#   FERRY=/path/to/ferry   binary to measure, also the sandbox (default: build it with cargo --release)
#   FERRY_LABEL=text       how the results name that binary (default: its path)
#   FILES, S3_FILES        the tree's and the bucket's files (defaults above)
#   SEED=1                 the content's seed
#   RESTIC=restic          the restic binary
#   BENCH_DIR=/tmp/ferry-backup-bench   tree, bucket, repositories, work files (on disk)
#   PORT=0                 the sandbox's port (0: a free one)
#   DOCS=docs/benchmarks.md  where to write the results (between the bench-backup markers).
#                          Default: that file for a full run at default sizes, nowhere otherwise;
#                          DOCS=path forces it, DOCS= disables it.
#   QUIET_MAX=15           before each run, wait until the CPUs are busy less than this percent of
#   QUIET_WAIT=60          one core, for at most QUIET_WAIT seconds (0: never; default 60, quick 5)
#   TIMEOUT=1800           seconds one run may take before the benchmark fails
#   KEEP=0                 1: keep the tree, bucket and repositories
#   PYTHON=python3
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
LOG_TAG=bench-backup
SERVER_NAME="the S3 sandbox"
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

bench_mode "$@"
if [[ $MODE == quick ]]; then
    FILES=${FILES:-2000} S3_FILES=${S3_FILES:-2000} QUIET_WAIT=${QUIET_WAIT:-5}
fi
FILES=${FILES:-100000}
S3_FILES=${S3_FILES:-100000}
SEED=${SEED:-1}
RESTIC=${RESTIC:-restic}
BENCH_DIR=${BENCH_DIR:-/tmp/ferry-backup-bench}
PORT=${PORT:-0}
QUIET_MAX=${QUIET_MAX:-15}
QUIET_WAIT=${QUIET_WAIT:-60}
TIMEOUT=${TIMEOUT:-1800}
KEEP=${KEEP:-0}
PYTHON=${PYTHON:-python3}
positive_ints FILES S3_FILES TIMEOUT
for v in SEED PORT QUIET_MAX QUIET_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
full=0
[[ $MODE == full && $FILES == 100000 && $S3_FILES == 100000 ]] && full=1
default_docs "$full"

# --- Tools (installs nothing) -----------------------------------------------------------------
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing: apt-get install time"
command -v "$RESTIC" >/dev/null || die "restic is missing: apt-get install restic"
need_tools timeout du find awk "$PYTHON"
PY=$("$PYTHON" -c 'import sys; print(sys.executable)')
HELPER=$here/backuphelper.py
RESTIC=$(command -v "$RESTIC")
resolve_ferry

# --- Work dirs, cleanup -----------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
WORK=$BENCH_DIR/work
TREE=$BENCH_DIR/tree
S3ROOT=$BENCH_DIR/s3root
BUCKET=bench-tree
REPOS=$BENCH_DIR/repos
RESTIC_CACHE=$BENCH_DIR/restic-cache
rm -rf "$WORK" "$TREE" "$S3ROOT" "$REPOS" "$RESTIC_CACHE"
mkdir -p "$WORK/runs" "$S3ROOT" "$REPOS"
# Every run uses the same binary even if another build replaces FERRY meanwhile (the target dir
# is shared): a private copy.
cp "$FERRY" "$WORK/ferry"
FERRY=$WORK/ferry

cleanup() {
    local rc=$?
    stop_server
    if [[ $KEEP != 1 ]]; then
        rm -rf "$WORK" "$TREE" "$S3ROOT" "$REPOS" "$RESTIC_CACHE"
        rmdir "$BENCH_DIR" 2>/dev/null || true
    else
        log "KEEP=1: the tree, bucket, repositories and run records are in $BENCH_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Only the sandbox's credentials (fixed test values, not secrets), nothing of the caller's AWS
# setup; restic's password is a fixed test value too.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AWS_|RESTIC_)' || true)
export AWS_ACCESS_KEY_ID=FERRYSANDBOXKEY AWS_SECRET_ACCESS_KEY=ferry-sandbox-secret-key-not-a-secret
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export RESTIC_PASSWORD=ferry-bench-not-a-secret

# --- The tree and the bucket ------------------------------------------------------------------
log "seeding the tree: $FILES files (seed $SEED)"
seeded=$("$PY" -B "$HELPER" gen "$TREE" "$FILES" "$SEED")
log "  ${seeded#* } bytes"
log "seeding the bucket: $S3_FILES files"
"$PY" -B "$HELPER" gen "$S3ROOT/$BUCKET" "$S3_FILES" "$SEED" >/dev/null

# s3s logs one `resolved route op=…` line per request at debug level: the requests of a run are
# the lines its run added to the sandbox's log.
log "starting the S3 sandbox: $FERRY sandbox s3 $S3ROOT"
FERRY_LOG='warn,s3s::ops=debug' start_sandbox s3 "$S3ROOT" --port "$PORT"
EP=http://$ADDR
log "S3 sandbox at $EP (pid $SERVER_PID)"

"$RESTIC" -r "$REPOS/restic" --cache-dir "$RESTIC_CACHE" init >"$WORK/restic-init.out" 2>&1 ||
    { cat "$WORK/restic-init.out" >&2; die "restic init failed"; }
# (restic init wrote config and keys: those bytes are not any run's)
"$PY" -B "$HELPER" written "$REPOS/restic" "$WORK/snap-restic-fs.json" "$WORK/restic-init.json"

# --- Measuring --------------------------------------------------------------------------------
# (quiet_gate, timed, timed_results, busy_ticks, pid_ticks, server_alive: bench/lib.sh)

# measure TOOL SOURCE RUN REPOSITORY PAYLOAD_ROOT -- COMMAND...: COMMAND under /usr/bin/time,
# then what it wrote into REPOSITORY (`HELPER written`), its size, and PAYLOAD_ROOT's files, into
# WORK/runs/SOURCE-TOOL-rRUN. A run that fails stops the benchmark.
measure() {
    local tool=$1 source=$2 run=$3 repository=$4 root=$5 dir b0 b1 s0=0 s1=0 l0=0 l1=0 files bytes
    shift 6
    dir=$WORK/runs/$source-$tool-r$run
    mkdir -p "$dir"
    quiet_gate
    if [[ $source == s3 ]]; then
        server_alive
        s0=$(pid_ticks "$SERVER_PID")
        l0=$(stat -c %s "$WORK/server.err")
    fi
    b0=$(busy_ticks)
    timed "$tool $source run $run" "$TIMEOUT" "$@"
    b1=$(busy_ticks)
    if [[ $source == s3 ]]; then
        s1=$(pid_ticks "$SERVER_PID")
        l1=$(stat -c %s "$WORK/server.err")
    fi
    timed_results
    cp "$WORK/stdout" "$dir/stdout"
    cp "$WORK/stderr" "$dir/stderr"
    "$PY" -B "$HELPER" written "$repository" "$WORK/snap-$tool-$source.json" "$dir/written.json"
    files=$("$PY" -B "$HELPER" payload "$root")
    read -r files bytes <<<"$files"
    {
        printf 'tool\t%s\nsource\t%s\nrun\t%s\n' "$tool" "$source" "$run"
        printf 'wall_ns\t%s\ncpu_s\t%s\nrss_kib\t%s\n' $((T1 - T0)) "$OWN" "$RSS"
        printf 'busy_ticks\t%s\nserver_ticks\t%s\nclk_tck\t%s\n' $((b1 - b0)) $((s1 - s0)) "$CLK_TCK"
        printf 'payload_files\t%s\npayload_bytes\t%s\n' "$files" "$bytes"
        printf 'du_sb\t%s\n' "$(du -sb "$repository" | cut -f1)"
        printf 'du_disk\t%s\n' "$(du -s --block-size=1 "$repository" | cut -f1)"
        [[ $source != s3 ]] || printf 'log_from\t%s\nlog_to\t%s\n' "$l0" "$l1"
    } >"$dir/meta.tsv"
    log "  $tool $source run $run: ${SECS}s, CPU ${OWN}s, peak RSS ${RSS} KiB"
}

# one_round RUN: run RUN of every tool.
one_round() {
    measure ferry fs "$1" "$REPOS/ferry-fs" "$TREE" -- \
        "$FERRY" backup "fs:$TREE" --repo "$REPOS/ferry-fs" --json
    measure restic fs "$1" "$REPOS/restic" "$TREE" -- \
        "$RESTIC" -r "$REPOS/restic" --cache-dir "$RESTIC_CACHE" backup --json "$TREE"
    measure ferry s3 "$1" "$REPOS/ferry-s3" "$S3ROOT/$BUCKET" -- \
        "$FERRY" backup "s3://$BUCKET" --endpoint-url "$EP" --repo "$REPOS/ferry-s3" --json
}

log "run 1: first"
one_round 1
log "run 2: no change"
one_round 2
log "changing 1% of the files (0.5% new content, 0.25% added, 0.25% deleted)"
fs_change=$("$PY" -B "$HELPER" change "$FILES" "$SEED" "$TREE")
s3_change=$("$PY" -B "$HELPER" change "$S3_FILES" "$SEED" "$S3ROOT/$BUCKET")
read -r fs_mod fs_add fs_del <<<"$fs_change"
read -r s3_mod s3_add s3_del <<<"$s3_change"
log "run 3: after 1% changed"
one_round 3
stop_server

# --- Report (bench_report: bench/lib.sh) ------------------------------------------------------
machine() { printf 'restic\t%s\n' "$("$RESTIC" version | head -n 1)"; }
config() {
    printf 'tree\t%s files in nested folders (dNN/dN/dN/, 50 a folder), 1–64 KiB log-uniform, incompressible pseudo-random content (seed %s); the S3 bucket: its first %s files\n' \
        "$FILES" "$SEED" "$S3_FILES"
    printf 'change\tfs %s modified, %s added, %s deleted; S3 %s modified, %s added, %s deleted\n' \
        "$fs_mod" "$fs_add" "$fs_del" "$s3_mod" "$s3_add" "$s3_del"
    printf 'server\tferry sandbox s3 (s3s-fs storage, its own paged listing) on 127.0.0.1, logging each request (s3s debug) to count them\n'
    printf 'command\tferry backup fs:TREE --repo R --json; restic -r R --cache-dir C backup --json TREE; ferry backup s3://%s --endpoint-url EP --repo R --json\n' "$BUCKET"
    printf 'title:fs\tFrom a folder — %s files (fs: and restic, the same tree)\n' "$FILES"
    printf 'title:s3\tFrom the S3 sandbox — %s objects (ferry only: restic cannot read S3)\n' "$S3_FILES"
    printf 'short:fs\tfs\nshort:s3\tS3\n'
    printf 'server log\t%s\n' "$WORK/server.err"
}
bench_report config machine
