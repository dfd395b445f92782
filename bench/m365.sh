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
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

sandbox_settings 100 260 "$@" # (bench/lib.sh)
MAILBOX_CONCURRENCY=${MAILBOX_CONCURRENCY:-4}
MAILBOX_REQUESTS=${MAILBOX_REQUESTS:-10000}
positive_ints MAILBOX_CONCURRENCY
[[ $MAILBOX_REQUESTS =~ ^[0-9]+$ ]] || die "MAILBOX_REQUESTS must be a non-negative integer"
[[ $MAILBOX_CONCURRENCY == 4 && $MAILBOX_REQUESTS == 10000 ]] || DEFAULT_SIZE=0
sandbox_docs

# --- Tools, work dirs (bench_tools, bench_dirs: bench/lib.sh) ---------------------------------
HELPER=$here/m365helper.py
bench_tools
bench_dirs

# --- Measuring --------------------------------------------------------------------------------
# (new_run, start_sandbox, measure_export, measure_matrix: bench/lib.sh)

export FERRY_M365_CLIENT_SECRET=ferry-sandbox-graph-secret-not-a-secret
CLIENT_ID=11111111-2222-3333-4444-555555555555
TENANT=contoso.onmicrosoft.com

# measure LATENCY CONCURRENCY: one export against a fresh sandbox; its records go in WORK/runs.
measure() {
    local lat=$1 conc=$2
    new_run "$lat" "$conc"
    log "mail latency ${lat} ms, --concurrency $conc: seeding the sandbox"
    start_sandbox m365 --users "$USERS" --messages "$MESSAGES" --files "$FILES" \
        --large-file-mb "$LARGE_MB" --mail-latency-ms "$lat" \
        --mailbox-concurrency "$MAILBOX_CONCURRENCY" --mailbox-requests-per-10min "$MAILBOX_REQUESTS"
    measure_export "$RUN" "$FERRY" export "m365:$TENANT" --client-id "$CLIENT_ID" \
        --graph-endpoint "http://$ADDR/v1.0" --login-endpoint "http://$ADDR/login" \
        --to "$DEST" --concurrency "$conc" --json
}

measure_matrix

# --- Report (bench_report: bench/lib.sh) ------------------------------------------------------
config() {
    printf 'tenant\t%s users x %s messages, %s OneDrive files per user + one %s MiB file\n' "$USERS" "$MESSAGES" "$FILES" "$LARGE_MB"
    printf 'server\tferry sandbox m365 on 127.0.0.1, --mailbox-concurrency %s --mailbox-requests-per-10min %s\n' "$MAILBOX_CONCURRENCY" "$MAILBOX_REQUESTS"
    printf 'command\tferry export m365:%s --client-id ID --graph-endpoint EP/v1.0 --login-endpoint EP/login --to DEST --concurrency N --json\n' "$TENANT"
}
bench_report config
