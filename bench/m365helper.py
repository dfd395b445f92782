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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import CPU_COLUMNS, derive_run, fmt_int, helper_main, runs_table, summary_problems  # noqa: E402


def expected_items(t):
    # Recoverable Items are not exported by default (--include-recoverable).
    return t["messages"] - t["messages_recoverable_items"] + t["onedrive_files"] + t["sharepoint_files"]


def derive(r):
    st, t, lim = r["after"]["stats"], r["after"]["tenant"], r["after"]["limits"]
    d = derive_run(r)
    details = d["details"]
    d.update({
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
    })
    return d


def problems(r, d):
    out = summary_problems(r["summary"])
    if d["items"] != d["expected"]:
        out.append("exported %d items, the tenant holds %d" % (d["items"], d["expected"]))
    if d["recon"] != "ok":
        out.append("reconciliation %s" % d["recon"])
    if d["max_conc"] > d["lim_conc"]:
        out.append("%d requests in flight for one mailbox (limit %d)" % (d["max_conc"], d["lim_conc"]))
    if d["lim_rate"] and d["max_req_10"] > d["lim_rate"]:
        out.append("%d requests to one mailbox in 10 minutes (limit %d)" % (d["max_req_10"], d["lim_rate"]))
    return out


def describe(d):
    return ("max %d in flight per mailbox, %d+%d 429s (concurrency+rate), up to %d mailboxes busy at once,"
            " max %d requests to one mailbox"
            % (d["max_conc"], d["conc_429"], d["rate_429"], d["busy"], d["max_req_10"]))


def report(runs, cfg, w):
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
    runs_table(w, "mail latency", runs,
               ["max in flight per mailbox", "429s (concurrency / rate)", "max mailboxes busy at once",
                "max requests to one mailbox"],
               lambda d: ["%d / %d" % (d["max_conc"], d["lim_conc"]), "%d / %d" % (d["conc_429"], d["rate_429"]),
                          "%d of %d" % (d["busy"], d["mailboxes"]),
                          "%s / %s" % (fmt_int(d["max_req_10"]), fmt_int(d["lim_rate"]) if d["lim_rate"] else "∞")])
    ok = all(d["max_conc"] <= d["lim_conc"] and (not d["lim_rate"] or d["max_req_10"] <= d["lim_rate"]) for d in runs)
    no429 = all(d["conc_429"] == 0 and d["rate_429"] == 0 for d in runs)
    w("Every export was complete (exit code 0, every item of the tenant, reconciliation `ok`). "
      "Limits per mailbox: %s; %s."
      % ("kept in every run" if ok else "**broken in some run**",
         "ferry never sent a request the sandbox had to refuse (no 429)" if no429
         else "the sandbox refused some requests with 429 (ferry retried them)"))
    w("")
    w(CPU_COLUMNS + " Graph requests per export (ferry's count): %s; retries: %s."
      % (", ".join(fmt_int(d["graph_requests"] or 0) for d in runs),
         ", ".join(str(d["graph_retries"]) for d in runs)))


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:], __doc__, "m365", derive, problems, describe, report))
