#!/usr/bin/env python3
"""Helper for bench/m365.sh: checks one run, and writes the markdown report.

    m365helper.py check RUNDIR
        RUNDIR holds one export's records: summary.json (`ferry export --json`), run.json (the
        bag's ferry/run.json), before.json and after.json (the sandbox's /_sandbox/stats),
        time (`/usr/bin/time -f '%e %U %S %M'`), meta.tsv. Exits 1 if the export is incomplete,
        exported another number of items than the tenant holds, its reconciliation is not ok, or
        the sandbox saw more requests in flight (or per 10 minutes) for one mailbox than its
        limits; prints one line about the run.
    m365helper.py report RUNSDIR MACHINE.tsv CONFIG.tsv [DOCS.md]
        a table of every run under RUNSDIR, on stdout and, given DOCS.md, between
        `<!-- bench-m365:begin -->` and `<!-- bench-m365:end -->` in it (the markers are added at
        the end if missing), leaving everything else in the file alone.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import publish  # noqa: E402

BEGIN = "<!-- bench-m365:begin -->"
END = "<!-- bench-m365:end -->"


def load(d):
    r = {}
    with open(os.path.join(d, "summary.json")) as f:
        r["summary"] = json.load(f)
    with open(os.path.join(d, "run.json")) as f:
        r["run"] = json.load(f)
    with open(os.path.join(d, "after.json")) as f:
        r["after"] = json.load(f)
    with open(os.path.join(d, "time")) as f:
        wall, user, sys_, rss = f.read().split()[-4:]
    r["cpu"] = float(user) + float(sys_)
    r["user"], r["sys"] = float(user), float(sys_)
    r["rss_kib"] = int(rss)
    meta = {}
    with open(os.path.join(d, "meta.tsv")) as f:
        for line in f:
            k, v = line.rstrip("\n").split("\t", 1)
            meta[k] = int(v)
    r["meta"] = meta
    try:
        with open(os.path.join(d, "server_rss")) as f:
            r["server_rss_kib"] = int(f.read().strip() or 0)
    except (OSError, ValueError):
        r["server_rss_kib"] = 0
    return r


def expected_items(t):
    # Recoverable Items are not exported by default (--include-recoverable).
    return t["messages"] - t["messages_recoverable_items"] + t["onedrive_files"] + t["sharepoint_files"]


def derive(r):
    s, st, t, lim, m = r["summary"], r["after"]["stats"], r["after"]["tenant"], r["after"]["limits"], r["meta"]
    wall = m["wall_ns"] / 1e9
    hz = m["clk_tck"]
    items = s["archived_items"]
    details = r["run"]["sources"][0].get("details", {})
    server = m["server_ticks"] / hz
    other = max(0.0, m["busy_ticks"] / hz - server - r["cpu"])
    return {
        "latency": m["latency_ms"],
        "concurrency": m["concurrency"],
        "items": items,
        "bytes": s["archived_bytes"],
        "wall": wall,
        "items_s": items / wall,
        "mb_s": s["archived_bytes"] / 1e6 / wall,
        "cpu": r["cpu"],
        "cpu_per_k": r["cpu"] / items * 1000 if items else 0.0,
        "rss_mib": r["rss_kib"] / 1024,
        "server_cores": server / wall,
        "other_cores": other / wall,
        "server_rss_mib": r["server_rss_kib"] / 1024,
        "max_conc": st["max_concurrent_per_mailbox"],
        "conc_429": st["mailbox_concurrency_rejections"],
        "rate_429": st["mailbox_rate_rejections"],
        "busy": st["max_busy_mailboxes"],
        "mailboxes": st["mailboxes_touched"],
        "max_req": st["max_requests_per_mailbox"],
        "max_req_10": st["max_requests_per_mailbox_10min"],
        "mail_requests": st["mailbox_requests"],
        "requests": st["requests"],
        "graph_requests": details.get("graph_requests"),
        "graph_retries": details.get("graph_retries"),
        "recon": details.get("reconciliation_status"),
        "lim_conc": lim["mailbox_concurrency"],
        "lim_rate": lim["mailbox_requests_per_10min"],
        "expected": expected_items(t),
        "tenant": t,
        "verify": m.get("verify_ns"),
    }


def problems(r, d):
    s = r["summary"]
    out = []
    if s.get("status") != "complete" or s.get("exit_code") != 0:
        out.append("export status %s, exit code %s" % (s.get("status"), s.get("exit_code")))
    if s.get("failed_items"):
        out.append("%d items failed" % s["failed_items"])
    if d["items"] != d["expected"]:
        out.append("exported %d items, the tenant holds %d" % (d["items"], d["expected"]))
    if d["recon"] != "ok":
        out.append("reconciliation %s" % d["recon"])
    if d["max_conc"] > d["lim_conc"]:
        out.append("%d requests in flight for one mailbox (limit %d)" % (d["max_conc"], d["lim_conc"]))
    if d["lim_rate"] and d["max_req_10"] > d["lim_rate"]:
        out.append("%d requests to one mailbox in 10 minutes (limit %d)" % (d["max_req_10"], d["lim_rate"]))
    return out


def check(rundir):
    r = load(rundir)
    d = derive(r)
    sys.stderr.write(
        "  %d items, %.1f MB in %.1f s: %.0f items/s, %.1f MB/s, %.2f CPU-s/1000 items, peak RSS %.0f MiB;"
        " max %d in flight per mailbox, %d+%d 429s (concurrency+rate), up to %d mailboxes busy at once,"
        " max %d requests to one mailbox\n"
        % (d["items"], d["bytes"] / 1e6, d["wall"], d["items_s"], d["mb_s"], d["cpu_per_k"], d["rss_mib"],
           d["max_conc"], d["conc_429"], d["rate_429"], d["busy"], d["max_req_10"]))
    p = problems(r, d)
    for x in p:
        sys.stderr.write("  PROBLEM: %s\n" % x)
    return 1 if p else 0


def tsv(path):
    out = []
    with open(path) as f:
        for line in f:
            if "\t" in line:
                out.append(tuple(line.rstrip("\n").split("\t", 1)))
    return out


def fmt_int(n):
    return "{:,}".format(n)


def report(runsdir, machine, config, docs=None):
    runs = []
    for name in sorted(os.listdir(runsdir)):
        d = os.path.join(runsdir, name)
        if os.path.isfile(os.path.join(d, "meta.tsv")) and os.path.isfile(os.path.join(d, "run.json")):
            r = load(d)
            runs.append(derive(r))
    runs.sort(key=lambda x: (x["latency"], x["concurrency"]))
    if not runs:
        sys.stderr.write("no runs\n")
        return 1
    cfg = dict(tsv(config))
    lines = []
    w = lines.append
    w("_Generated by `bench/m365.sh` (%s run, %s)._" % (cfg.get("mode", "?"), cfg.get("date", "?")))
    w("")
    w("| machine | |")
    w("| --- | --- |")
    for k, v in tsv(machine):
        w("| %s | %s |" % (k, v))
    for k in ("server", "destination", "quiet gate", "command"):
        if k in cfg:
            w("| %s | %s |" % (k, cfg[k].replace("|", "\\|")))
    w("")
    t = runs[0]["tenant"]
    w("Tenant (%s): %s licensed users, %s mailboxes (one in-place archive); %s messages exported "
      "(%s MB of MIME; %s more in Recoverable Items, not exported by default), %s OneDrive files of "
      "%s bytes (%.3f GiB), %s SharePoint files of %s bytes: **%s items** per export."
      % (cfg.get("tenant", "?"), t["licensed_users"], t["mailboxes"],
         fmt_int(t["messages"] - t["messages_recoverable_items"]), fmt_int(round(t["message_bytes"] / 1e6)),
         t["messages_recoverable_items"], fmt_int(t["onedrive_files"]), fmt_int(t["onedrive_bytes"]),
         t["onedrive_bytes"] / 2**30, fmt_int(t["sharepoint_files"]), fmt_int(t["sharepoint_bytes"]),
         fmt_int(runs[0]["expected"])))
    w("")
    w("| mail latency | --concurrency | items | MB | wall s | items/s | MB/s | ferry CPU s / 1,000 items "
      "| ferry peak RSS | sandbox CPU | other CPU | max in flight per mailbox | 429s (concurrency / rate) "
      "| max mailboxes busy at once | max requests to one mailbox |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for d in runs:
        w("| %d ms | %d | %s | %s | %.1f | %s | %.1f | %.3f | %.0f MiB | %.2f cores | %.2f cores | %d / %d | %d / %d | %d of %d | %s / %s |"
          % (d["latency"], d["concurrency"], fmt_int(d["items"]), fmt_int(round(d["bytes"] / 1e6)), d["wall"],
             fmt_int(round(d["items_s"])), d["mb_s"], d["cpu_per_k"], d["rss_mib"], d["server_cores"],
             d["other_cores"], d["max_conc"], d["lim_conc"], d["conc_429"], d["rate_429"], d["busy"],
             d["mailboxes"], fmt_int(d["max_req_10"]), fmt_int(d["lim_rate"]) if d["lim_rate"] else "∞"))
    w("")
    ok = all(d["max_conc"] <= d["lim_conc"] and (not d["lim_rate"] or d["max_req_10"] <= d["lim_rate"]) for d in runs)
    no429 = all(d["conc_429"] == 0 and d["rate_429"] == 0 for d in runs)
    w("Every export was complete (exit code 0, every item of the tenant, reconciliation `ok`). "
      "Limits per mailbox: %s; %s."
      % ("kept in every run" if ok else "**broken in some run**",
         "ferry never sent a request the sandbox had to refuse (no 429)" if no429
         else "the sandbox refused some requests with 429 (ferry retried them)"))
    w("")
    w("CPU columns: *ferry* is user + system time of `ferry export`; *sandbox* and *other* are "
      "cores busy on average during the export (the sandbox generates every byte it serves; other "
      "is everything else on the machine). Graph requests per export (ferry's count): %s; "
      "retries: %s."
      % (", ".join(fmt_int(d["graph_requests"] or 0) for d in runs),
         ", ".join(str(d["graph_retries"]) for d in runs)))
    w("")
    w("Sandbox peak RSS per export: %s MiB." % ", ".join("%.0f" % d["server_rss_mib"] for d in runs))
    if any(d["verify"] for d in runs):
        w("")
        w("`ferry verify` of each bag (untimed in the table): %s s."
          % ", ".join("%.1f" % (d["verify"] / 1e9) for d in runs if d["verify"]))
    publish(lines, docs, BEGIN, END)
    return 0


def main(argv):
    if len(argv) == 2 and argv[0] == "check":
        return check(argv[1])
    if len(argv) in (4, 5) and argv[0] == "report":
        return report(*argv[1:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
