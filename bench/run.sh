#!/usr/bin/env bash
# ferry benchmarks (not tests): ferry side by side with its peers, medians of RUNS runs.
#
#   bench/run.sh [all|hash|small|large|export]...      (default: all)
#
#   hash    SHA-256 of an in-memory buffer on every core (the machine's hashing limit),
#           openssl and coreutils sha256sum for context. Always measured: the verify tables
#           report throughput as a share of it.
#   small   verify a bag of SMALL_FILES x 4 KiB files in 100 folders: ferry verify vs
#           sha256sum -c split over PROCS processes vs bagit.py --validate --processes PROCS
#   large   the same on 4 x LARGE_MB MiB files
#   export  ferry export fs: (folder and .zip) vs cp -r, cp -r + sync, cp -r + sha256sum,
#           for both data sets, on the disk (BENCH_DIR) and on a tmpfs (TMPFS_DIR)
#
# Environment:
#   FERRY=/path/to/ferry   binary to measure (default: build it with cargo --release)
#   FERRY_LABEL=text       how the results name that binary (default: its path)
#   RUNS=3                 runs per measurement (median reported)
#   SMALL_FILES=20000      files in the small data set (4 KiB each)
#   LARGE_MB=512           size of each of the 4 large files, MiB
#   PROCS=<cores>          processes for the peers (sha256sum -c, bagit.py)
#   BENCH_DIR=/tmp/ferry-bench          work dir on the disk
#   TMPFS_DIR=/dev/shm/ferry-bench      work dir on a tmpfs (export comparison)
#   DOCS=docs/benchmarks.md  where to write the results (between the bench markers). Default:
#                          that file for a full run at full size, nowhere otherwise (stdout only);
#                          DOCS=path forces it, DOCS= disables it.
#   QUIET_MAX=15           before each measurement, wait until the CPUs are busy less than this
#   QUIET_WAIT=300         percent of one core, for at most QUIET_WAIT seconds (0: never wait)
#   KEEP=1                 keep the data sets (and reuse them next time) instead of deleting them
# The bash -c scripts below are single-quoted on purpose: they get their values as arguments.
# shellcheck disable=SC2016
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
LOG_TAG=bench
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

RUNS=${RUNS:-3}
SMALL_FILES=${SMALL_FILES:-20000}
SMALL_SIZE=4096
SMALL_FOLDERS=100
LARGE_FILES=4
LARGE_MB=${LARGE_MB:-512}
CORES=$(nproc)
PROCS=${PROCS:-$CORES}
BENCH_DIR=${BENCH_DIR:-/tmp/ferry-bench}
TMPFS_DIR=${TMPFS_DIR:-/dev/shm/ferry-bench}
KEEP=${KEEP:-0}
QUIET_MAX=${QUIET_MAX:-15}
QUIET_WAIT=${QUIET_WAIT:-300}

# --- Which sections ---------------------------------------------------------------------------
do_hash=0 do_small=0 do_large=0 do_export=0
[[ $# -eq 0 ]] && set -- all
for arg in "$@"; do
    case $arg in
        all) do_hash=1 do_small=1 do_large=1 do_export=1 ;;
        hash) do_hash=1 ;;
        small) do_small=1 ;;
        large) do_large=1 ;;
        export) do_export=1 ;;
        -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown section '$arg' (all, hash, small, large, export)" ;;
    esac
done
do_hash=1 # the verify tables need the limit; it takes a few seconds
sections="$*"

full_run=0
if [[ $do_small$do_large$do_export == 111 && $SMALL_FILES == 20000 && $LARGE_MB == 512 && $RUNS -ge 3 ]]; then
    full_run=1
fi
default_docs "$full_run"

positive_ints RUNS SMALL_FILES LARGE_MB
[[ $QUIET_MAX =~ ^[0-9]+$ && $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_MAX and QUIET_WAIT are integers"

# --- Tools ------------------------------------------------------------------------------------
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install -y time)"
need_tools sha256sum cp python3 bagit.py cargo

resolve_ferry

log "building bench/hashlimit (release)"
HASHLIMIT_TARGET=$HOME/.cache/ferry-bench-target
(cd "$here/hashlimit" && CARGO_TARGET_DIR=$HASHLIMIT_TARGET cargo build --release -q)
HASHLIMIT=$HASHLIMIT_TARGET/release/hashlimit

# --- Work dirs, cleanup -----------------------------------------------------------------------
mkdir -p "$BENCH_DIR" "$TMPFS_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
TMPFS_DIR=$(cd "$TMPFS_DIR" && pwd)
WORK=$BENCH_DIR/work
rm -rf "$WORK"
mkdir -p "$WORK"
RESULTS=$WORK/results.tsv
: >"$RESULTS"

cleanup() {
    local rc=$?
    # Export destinations never outlive the script; data sets only with KEEP=1.
    rm -rf "$BENCH_DIR/export" "$TMPFS_DIR/export"
    if [[ $KEEP != 1 ]]; then
        rm -rf "$BENCH_DIR/small" "$BENCH_DIR/large" "$BENCH_DIR/work" \
            "$TMPFS_DIR/small" "$TMPFS_DIR/large" "$TMPFS_DIR/hash"
        rmdir "$BENCH_DIR" "$TMPFS_DIR" 2>/dev/null || true
    else
        log "KEEP=1: data sets left in $BENCH_DIR and $TMPFS_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Measuring --------------------------------------------------------------------------------
# (busy_ticks, quiet_gate, timed: bench/lib.sh)
# measure SECTION CASE TOOL RUN BYTES FILES -- COMMAND...
# Runs COMMAND under /usr/bin/time (peak RSS, CPU time), wall time from the clock around it, and
# appends one line to RESULTS. A command that fails stops the benchmark.
measure() {
    local section=$1 case=$2 tool=$3 run=$4 bytes=$5 files=$6
    shift 7
    local b0 b1 secs rss own other
    quiet_gate
    b0=$(busy_ticks)
    timed "$tool ($case)" "" "$@"
    b1=$(busy_ticks)
    timed_results
    secs=$SECS rss=$RSS own=$OWN
    # CPU (in cores, on average) used by anything but the command: other processes, and kernel
    # threads (including writeback of what the command wrote).
    other=$(awk -v b="$((b1 - b0))" -v hz="$CLK_TCK" -v own="$own" -v s="$secs" \
        'BEGIN { o = (b / hz - own) / s; if (o < 0) o = 0; printf "%.2f", o }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$case" "$tool" "$run" "$secs" "$rss" "$bytes" "$files" "$other" >>"$RESULTS"
    log "  $tool: ${secs}s, peak RSS ${rss} KiB, other CPU ${other} cores"
}

# record_rate CASE LABEL RUN MBPS: a throughput for the hash section (the program times itself).
record_rate() {
    printf 'hash\t%s\t%s\t%s\t%s\t-\t0\t0\t-\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
    log "  $2: $4 MB/s"
}

warm() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }

# Deletes PATH (if any) and flushes the filesystem it was on, so that neither the deletion nor
# a previous run's dirty pages are written back while the next run is timed.
fresh() {
    rm -rf "$1"
    sync -f "$(dirname "$1")"
}

# --- Data sets --------------------------------------------------------------------------------
small_bytes=$((SMALL_FILES * SMALL_SIZE))
large_bytes=$((LARGE_FILES * LARGE_MB * 1024 * 1024))

# make_dataset NAME COUNT SIZE FOLDERS: BENCH_DIR/NAME/src (random content) and its bag
# BENCH_DIR/NAME/bag made by ferry export. Reused when the stamp matches (KEEP=1).
make_dataset() {
    local name=$1 count=$2 size=$3 folders=$4 dir=$BENCH_DIR/$1
    local stamp="$count $size $folders $FERRY"
    if [[ -f $dir/stamp && $(cat "$dir/stamp") == "$stamp" ]]; then
        log "data set $name: reusing $dir"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    log "data set $name: $count files of $size bytes"
    python3 -B "$here/helper.py" gen "$dir/src" "$count" "$size" "$folders"
    log "data set $name: making the bag with ferry export"
    "$FERRY" export "fs:$dir/src" --to "$dir/bag" -q >/dev/null
    sync -f "$dir"
    echo "$stamp" >"$dir/stamp"
}

need_small=$((do_small || do_export))
need_large=$((do_large || do_export))
((need_small)) && make_dataset small "$SMALL_FILES" "$SMALL_SIZE" "$SMALL_FOLDERS"
((need_large)) && make_dataset large "$LARGE_FILES" $((LARGE_MB * 1024 * 1024)) 1

# --- Hashing limit ----------------------------------------------------------------------------
if ((do_hash)); then
    log "hashing limit"
    mkdir -p "$TMPFS_DIR/hash"
    head -c $((256 * 1024 * 1024)) /dev/urandom >"$TMPFS_DIR/hash/buf"
    have_openssl=0
    command -v openssl >/dev/null && have_openssl=1
    for ((r = 1; r <= RUNS; r++)); do
        quiet_gate
        mbps=$("$HASHLIMIT" "$CORES" 64 8 | sed -n 's/.*mbps=//p')
        record_rate sha2-all-cores "sha2 crate, $CORES threads (64 MiB buffer each)" "$r" "$mbps"
        quiet_gate
        mbps=$("$HASHLIMIT" 1 64 8 | sed -n 's/.*mbps=//p')
        record_rate sha2-one-core "sha2 crate, 1 thread" "$r" "$mbps"
        if ((have_openssl)); then
            # openssl speed prints k = 1000 bytes per second for 1 MiB blocks.
            quiet_gate
            kps=$(openssl speed -seconds 2 -evp sha256 -bytes 1048576 -multi "$CORES" 2>/dev/null | awk '/^sha256/ { v = $NF } END { sub(/k$/, "", v); print v }')
            record_rate openssl-all-cores "openssl speed -evp sha256 -multi $CORES" "$r" "$(awk -v k="$kps" 'BEGIN { printf "%.1f", k / 1000 }')"
            quiet_gate
            kps=$(openssl speed -seconds 2 -evp sha256 -bytes 1048576 2>/dev/null | awk '/^sha256/ { v = $NF } END { sub(/k$/, "", v); print v }')
            record_rate openssl-one-core "openssl speed -evp sha256, 1 process" "$r" "$(awk -v k="$kps" 'BEGIN { printf "%.1f", k / 1000 }')"
        fi
        quiet_gate
        t0=$(date +%s%N)
        sha256sum "$TMPFS_DIR/hash/buf" >/dev/null
        t1=$(date +%s%N)
        record_rate sha256sum-one-core "coreutils sha256sum, 1 process (256 MiB file on tmpfs)" "$r" \
            "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", 256 * 1048576 / ((b - a) / 1e9) / 1e6 }')"
    done
    rm -rf "$TMPFS_DIR/hash"
fi

# --- Verify -----------------------------------------------------------------------------------
# verify_bench SECTION CASE BAG BYTES FILES
verify_bench() {
    local section=$1 case=$2 bag=$3 bytes=$4 files=$5 r
    log "$section: $bag"
    # The peers' manifest halves: BagIt manifest lines are `digest  path` relative to the bag,
    # which is what sha256sum -c reads.
    rm -f "$WORK"/part.*
    split -n "l/$PROCS" "$bag/manifest-sha256.txt" "$WORK/part."
    local parts=("$WORK"/part.*)
    # Warm the page cache once, untimed.
    warm "$bag"
    for ((r = 1; r <= RUNS; r++)); do
        measure "$section" "$case" "ferry verify" "$r" "$bytes" "$files" -- \
            "$FERRY" verify -q "$bag"
        measure "$section" "$case" "sha256sum -c, $PROCS processes" "$r" "$bytes" "$files" -- \
            bash -c 'cd "$1" && shift && for p in "$@"; do sha256sum -c --quiet --strict "$p" & done; ok=0; for p in "$@"; do wait -n || ok=1; done; exit $ok' \
            _ "$bag" "${parts[@]}"
        measure "$section" "$case" "bagit.py --validate --processes $PROCS" "$r" "$bytes" "$files" -- \
            bagit.py --validate --quiet --processes "$PROCS" "$bag"
    done
}

((do_small)) && verify_bench verify-small "$SMALL_FILES × 4 KiB in $SMALL_FOLDERS folders" "$BENCH_DIR/small/bag" "$small_bytes" "$SMALL_FILES"
((do_large)) && verify_bench verify-large "$LARGE_FILES × $LARGE_MB MiB" "$BENCH_DIR/large/bag" "$large_bytes" "$LARGE_FILES"

# --- Export -----------------------------------------------------------------------------------
# export_bench CASE SRC DESTDIR BYTES FILES
export_bench() {
    local case=$1 src=$2 destdir=$3 bytes=$4 files=$5 r n
    log "export: $case"
    mkdir -p "$destdir"
    warm "$src"
    # cp + sha256sum: the files split over PROCS sha256sum processes, as for verify.
    n=$(((files + PROCS - 1) / PROCS))
    for ((r = 1; r <= RUNS; r++)); do
        fresh "$destdir/bag"
        measure export "$case" "ferry export (folder)" "$r" "$bytes" "$files" -- \
            "$FERRY" export "fs:$src" --to "$destdir/bag" -q
        fresh "$destdir/bag"
        fresh "$destdir/bag.zip"
        measure export "$case" "ferry export (.zip)" "$r" "$bytes" "$files" -- \
            "$FERRY" export "fs:$src" --to "$destdir/bag.zip" -q
        fresh "$destdir/bag.zip"
        fresh "$destdir/copy"
        measure export "$case" "cp -r" "$r" "$bytes" "$files" -- \
            cp -r "$src" "$destdir/copy"
        fresh "$destdir/copy"
        measure export "$case" "cp -r + sync -f" "$r" "$bytes" "$files" -- \
            bash -c 'cp -r "$1" "$2" && sync -f "$2"' _ "$src" "$destdir/copy"
        fresh "$destdir/copy"
        measure export "$case" "cp -r + sha256sum ($PROCS processes)" "$r" "$bytes" "$files" -- \
            bash -c 'cp -r "$1" "$2" && cd "$2" && find . -type f -print0 | xargs -0 -P "$3" -n "$4" sha256sum >/dev/null' \
            _ "$src" "$destdir/copy" "$PROCS" "$n"
        fresh "$destdir/copy"
    done
    rm -rf "$destdir"
}

if ((do_export)); then
    disk_fs=$(fstype "$BENCH_DIR")
    tmp_fs=$(fstype "$TMPFS_DIR")
    [[ $tmp_fs == tmpfs ]] || log "warning: TMPFS_DIR=$TMPFS_DIR is on $tmp_fs, not tmpfs"
    export_bench "small, disk ($disk_fs)" "$BENCH_DIR/small/src" "$BENCH_DIR/export" "$small_bytes" "$SMALL_FILES"
    export_bench "large, disk ($disk_fs)" "$BENCH_DIR/large/src" "$BENCH_DIR/export" "$large_bytes" "$LARGE_FILES"
    # On the tmpfs the source is there too: no disk at all.
    for name in small large; do
        rm -rf "${TMPFS_DIR:?}/$name"
        mkdir -p "$TMPFS_DIR/$name"
        cp -r "$BENCH_DIR/$name/src" "$TMPFS_DIR/$name/src"
    done
    export_bench "small, $tmp_fs" "$TMPFS_DIR/small/src" "$TMPFS_DIR/export" "$small_bytes" "$SMALL_FILES"
    export_bench "large, $tmp_fs" "$TMPFS_DIR/large/src" "$TMPFS_DIR/export" "$large_bytes" "$LARGE_FILES"
    rm -rf "$TMPFS_DIR/small" "$TMPFS_DIR/large"
fi

# --- Report -----------------------------------------------------------------------------------
machine=$WORK/machine.tsv
{
    printf 'CPU\t%s\n' "$(cpu_model)"
    printf 'cores\t%s (%s thread(s) per core as the guest sees it)\n' "$CORES" "$(lscpu 2>/dev/null | sed -n 's/^Thread(s) per core:[[:space:]]*//p')"
    printf 'SHA-NI\t%s\n' "$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
    printf 'RAM\t%s GiB\n' "$(ram_gib)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'BENCH_DIR\t%s on %s\n' "$BENCH_DIR" "$(fstype "$BENCH_DIR")"
    ferry_tsv
    printf 'bagit.py\t%s\n' "$(bagit.py --version 2>&1 | head -n 1)"
    printf 'sha256sum\t%s\n' "$(sha256sum --version | head -n 1)"
    printf 'cp\t%s\n' "$(cp --version | head -n 1)"
    command -v openssl >/dev/null && printf 'openssl\t%s\n' "$(openssl version)"
    printf 'rustc\t%s\n' "$(rustc --version)"
} >"$machine"

config=$WORK/config.tsv
{
    printf 'sections\t%s\n' "$sections"
    date_tsv
    printf 'runs\t%s\n' "$RUNS"
    printf 'small\t%s × 4 KiB in %s folders\n' "$SMALL_FILES" "$SMALL_FOLDERS"
    printf 'large\t%s × %s MiB\n' "$LARGE_FILES" "$LARGE_MB"
    printf 'peer processes\t%s\n' "$PROCS"
    printf 'ferry verify threads\tdefault (every core)\n'
    printf 'ferry export concurrency\tdefault\n'
    quiet_gate_tsv
} >"$config"

echo
python3 -B "$here/helper.py" report "$RESULTS" "$machine" "$config" ${DOCS:+"$DOCS"}
[[ -n $DOCS ]] || log "results not written to a file (DOCS unset: not a full-size run of every section)"
