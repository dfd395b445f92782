#!/usr/bin/env bash
# ferry Microsoft 365 benchmark (not a test): `ferry export m365:` of a sandbox tenant served by
# `ferry sandbox m365` on 127.0.0.1, with Outlook's published per-mailbox limits switched on.
#
#   bench/m365.sh [full|quick]      (default: full)
#
#   full    USERS=50 licensed users x MESSAGES=2000 messages (the first user also has an in-place
#           archive of 1000), FILES=100 OneDrive files per user plus one LARGE_MB=260 MiB file:
#           ~2 GiB of OneDrive (the exact figure is reported); a SharePoint site with 2 libraries
#   quick   a trial of the script: 5 users x 200 messages, 10 files, an 8 MiB file; prints only
#
# For every mail latency in LATENCIES and every --concurrency in CONCURRENCY, a fresh sandbox
# (so that its counters cover one export) serves the tenant with at most MAILBOX_CONCURRENCY
# requests in flight per mailbox and MAILBOX_REQUESTS per mailbox per sliding 10 minutes (more
# is answered 429 ApplicationThrottled with Retry-After), and `ferry export` takes everything
# into a fresh bag in BENCH_DIR under /usr/bin/time. Then the sandbox's counters
# (GET /_sandbox/stats) say how close ferry came to the limits. Printed per run: items, bytes,
# wall s, items/s, MB/s, CPU-seconds of ferry per 1,000 items, ferry's peak RSS, the sandbox's
# and everything else's CPU, the most requests in flight for one mailbox, the 429s sent for the
# limits, the most mailboxes busy at the same moment, the most requests one mailbox received.
# A run that fails, exports fewer items than the tenant holds, or breaks a limit stops it.
#
# Environment:
#   FERRY=/path/to/ferry   binary to measure, also the server (default: build it with cargo --release)
#   FERRY_LABEL=text       how the results name that binary (default: its path)
#   USERS, MESSAGES, FILES, LARGE_MB      the tenant (defaults above)
#   LATENCIES="0 20"       added latency of every mail request in ms (a real Exchange server
#                          answers in tens of ms; 0 measures ferry itself)
#   CONCURRENCY="8 32"     ferry export --concurrency values (8 is ferry's default)
#   MAILBOX_CONCURRENCY=4  the sandbox's limit per mailbox (Outlook's published limit: 4)
#   MAILBOX_REQUESTS=10000 the sandbox's limit per mailbox per 10 minutes (published: 10,000)
#   BENCH_DIR=/tmp/ferry-m365-bench      where the bags go (on disk; the results say which fs)
#   DOCS=docs/benchmarks.md  where to write the results (between the bench-m365 markers).
#                          Default: that file for a full run at default sizes, nowhere otherwise;
#                          DOCS=path forces it, DOCS= disables it.
#   QUIET_MAX=15           before each measurement, wait until the CPUs are busy less than this
#   QUIET_WAIT=300         percent of one core, for at most QUIET_WAIT seconds (0: never wait;
#                          default 300 for a full run, 10 for quick)
#   VERIFY=0               1: also run `ferry verify` on each bag (untimed, reported)
#   TIMEOUT=1800           seconds one export may take before the benchmark fails
#   KEEP=0                 1: keep the last bag
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
LOG_TAG=bench-m365
SERVER_NAME="the sandbox"
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

mode=full
for arg in "$@"; do
    case $arg in
        full | quick) mode=$arg ;;
        -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown mode '$arg' (full, quick)" ;;
    esac
done
if [[ $mode == quick ]]; then
    USERS=${USERS:-5} MESSAGES=${MESSAGES:-200} FILES=${FILES:-10} LARGE_MB=${LARGE_MB:-8}
fi
USERS=${USERS:-50}
MESSAGES=${MESSAGES:-2000}
FILES=${FILES:-100}
LARGE_MB=${LARGE_MB:-260}
LATENCIES=${LATENCIES:-0 20}
CONCURRENCY=${CONCURRENCY:-8 32}
MAILBOX_CONCURRENCY=${MAILBOX_CONCURRENCY:-4}
MAILBOX_REQUESTS=${MAILBOX_REQUESTS:-10000}
BENCH_DIR=${BENCH_DIR:-/tmp/ferry-m365-bench}
QUIET_MAX=${QUIET_MAX:-15}
VERIFY=${VERIFY:-0}
TIMEOUT=${TIMEOUT:-1800}
KEEP=${KEEP:-0}
PYTHON=${PYTHON:-python3}

for v in USERS MESSAGES FILES LARGE_MB MAILBOX_CONCURRENCY MAILBOX_REQUESTS QUIET_MAX TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
((USERS > 0 && MESSAGES > 0)) || die "USERS and MESSAGES must be positive"
for v in $LATENCIES $CONCURRENCY; do [[ $v =~ ^[0-9]+$ ]] || die "LATENCIES and CONCURRENCY are integers"; done

default_size=0
[[ $USERS == 50 && $MESSAGES == 2000 && $FILES == 100 && $LARGE_MB == 260 && $MAILBOX_CONCURRENCY == 4 && $MAILBOX_REQUESTS == 10000 ]] && default_size=1
full_run=0
((default_size)) && [[ $mode == full ]] && full_run=1
default_docs "$full_run"
if ((default_size)); then QUIET_WAIT=${QUIET_WAIT:-300}; else QUIET_WAIT=${QUIET_WAIT:-10}; fi
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_WAIT is an integer"

# --- Tools ------------------------------------------------------------------------------------
[[ -x /usr/bin/time ]] || apt_install time
need_tools timeout curl awk "$PYTHON"
PY=$("$PYTHON" -c 'import sys; print(sys.executable)')

resolve_ferry

# --- Work dirs, cleanup -----------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
WORK=$BENCH_DIR/work
DEST=$BENCH_DIR/bag
rm -rf "$WORK" "$DEST"
mkdir -p "$WORK/runs"

cleanup() {
    local rc=$?
    stop_server
    if [[ $KEEP != 1 ]]; then
        rm -rf "$DEST" "$WORK"
        rmdir "$BENCH_DIR" 2>/dev/null || true
    else
        log "KEEP=1: the last bag is in $DEST, the run records in $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Measuring --------------------------------------------------------------------------------
# (busy_ticks, pid_ticks, quiet_gate, fresh_dest, server_alive, server_address: bench/lib.sh)
fresh() { fresh_dest "$DEST" "$BENCH_DIR"; }

# start_server LATENCY_MS: a fresh sandbox; sets SERVER_PID, ADDR.
start_server() {
    "$FERRY" sandbox m365 --users "$USERS" --messages "$MESSAGES" --files "$FILES" \
        --large-file-mb "$LARGE_MB" --mail-latency-ms "$1" \
        --mailbox-concurrency "$MAILBOX_CONCURRENCY" --mailbox-requests-per-10min "$MAILBOX_REQUESTS" \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    server_address '127\.0\.0\.1:[0-9]*' 600
    ADDR=$ADDRESS
}
stats() { curl -sf "http://$ADDR/_sandbox/stats"; }

export FERRY_M365_CLIENT_SECRET=ferry-sandbox-graph-secret-not-a-secret
CLIENT_ID=11111111-2222-3333-4444-555555555555
TENANT=contoso.onmicrosoft.com

# measure LATENCY CONCURRENCY: one export against a fresh sandbox; its records go in WORK/runs.
measure() {
    local lat=$1 conc=$2 dir t0 t1 b0 b1 s0 s1 rc
    dir=$WORK/runs/lat$lat-c$conc
    mkdir -p "$dir"
    fresh
    log "mail latency ${lat} ms, --concurrency $conc: seeding the sandbox"
    start_server "$lat"
    stats >"$dir/before.json" || die "cannot read http://$ADDR/_sandbox/stats"
    quiet_gate
    server_alive
    log "  exporting"
    s0=$(pid_ticks "$SERVER_PID")
    b0=$(busy_ticks)
    t0=$(date +%s%N)
    rc=0
    /usr/bin/time -f '%e %U %S %M' -o "$dir/time" timeout "$TIMEOUT" \
        "$FERRY" export "m365:$TENANT" --client-id "$CLIENT_ID" \
        --graph-endpoint "http://$ADDR/v1.0" --login-endpoint "http://$ADDR/login" \
        --to "$DEST" --concurrency "$conc" --json >"$dir/summary.json" 2>"$dir/stderr" || rc=$?
    t1=$(date +%s%N)
    b1=$(busy_ticks)
    s1=$(pid_ticks "$SERVER_PID")
    server_alive
    stats >"$dir/after.json" || die "cannot read http://$ADDR/_sandbox/stats"
    grep VmHWM "/proc/$SERVER_PID/status" | awk '{ print $2 }' >"$dir/server_rss"
    stop_server
    if ((rc != 0)); then
        tail -n 20 "$dir/stderr" >&2
        die "ferry export exited with $rc (latency $lat, concurrency $conc)"
    fi
    cp "$DEST/ferry/run.json" "$dir/run.json"
    printf 'latency_ms\t%s\nconcurrency\t%s\nwall_ns\t%s\nbusy_ticks\t%s\nserver_ticks\t%s\nclk_tck\t%s\n' \
        "$lat" "$conc" $((t1 - t0)) $((b1 - b0)) $((s1 - s0)) "$CLK_TCK" >"$dir/meta.tsv"
    if [[ $VERIFY == 1 ]]; then
        log "  ferry verify (untimed)"
        local v0 v1
        v0=$(date +%s%N)
        "$FERRY" verify "$DEST" >"$dir/verify.out" 2>&1 || { tail -n 20 "$dir/verify.out" >&2; die "ferry verify failed"; }
        v1=$(date +%s%N)
        printf 'verify_ns\t%s\n' $((v1 - v0)) >>"$dir/meta.tsv"
    fi
    "$PY" -B "$here/m365helper.py" check "$dir" || die "the run broke a limit or missed items (see above)"
}

for lat in $LATENCIES; do
    for conc in $CONCURRENCY; do
        measure "$lat" "$conc"
    done
done
fresh

# --- Report -----------------------------------------------------------------------------------
machine=$WORK/machine.tsv
{
    machine_tsv
} >"$machine"
config=$WORK/config.tsv
{
    printf 'mode\t%s\n' "$mode"
    date_tsv
    printf 'tenant\t%s users x %s messages, %s OneDrive files per user + one %s MiB file\n' "$USERS" "$MESSAGES" "$FILES" "$LARGE_MB"
    printf 'server\tferry sandbox m365 on 127.0.0.1, --mailbox-concurrency %s --mailbox-requests-per-10min %s\n' "$MAILBOX_CONCURRENCY" "$MAILBOX_REQUESTS"
    printf 'destination\t%s on %s\n' "$BENCH_DIR" "$(fstype "$BENCH_DIR")"
    quiet_gate_tsv
    printf 'command\tferry export m365:%s --client-id ID --graph-endpoint EP/v1.0 --login-endpoint EP/login --to DEST --concurrency N --json\n' "$TENANT"
} >"$config"
echo
"$PY" -B "$here/m365helper.py" report "$WORK/runs" "$machine" "$config" ${DOCS:+"$DOCS"}
[[ -n $DOCS ]] || log "results not written to a file (DOCS unset: not a full run at default sizes)"
