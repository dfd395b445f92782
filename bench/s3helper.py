#!/usr/bin/env python3
"""Helper for bench/s3.sh: the server latency probe, and the markdown report.

    s3helper.py probe ENDPOINT BUCKET KEY [N]
        on each of 5 connections, N (default 10) GETs of a small object and N HEADs; then N GETs
        each on a new connection (`Connection: close`). Prints `get_ms slow_pct head_ms new_ms`:
        the median GET on a reused connection, the percentage of those over 30 ms, the median
        HEAD, the median GET on a new connection. Needs botocore (it comes with awscli);
        credentials from the environment.
    s3helper.py report RESULTS.tsv MACHINE.tsv CONFIG.tsv [DOCS.md]

RESULTS.tsv has one line per measured run:
    set  set_title  role  tool  run  seconds  peak_rss_kib  payload_bytes  objects
    client_cpu_s  server_cpu_cores  other_cpu_cores
role is one of ferry, ferry-tuned, s5cmd, rclone, rclone-tuned, aws (the targets and ratios
use it); tool is the label shown. MACHINE.tsv and CONFIG.tsv are `key<TAB>value` lines; CONFIG
keys starting with `cmd:` list the commands, `probe` the latency probe's three medians.

The report prints markdown on stdout and, given DOCS.md, replaces what lies between
`<!-- bench-s3:begin -->` and `<!-- bench-s3:end -->` in it (the markers are added at the end
if missing), leaving everything else in the file alone.
"""

import os
import statistics
import sys
import time
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fmt_s, kv_sentence, publish, read_kv, spread, targets_table  # noqa: E402

BEGIN = "<!-- bench-s3:begin -->"
END = "<!-- bench-s3:end -->"

# Targets from the issue.
MIN_VS_S5CMD = 1.0  # ferry at least as fast as s5cmd
MIN_VS_RCLONE = 2.0  # ferry at least 2x faster than rclone
RSS_MAX_MIB = 100.0

PROBE_CONNECTIONS = 5
SLOW_MS = 30.0


# --- probe -------------------------------------------------------------------------------------
def probe(endpoint, bucket, key, n=10):
    import botocore.session
    from botocore.config import Config

    n = int(n)
    session = botocore.session.get_session()

    def client():
        return session.create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            config=Config(
                max_pool_connections=1,
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 1},
            ),
        )

    def close(request, **_kw):
        request.headers["Connection"] = "close"

    def timed(f):
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1000.0

    # A stall hits some connections and not others: PROBE_CONNECTIONS connections, N requests each.
    get_r, head_r = [], []
    for _ in range(PROBE_CONNECTIONS):
        c = client()
        c.head_object(Bucket=bucket, Key=key)  # opens the connection
        get_r += [timed(lambda: c.get_object(Bucket=bucket, Key=key)["Body"].read()) for _ in range(n)]
        head_r += [timed(lambda: c.head_object(Bucket=bucket, Key=key)) for _ in range(n)]
    fresh = client()
    fresh.meta.events.register("before-send.s3", close)
    get_n = [timed(lambda: fresh.get_object(Bucket=bucket, Key=key)["Body"].read()) for _ in range(n)]
    slow = 100.0 * sum(1 for t in get_r if t > SLOW_MS) / len(get_r)
    print("%.1f %.0f %.1f %.1f" % (statistics.median(get_r), slow, statistics.median(head_r), statistics.median(get_n)))


# --- report ------------------------------------------------------------------------------------
class Runs:
    """All runs of one command on one data set."""

    def __init__(self, role, tool):
        self.role, self.tool = role, tool
        self.seconds, self.rss, self.cpu, self.server, self.other = [], [], [], [], []
        self.bytes = self.objects = 0

    @property
    def median(self):
        return statistics.median(self.seconds)

    @property
    def peak_mib(self):
        return max(self.rss) / 1024.0 if self.rss else 0.0

    @property
    def mbps(self):
        return self.bytes / self.median / 1e6

    @property
    def ops(self):
        return self.objects / self.median


def load(path):
    # set -> (title, OrderedDict role -> Runs), in the order first seen.
    data = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 12:
                continue
            dset, title, role, tool, _run, secs, rss, nbytes, objects, cpu, server, other = p[:12]
            entry = data.setdefault(dset, (title, OrderedDict()))
            r = entry[1].setdefault(role, Runs(role, tool))
            r.seconds.append(float(secs))
            r.rss.append(int(rss))
            r.bytes, r.objects = int(nbytes), int(objects)
            r.cpu.append(float(cpu))
            r.server.append(float(server))
            r.other.append(float(other))
    return data


def fmt_rate(x):
    return "%.0f" % x if x >= 10 else "%.1f" % x


def report(results, machine_path, config_path, docs=None):
    data = load(results)
    machine = read_kv(machine_path)
    config = read_kv(config_path)
    runs = config.get("runs", "?")
    out = []
    w = out.append

    w("Generated by `bench/s3.sh %s` on %s." % (config.get("sets", ""), config.get("date", "?")))
    w("")
    w(kv_sentence("Machine", machine.items()))
    w("")
    settings = [(k, v) for k, v in config.items() if k not in ("sets", "date", "probe") and not k.startswith("cmd:")]
    w(kv_sentence("Settings", settings))
    w("")
    cmds = [(k[4:], v) for k, v in config.items() if k.startswith("cmd:")]
    if cmds:
        w("**Commands** (`DEST` is a fresh folder each run, deleted between runs outside the timing; "
          "`EP` the server's endpoint):")
        w("")
        for label, cmd in cmds:
            w("- %s: `%s`" % (label, cmd))
        w("")
    probe_v = config.get("probe", "").split()
    if len(probe_v) == 4:
        get_r, slow, head_r, get_n = (float(x) for x in probe_v)
        w("**Server latency** (a 4 KiB object, botocore; %d connections × 10 requests): GET on a reused "
          "connection %.1f ms (median), %.0f%% of them over %.0f ms; HEAD on it %.1f ms; GET on a new "
          "connection %.1f ms. %s" % (
              PROBE_CONNECTIONS, get_r, slow, SLOW_MS, head_r, get_n,
              "Those slow GETs are the delayed-ACK pattern: the server sometimes writes a response's "
              "headers and its body in separate TCP segments, without TCP_NODELAY, and the body waits "
              "for the client's delayed ACK (~40 ms). A connection that hits it manages about 23 "
              "small GETs/s, so small-object throughput depends on how many connections a client "
              "keeps busy." if slow >= 5 else
              "Few or no ~40 ms delayed-ACK stalls showed up in this probe."))
        w("")
    w("Times are wall-clock medians of %s run(s) (min–max in brackets); MB = 10^6 bytes; "
      "*ferry time ÷ this* below 1 means ferry was faster. Peak RSS is `/usr/bin/time -f %%M`, "
      "highest over the runs. *Client CPU* is the command's user + system CPU time (median); "
      "*server CPU* the S3 server's, and *other CPU* anything else's (other processes on this "
      "shared machine, kernel threads), both in cores on average while the command ran, highest "
      "over the runs. ferry does more than the peers: it hashes every byte with SHA-256 (and MD5 "
      "to check each ETag), writes the bag's manifests and flushes them." % runs)
    w("")

    targets = []  # (target, measured, ok)
    ferry_rss = []  # (role, where, MiB)
    for dset, (title, roles) in data.items():
        any_r = next(iter(roles.values()))
        w("### %s (%d objects, %.0f MB)" % (title, any_r.objects, any_r.bytes / 1e6))
        w("")
        ferry, tuned = roles.get("ferry"), roles.get("ferry-tuned")
        w("| command | median s | objects/s | MB/s | ferry time ÷ this | ferry tuned time ÷ this | peak RSS MiB | client CPU s | server CPU | other CPU |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for role, r in roles.items():
            w("| %s | %s%s | %s | %s | %s | %s | %.1f | %.2f | %.2f | %.2f |" % (
                r.tool, fmt_s(r.median), spread(r), fmt_rate(r.ops), fmt_rate(r.mbps),
                "%.2f" % (ferry.median / r.median) if ferry else "–",
                "%.2f" % (tuned.median / r.median) if tuned else "–",
                r.peak_mib, statistics.median(r.cpu), max(r.server), max(r.other)))
            if role.startswith("ferry"):
                ferry_rss.append((role, "%s, %s" % (dset, r.tool), r.peak_mib))
        w("")

        def versus(f, peer, need):
            if not f or not peer:
                return
            speed = peer.median / f.median
            targets.append((
                "%s: %s %s %s" % (dset, f.tool, "at least as fast as" if need == 1 else
                                  "≥ %g× as fast as" % need, peer.tool),
                "%.2f× (%s s vs %s s)" % (speed, fmt_s(f.median), fmt_s(peer.median)),
                speed >= need))

        versus(ferry, roles.get("s5cmd"), MIN_VS_S5CMD)
        versus(tuned, roles.get("s5cmd"), MIN_VS_S5CMD)
        versus(ferry, roles.get("rclone"), MIN_VS_RCLONE)
        versus(tuned, roles.get("rclone-tuned"), MIN_VS_RCLONE)

    for role, what in (("ferry", "ferry's peak RSS (defaults)"), ("ferry-tuned", "ferry's peak RSS (tuned)")):
        rss = [x for x in ferry_rss if x[0] == role]
        if rss:
            _, where, peak = max(rss, key=lambda x: x[2])
            targets.append(("%s < %.0f MiB in every run" % (what, RSS_MAX_MIB),
                            "%.1f MiB at most (%s)" % (peak, where), peak < RSS_MAX_MIB))

    if targets:
        w("### Targets")
        w("")
        w("Speed ratios are the peer's median time ÷ ferry's (2× = ferry takes half the time); "
          "ferry's defaults against the peers' defaults; ferry tuned against s5cmd and against rclone tuned.")
        w("")
        targets_table(w, targets)

    publish(out, docs, BEGIN, END)


def main(argv):
    if len(argv) in (4, 5) and argv[0] == "probe":
        probe(*argv[1:])
    elif len(argv) in (4, 5) and argv[0] == "report":
        report(*argv[1:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
