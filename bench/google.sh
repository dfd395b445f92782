#!/usr/bin/env bash
# ferry Google Workspace benchmark (not a test): `ferry export google:` of a sandbox domain served
# by `ferry sandbox google` on 127.0.0.1, which answers 429 to more than SERVER_USER_CONCURRENCY
# requests in flight for one user, as Gmail does.
#
#   bench/google.sh [full|quick]    (default: full)
#
#   full    USERS=50 active users x MESSAGES=2000 messages (plus 2 in Spam and 2 in Trash each,
#           which an export leaves out by default), FILES=1000 extra My Drive items per user on
#           top of the sandbox's fixed mix of ~21 (folders, files, Google Docs, a form, a
#           shortcut, a trashed file, hostile names), one LARGE_MB=886 MiB file: ~2 GiB of Drive
#           (the exact figure is reported); a shared drive (and the member-less "Orphaned drive")
#   quick   a trial of the script: 5 users x 200 messages, 10 files, an 8 MiB file; prints only
#
# The export names the active users (--users admin@…,…; the sandbox's users are deterministic),
# so it leaves out the suspended user the sandbox always adds, and with it the orphaned shared
# drive, which has no member among them: both are reported as failures (exit code 1) by
# `--users all`, which this benchmark does not measure.
#
# For every API latency in LATENCIES and every --concurrency in CONCURRENCY, a fresh sandbox
# (so that its counters cover one export) serves the domain, and `ferry export` takes everything
# into a fresh bag in BENCH_DIR under /usr/bin/time. Then the sandbox's counters
# (GET /_sandbox/stats) say how close ferry came to the per-user limit. Printed per run: items,
# bytes, wall s, items/s, MB/s, CPU-seconds of ferry per 1,000 items, ferry's peak RSS, the
# sandbox's and everything else's CPU, the most requests in flight for one user, the 429s,
# the API requests and access tokens. A run that fails, or archives other items than the domain
# holds (messages, files and Google Docs exports, counted apart), stops it.
#
# Environment:
#   FERRY=/path/to/ferry   binary to measure, also the server (default: build it with cargo --release)
#   FERRY_LABEL=text       how the results name that binary (default: its path)
#   USERS, MESSAGES, FILES, LARGE_MB      the domain (defaults above)
#   LATENCIES="0 20"       added latency of every API request in ms (Google's APIs answer in
#                          tens of ms; 0 measures ferry itself)
#   CONCURRENCY="8 32"     ferry export --concurrency values (8 is ferry's default)
#   USER_CONCURRENCY=5     ferry export --user-concurrency (ferry's default)
#   SERVER_USER_CONCURRENCY=10  the sandbox's limit per user (--user-concurrency of the sandbox)
#   BENCH_DIR=/tmp/ferry-google-bench    where the bags go (on disk; the results say which fs)
#   DOCS=docs/benchmarks.md  where to write the results (between the bench-google markers).
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
LOG_TAG=bench-google
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

sandbox_settings 1000 886 "$@" # (bench/lib.sh)
USER_CONCURRENCY=${USER_CONCURRENCY:-5}
SERVER_USER_CONCURRENCY=${SERVER_USER_CONCURRENCY:-10}
positive_ints USER_CONCURRENCY SERVER_USER_CONCURRENCY
[[ $USER_CONCURRENCY == 5 && $SERVER_USER_CONCURRENCY == 10 ]] || DEFAULT_SIZE=0
sandbox_docs

# --- Tools, work dirs (bench_tools, bench_dirs: bench/lib.sh) ---------------------------------
HELPER=$here/googlehelper.py
bench_tools
bench_dirs

# --- Measuring --------------------------------------------------------------------------------
# (new_run, start_sandbox, measure_export, measure_matrix: bench/lib.sh)
DOMAIN=example.no
KEY=$WORK/service-account.json
ACTIVE=$("$PY" -B "$HELPER" users "$USERS" "$DOMAIN")

# measure LATENCY CONCURRENCY: one export against a fresh sandbox; its records go in WORK/runs.
measure() {
    local lat=$1 conc=$2
    new_run "$lat" "$conc"
    log "API latency ${lat} ms, --concurrency $conc: seeding the sandbox"
    start_sandbox google --users "$USERS" --messages "$MESSAGES" --files "$FILES" \
        --large-file-mb "$LARGE_MB" --latency-ms "$lat" --user-concurrency "$SERVER_USER_CONCURRENCY" \
        --key-file "$KEY"
    measure_export "$RUN" "$FERRY" export "google:$DOMAIN" --service-account "$KEY" \
        --admin "admin@$DOMAIN" --google-endpoint "http://$ADDR" --users "$ACTIVE" \
        --to "$DEST" --concurrency "$conc" --user-concurrency "$USER_CONCURRENCY" --json
}

measure_matrix

# --- Report (bench_report: bench/lib.sh) ------------------------------------------------------
config() {
    printf 'domain\t%s users x %s messages, %s extra My Drive items per user + one %s MiB file\n' "$USERS" "$MESSAGES" "$FILES" "$LARGE_MB"
    printf 'server\tferry sandbox google on 127.0.0.1, --user-concurrency %s\n' "$SERVER_USER_CONCURRENCY"
    printf 'command\tferry export google:%s --service-account KEY --admin admin@%s --google-endpoint EP --users USER,… (the %s active users) --to DEST --concurrency N --user-concurrency %s --json\n' \
        "$DOMAIN" "$DOMAIN" "$USERS" "$USER_CONCURRENCY"
}
bench_report config
