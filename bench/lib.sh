# shellcheck shell=bash
# Shared by bench/run.sh, bench/s3.sh, bench/m365.sh, bench/google.sh and bench/backup.sh:
# sourced, not run. Before sourcing it a script sets LOG_TAG (how its log lines start) and `repo`
# (the repository root); the helpers below read the script's settings (QUIET_MAX, QUIET_WAIT,
# WORK, SERVER_PID, SERVER_NAME, FERRY, FERRY_LABEL) when they are called.

CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$LOG_TAG" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# usage SCRIPT: SCRIPT's header comment (line 2 up to `set -euo`), which is its --help.
usage() { sed -n '2,/^set -euo/p' "$1" | sed '$d; s/^# \{0,1\}//'; }

# positive_ints VAR...: dies unless every VAR holds a positive integer.
positive_ints() {
    local v
    for v in "$@"; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
    done
}

# default_docs FULL: unless DOCS is set (even to nothing), DOCS is docs/benchmarks.md when FULL
# is 1 (a full run), and nothing otherwise.
default_docs() {
    if [[ -z ${DOCS+x} ]]; then
        # shellcheck disable=SC2154 # repo: set by the script that sources this file
        if (($1)); then DOCS=$repo/docs/benchmarks.md; else DOCS=; fi
    fi
}

# --- Tools ------------------------------------------------------------------------------------
# need_tools TOOL...: dies unless every TOOL is on the PATH.
need_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || die "$t is missing"
    done
}

# apt_install PACKAGE...: installs them with apt-get (as root; otherwise dies saying so).
apt_install() {
    ((EUID == 0)) || die "$* missing: apt-get install -y $*"
    log "installing $* (apt-get)"
    if ! apt-get install -y -q "$@" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q "$@" >/dev/null || die "apt-get install $* failed"
    fi
}

# resolve_ferry: without FERRY, builds ferry (release) from the work tree and says so in
# FERRY_LABEL; then FERRY is the binary's resolved path and FERRY_LABEL names it.
resolve_ferry() {
    local commit
    if [[ -z ${FERRY:-} ]]; then
        log "building ferry (release)"
        (cd "$repo" && CARGO_TARGET_DIR=$HOME/.cache/ferry-target cargo build --release -q -p ferry-cli)
        FERRY=$HOME/.cache/ferry-target/release/ferry
        if commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
            FERRY_LABEL="built from the work tree at $commit"
            git -C "$repo" diff --quiet HEAD -- crates connectors Cargo.toml Cargo.lock 2>/dev/null ||
                FERRY_LABEL+=", with uncommitted changes"
        fi
    fi
    FERRY_LABEL=${FERRY_LABEL:-FERRY=$FERRY}
    [[ -x $FERRY ]] || die "FERRY=$FERRY is not an executable"
    FERRY=$(readlink -f "$FERRY")
}

# --- Measuring --------------------------------------------------------------------------------
# The machine is shared (another developer's cargo may be running): before each measured
# command, wait until the CPUs are nearly idle, and record how much CPU went to anything else
# while it ran.
#
# busy_ticks: CPU ticks (1/CLK_TCK s) spent busy, all CPUs together, since boot.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# pid_ticks PID: user + system CPU ticks of that process so far.
pid_ticks() {
    local s f
    s=$(<"/proc/$1/stat")
    read -ra f <<<"${s##*) }" # fields from the 3rd (state) on: utime is the 14th, stime the 15th
    echo $((f[11] + f[12]))
}

# quiet_gate: waits (up to QUIET_WAIT seconds) until the CPUs are busy less than QUIET_MAX
# percent of one core over half a second. QUIET_WAIT=0 disables it.
quiet_gate() {
    ((QUIET_WAIT > 0)) || return 0
    local waited=0 a b pct said=0
    while :; do
        a=$(busy_ticks)
        sleep 0.5
        b=$(busy_ticks)
        pct=$(((b - a) * 2 * 100 / CLK_TCK))
        ((pct <= QUIET_MAX)) && break
        if ((waited >= QUIET_WAIT)); then
            log "  still busy (${pct}% of a core) after ${QUIET_WAIT}s: measuring anyway"
            break
        fi
        ((said)) || log "  waiting for other processes to quiet down (${pct}% of a core busy)"
        said=1
        sleep 2
        waited=$((waited + 3))
    done
}

# timed WHAT LIMIT COMMAND...: runs COMMAND (for at most LIMIT seconds, unless LIMIT is empty)
# under /usr/bin/time (peak RSS, CPU time into WORK/rss), its output into WORK/stdout and
# WORK/stderr; T0 and T1 are the clock (ns) around it. A command that fails stops the benchmark.
timed() {
    local what=$1 limit=$2
    shift 2
    local cmd=("$@")
    [[ -z $limit ]] || cmd=(timeout "$limit" "$@")
    T0=$(date +%s%N)
    if ! /usr/bin/time -f '%M %U %S' -o "$WORK/rss" "${cmd[@]}" >"$WORK/stdout" 2>"$WORK/stderr"; then
        log "FAILED: $what: $*"
        tail -n 20 "$WORK/stdout" "$WORK/stderr" >&2
        exit 1
    fi
    T1=$(date +%s%N)
}

# timed_results: after `timed`, SECS is its wall time in seconds, RSS its peak RSS in KiB and
# OWN its user + system CPU seconds.
# shellcheck disable=SC2034 # SECS, RSS, OWN: read by the script that sources this file
timed_results() {
    SECS=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
    read -r RSS OWN < <(tail -n 1 "$WORK/rss" | awk '{ print $1, $2 + $3 }')
}

fstype() { findmnt -n -o FSTYPE -T "$1" 2>/dev/null | head -n 1 || echo '?'; }

# fresh_dest DEST DIR: deletes DEST and, off a tmpfs, flushes DIR's filesystem, so that neither
# the deletion nor a previous run's dirty pages are written back while the next run is timed.
fresh_dest() {
    rm -rf "$1"
    [[ $(fstype "$2") == tmpfs ]] || sync -f "$2"
}

# --- A local server (SERVER_PID; SERVER_NAME says what it is; its output in WORK/server.*) ----
SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

server_alive() {
    kill -0 "$SERVER_PID" 2>/dev/null && return 0
    log "$SERVER_NAME has stopped:"
    tail -n 20 "$WORK/server.out" "$WORK/server.err" >&2
    exit 1
}

# server_address PATTERN TRIES: waits (TRIES x 0.1 s at most) for the server to print where it
# listens (PATTERN, a grep regex) and sets ADDRESS to it.
server_address() {
    local _
    ADDRESS=
    for _ in $(seq "$2"); do
        ADDRESS=$(grep -o -m 1 "$1" "$WORK/server.out" || true)
        [[ -n $ADDRESS ]] && break
        server_alive
        sleep 0.1
    done
    [[ -n $ADDRESS ]] || die "$SERVER_NAME did not say where it listens"
}

# --- Sandbox export benchmarks (bench/m365.sh, bench/google.sh) -------------------------------
# One `ferry export` per setting against a fresh `ferry sandbox` (so that its counters cover one
# export), each export's records in a folder of WORK/runs, checked and reported by the script's
# Python helper (HELPER; shared parts in bench/benchlib.py).

# bench_mode ARG...: MODE is `full` (the default) or `quick`; --help prints the script's header.
# shellcheck disable=SC2034 # MODE: read by the script that sources this file
bench_mode() {
    local arg
    MODE=full
    for arg in "$@"; do
        case $arg in
            full | quick) MODE=$arg ;;
            -h | --help) usage "$0"; exit 0 ;;
            *) die "unknown mode '$arg' (full, quick)" ;;
        esac
    done
}

# sandbox_settings FILES LARGE_MB ARG...: the mode (bench_mode ARG...) and the settings both
# benchmarks share, from the environment or by default: USERS=50, MESSAGES=2000, FILES, LARGE_MB (quick: 5, 200, 10 and
# 8), LATENCIES="0 20", CONCURRENCY="8 32", BENCH_DIR=/tmp/ferry-NAME-bench (LOG_TAG bench-NAME),
# QUIET_MAX=15, VERIFY=0, TIMEOUT=1800, KEEP=0, PYTHON=python3; dies unless they are numbers.
# DEFAULT_SIZE is 1 if USERS, MESSAGES, FILES and LARGE_MB are the full run's.
# shellcheck disable=SC2034 # read by the script that sources this file
sandbox_settings() {
    local v
    bench_mode "${@:3}"
    SERVER_NAME="the sandbox"
    if [[ $MODE == quick ]]; then
        USERS=${USERS:-5} MESSAGES=${MESSAGES:-200} FILES=${FILES:-10} LARGE_MB=${LARGE_MB:-8}
    fi
    USERS=${USERS:-50}
    MESSAGES=${MESSAGES:-2000}
    FILES=${FILES:-$1}
    LARGE_MB=${LARGE_MB:-$2}
    LATENCIES=${LATENCIES:-0 20}
    CONCURRENCY=${CONCURRENCY:-8 32}
    BENCH_DIR=${BENCH_DIR:-/tmp/ferry-${LOG_TAG#bench-}-bench}
    QUIET_MAX=${QUIET_MAX:-15}
    VERIFY=${VERIFY:-0}
    TIMEOUT=${TIMEOUT:-1800}
    KEEP=${KEEP:-0}
    PYTHON=${PYTHON:-python3}
    for v in FILES LARGE_MB QUIET_MAX TIMEOUT; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
    done
    positive_ints USERS MESSAGES
    for v in $LATENCIES $CONCURRENCY; do [[ $v =~ ^[0-9]+$ ]] || die "LATENCIES and CONCURRENCY are integers"; done
    DEFAULT_SIZE=0
    if [[ $USERS == 50 && $MESSAGES == 2000 && $FILES == "$1" && $LARGE_MB == "$2" ]]; then DEFAULT_SIZE=1; fi
}

# sandbox_docs: after sandbox_settings (and the script's own settings, which may set DEFAULT_SIZE
# to 0), DOCS (default_docs: the docs only for a full run at default settings) and QUIET_WAIT
# (default 300 s at default settings, 10 s otherwise).
sandbox_docs() {
    local full=0
    ((DEFAULT_SIZE)) && [[ $MODE == full ]] && full=1
    default_docs "$full"
    if ((DEFAULT_SIZE)); then QUIET_WAIT=${QUIET_WAIT:-300}; else QUIET_WAIT=${QUIET_WAIT:-10}; fi
    [[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_WAIT is an integer"
}

# bench_tools: /usr/bin/time, curl, python (PYTHON; PY is its full path) and FERRY (resolve_ferry).
bench_tools() {
    [[ -x /usr/bin/time ]] || apt_install time
    need_tools timeout curl awk "$PYTHON"
    PY=$("$PYTHON" -c 'import sys; print(sys.executable)')
    resolve_ferry
}

# bench_dirs: BENCH_DIR made absolute, WORK=BENCH_DIR/work (with runs/), DEST=BENCH_DIR/bag (the
# bag of the current export); both deleted on exit unless KEEP=1.
bench_dirs() {
    mkdir -p "$BENCH_DIR"
    BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
    WORK=$BENCH_DIR/work
    DEST=$BENCH_DIR/bag
    rm -rf "$WORK" "$DEST"
    mkdir -p "$WORK/runs"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
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

# start_sandbox ARG...: a fresh `ferry sandbox ARG...` in the background; sets SERVER_PID and
# ADDR (host:port, once it listens: after seeding).
start_sandbox() {
    "$FERRY" sandbox "$@" >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    server_address '127\.0\.0\.1:[0-9]*' 600
    ADDR=$ADDRESS
}

# sandbox_stats: the running sandbox's counters (ADDR: its host:port).
sandbox_stats() { curl -sf "http://$ADDR/_sandbox/stats"; }

# new_run LATENCY CONCURRENCY: RUN is a new folder for the records of that export (in WORK/runs;
# its meta.tsv says LATENCY and CONCURRENCY), and DEST is deleted.
new_run() {
    RUN=$WORK/runs/lat$1-c$2
    mkdir -p "$RUN"
    printf 'latency_ms\t%s\nconcurrency\t%s\n' "$1" "$2" >"$RUN/meta.tsv"
    fresh_dest "$DEST" "$BENCH_DIR"
}

# measure_export DIR COMMAND...: with a fresh sandbox running (SERVER_PID, ADDR) and DIR made by
# new_run, waits for the quiet gate, runs COMMAND (an export
# into DEST printing its --json summary) under /usr/bin/time, and records in DIR what
# benchlib.load_run reads; stops the sandbox; with VERIFY=1 runs `ferry verify` on the bag
# (untimed). Then `HELPER check DIR` (the bag still in DEST). A failed export or check stops the
# benchmark.
measure_export() {
    local dir=$1 t0 t1 b0 b1 s0 s1 rc=0
    shift
    sandbox_stats >"$dir/before.json" || die "cannot read http://$ADDR/_sandbox/stats"
    quiet_gate
    server_alive
    log "  exporting"
    s0=$(pid_ticks "$SERVER_PID")
    b0=$(busy_ticks)
    t0=$(date +%s%N)
    /usr/bin/time -f '%e %U %S %M' -o "$dir/time" timeout "$TIMEOUT" "$@" >"$dir/summary.json" 2>"$dir/stderr" || rc=$?
    t1=$(date +%s%N)
    b1=$(busy_ticks)
    s1=$(pid_ticks "$SERVER_PID")
    server_alive
    sandbox_stats >"$dir/after.json" || die "cannot read http://$ADDR/_sandbox/stats"
    grep VmHWM "/proc/$SERVER_PID/status" | awk '{ print $2 }' >"$dir/server_rss"
    stop_server
    if ((rc != 0)); then
        tail -n 20 "$dir/stderr" >&2
        die "ferry export exited with $rc ($(basename "$dir"))"
    fi
    cp "$DEST/ferry/run.json" "$dir/run.json"
    printf 'wall_ns\t%s\nbusy_ticks\t%s\nserver_ticks\t%s\nclk_tck\t%s\n' \
        $((t1 - t0)) $((b1 - b0)) $((s1 - s0)) "$CLK_TCK" >>"$dir/meta.tsv"
    if [[ $VERIFY == 1 ]]; then
        log "  ferry verify (untimed)"
        local v0 v1
        v0=$(date +%s%N)
        "$FERRY" verify "$DEST" >"$dir/verify.out" 2>&1 || { tail -n 20 "$dir/verify.out" >&2; die "ferry verify failed"; }
        v1=$(date +%s%N)
        printf 'verify_ns\t%s\n' $((v1 - v0)) >>"$dir/meta.tsv"
    fi
    "$PY" -B "$HELPER" check "$dir" || die "the run broke a limit or missed items (see above)"
}

# measure_matrix: the script's `measure LATENCY CONCURRENCY` for each of LATENCIES x CONCURRENCY;
# then DEST is deleted.
measure_matrix() {
    local lat conc
    for lat in $LATENCIES; do
        for conc in $CONCURRENCY; do
            measure "$lat" "$conc"
        done
    done
    fresh_dest "$DEST" "$BENCH_DIR"
}

# bench_report CONFIG [MACHINE]: WORK/machine.tsv (machine_tsv, then what the function MACHINE
# prints, if given: the peers' versions) and WORK/config.tsv (mode, date, what the function CONFIG
# prints, destination, quiet gate), then `HELPER report` of WORK/runs (into DOCS if set).
bench_report() {
    {
        machine_tsv
        [[ -z ${2:-} ]] || "$2"
    } >"$WORK/machine.tsv"
    {
        printf 'mode\t%s\n' "$MODE"
        date_tsv
        "$1"
        printf 'destination\t%s on %s\n' "$BENCH_DIR" "$(fstype "$BENCH_DIR")"
        quiet_gate_tsv
    } >"$WORK/config.tsv"
    echo
    "$PY" -B "$HELPER" report "$WORK/runs" "$WORK/machine.tsv" "$WORK/config.tsv" ${DOCS:+"$DOCS"}
    [[ -n $DOCS ]] || log "results not written to a file (DOCS unset: not a full run at default sizes)"
}

# --- Report -----------------------------------------------------------------------------------
cpu_model() { sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1; }
ram_gib() { awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo; }
ferry_tsv() { printf 'ferry\t%s (%s)\n' "$("$FERRY" --version)" "$FERRY_LABEL"; }

# machine_tsv: the machine lines every report starts with (CPU, cores, RAM, kernel, ferry).
machine_tsv() {
    printf 'CPU\t%s\n' "$(cpu_model)"
    printf 'cores\t%s\n' "$(nproc)"
    printf 'RAM\t%s GiB\n' "$(ram_gib)"
    printf 'kernel\t%s\n' "$(uname -r)"
    ferry_tsv
}

date_tsv() { printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"; }
quiet_gate_tsv() { printf 'quiet gate\twait for < %s%% of a core busy, at most %s s\n' "$QUIET_MAX" "$QUIET_WAIT"; }
