# shellcheck shell=bash
# Shared by bench/run.sh, bench/s3.sh and bench/m365.sh: sourced, not run. Before sourcing it a
# script sets LOG_TAG (how its log lines start) and `repo` (the repository root); the helpers
# below read the script's settings (QUIET_MAX, QUIET_WAIT, WORK, SERVER_PID, SERVER_NAME, FERRY,
# FERRY_LABEL) when they are called.

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
