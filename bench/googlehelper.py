#!/usr/bin/env python3
"""Helper for bench/google.sh: the users to export, checks one run, and writes the markdown report.

    googlehelper.py users N DOMAIN
        the addresses of the N active users `ferry sandbox google --users N` seeds, comma-separated
        (the sandbox's names are fixed: crates/sandbox/src/google/domain.rs, PEOPLE).
    googlehelper.py check RUNDIR
        RUNDIR holds one export's records (see bench/benchlib.py, load_run); the bag is still in
        the folder its run.json names. Counts the bag's items by kind (Gmail messages, Drive
        files, Google Docs exports, items recorded without content) into RUNDIR/bag.json. Exits 1
        if the export is incomplete, its reconciliation is not ok, or it archived another number
        of messages, files or exports than the domain holds for the exported users; prints one
        line about the run.
    googlehelper.py report RUNSDIR MACHINE.tsv CONFIG.tsv [DOCS.md]
        a table of every run under RUNSDIR, on stdout and, given DOCS.md, between
        `<!-- bench-google:begin -->` and `<!-- bench-google:end -->` in it (the markers are added
        at the end if missing), leaving everything else in the file alone.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import CPU_COLUMNS, derive_run, fmt_int, helper_main, runs_table, summary_problems  # noqa: E402

# The local parts of the sandbox's first users (the first is the admin); then user8, user9, …
PEOPLE = ["admin", "kari.nordmann", "ola.hansen", "zoe.nunez", "lars.okland", "ingrid.berg",
          "per.johansen", "siri.lund"]


def users(n, domain):
    n = int(n)
    local = [PEOPLE[i] if i < len(PEOPLE) else "user%d" % i for i in range(n)]
    print(",".join("%s@%s" % (u, domain) for u in local))
    return 0


def expected(dom):
    """What an export of every active user (default options) archives, from the sandbox's domain
    totals and how it seeds (crates/sandbox/src/google/domain.rs): every message but each
    mailbox's 2 in Spam and 2 in Trash; every binary file but each user's one trashed file and
    the orphaned drive's one file; one export of each Docs, Sheets, Slides or Drawings file."""
    active = dom["active_users"]
    e = {
        "messages": dom["messages"] - 4 * active,
        "files": dom["binary_files"] - active - 1,
        "exports": dom["native_files"],
    }
    e["items"] = e["messages"] + e["files"] + e["exports"]
    return e


def count_bag(bag):
    """Items and bytes of the bag by kind, from its ferry/items.jsonl."""
    c = {k: 0 for k in ("messages", "message_bytes", "files", "file_bytes", "exports", "export_bytes",
                        "without_content", "largest")}
    with open(os.path.join(bag, "ferry", "items.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") != "file":
                c["without_content"] += 1
                continue
            size = r.get("size") or 0
            c["largest"] = max(c["largest"], size)
            if (r.get("source") or {}).get("container") == "gmail":
                kind = "message"
            elif r.get("conversion"):
                kind = "export"
            else:
                kind = "file"
            c[kind + "s"] += 1
            c[kind + "_bytes"] += size
    return c


def bag_counts(r):
    """`count_bag` of the export R's bag, kept in its records' bag.json (counted while `check` runs,
    when the bag is still there)."""
    path = os.path.join(r["dir"], "bag.json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(count_bag(r["summary"]["bag"]), f)
    with open(path) as f:
        return json.load(f)


def derive(r):
    st, dom, lim = r["after"]["stats"], r["after"]["domain"], r["after"]["limits"]
    d = derive_run(r)
    details = d["details"]
    opts = r["run"]["sources"][0].get("options", {})
    bag = bag_counts(r)
    d.update({
        "max_conc": st["max_concurrent_per_user"],
        "conc_429": st["concurrency_rejections"],
        "throttled": st["throttled"],
        "api": st["api_requests"],
        "requests": st["requests"],
        "tokens": st["tokens_issued"],
        "messages_get": st["messages_get"],
        "downloads": st["downloads"],
        "exports_served": st["exports"],
        "pages": sum(st[k] for k in ("messages_list_pages", "history_pages", "files_list_pages",
                                     "changes_pages", "directory_pages")),
        "ferry_api": details.get("api_requests"),
        "ferry_retries": details.get("api_retries"),
        "ferry_tokens": details.get("tokens_fetched"),
        "users": details.get("users", []),
        "recon": details.get("reconciliation_status"),
        "user_limit": opts.get("user_concurrency"),
        "server_limit": lim["user_concurrency"],
        "expected": expected(dom),
        "domain": dom,
        "bag": bag,
    })
    return d


def problems(r, d):
    out = summary_problems(r["summary"])
    e, b, dom = d["expected"], d["bag"], d["domain"]
    if d["items"] != e["items"]:
        out.append("archived %d items, the active users' data is %d" % (d["items"], e["items"]))
    for k in ("messages", "files", "exports"):
        if b[k] != e[k]:
            out.append("archived %d %s, expected %d" % (b[k], k, e[k]))
    if d["recon"] != "ok":
        out.append("reconciliation %s" % d["recon"])
    if len(d["users"]) != dom["active_users"] or any(u.get("suspended") for u in d["users"]):
        out.append("exported %d users, the domain has %d active" % (len(d["users"]), dom["active_users"]))
    if d["max_conc"] > d["server_limit"]:
        out.append("%d requests in flight for one user (the sandbox's limit: %d)" % (d["max_conc"], d["server_limit"]))
    return out


def describe(d):
    b = d["bag"]
    return ("%d messages, %d files, %d exports; max %d in flight per user (ferry's limit %s, the sandbox's %d),"
            " %d 429s, %s API requests, %d tokens"
            % (b["messages"], b["files"], b["exports"], d["max_conc"], d["user_limit"], d["server_limit"],
               d["conc_429"] + d["throttled"], fmt_int(d["api"]), d["tokens"]))


def report(runs, cfg, w):
    dom, e, b = runs[0]["domain"], runs[0]["expected"], runs[0]["bag"]
    drive_bytes = b["file_bytes"] + b["export_bytes"]
    w("Domain (%s): %s active users (and one suspended, not exported) and a shared drive. "
      "Gmail: %s messages exported (%s MB of MIME; 4 per mailbox in Spam and Trash left out, as by "
      "default). Drive as seeded: %s binary files of **%s bytes (%.3f GiB)** — the largest %s MiB — "
      "and %s Google Docs, Sheets, Slides and Drawings; exported: %s files of %s bytes (the rest is "
      "one trashed file per user and the orphaned shared drive's, left out) and %s exports (ODF) "
      "of %s bytes, so %s MB of Drive. %s items recorded without content (shortcuts, forms, "
      "files shared with a user and archived under their owner). **%s items** per export."
      % (cfg.get("domain", "?"), dom["active_users"], fmt_int(b["messages"]),
         fmt_int(round(b["message_bytes"] / 1e6)), fmt_int(dom["binary_files"]), fmt_int(dom["binary_bytes"]),
         dom["binary_bytes"] / 2**30, fmt_int(round(b["largest"] / 2**20)), fmt_int(dom["native_files"]),
         fmt_int(b["files"]), fmt_int(b["file_bytes"]), fmt_int(b["exports"]), fmt_int(b["export_bytes"]),
         fmt_int(round(drive_bytes / 1e6)), fmt_int(b["without_content"]), fmt_int(e["items"])))
    w("")
    runs_table(w, "API latency", runs, ["max in flight per user", "429s", "API requests", "access tokens"],
               lambda d: ["%d" % d["max_conc"], "%d" % (d["conc_429"] + d["throttled"]), fmt_int(d["api"]),
                          "%d" % d["tokens"]])
    limits = sorted({(d["user_limit"], d["server_limit"]) for d in runs})
    within = all(d["max_conc"] <= (d["user_limit"] or d["server_limit"]) for d in runs)
    no429 = all(d["conc_429"] + d["throttled"] == 0 for d in runs)
    w("Every export was complete (exit code 0, every message, file and export of the active users, "
      "reconciliation `ok`). Requests in flight per user: ferry's `--user-concurrency` %s, the "
      "sandbox's limit %s; %s; %s."
      % (" / ".join(str(a) for a, _ in limits), " / ".join(str(b) for _, b in limits),
         "ferry stayed within its own limit in every run" if within
         else "**more than ferry's own limit in some run**",
         "the sandbox never had to refuse a request (no 429)" if no429
         else "the sandbox refused some requests with 429 (ferry retried them)"))
    w("")
    w(CPU_COLUMNS + " API requests counted by the sandbox (Directory, Gmail, Drive; the token "
      "endpoint apart): %s; by ferry: %s; ferry's retries: %s. Of the sandbox's, per export: %s "
      "`messages.get`, %s downloads of Drive content (%s of them exports), %s list pages."
      % (", ".join(fmt_int(d["api"]) for d in runs), ", ".join(fmt_int(d["ferry_api"] or 0) for d in runs),
         ", ".join(str(d["ferry_retries"]) for d in runs), fmt_int(runs[0]["messages_get"]),
         fmt_int(runs[0]["downloads"]), fmt_int(runs[0]["exports_served"]), fmt_int(runs[0]["pages"])))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "users":
        sys.exit(users(sys.argv[2], sys.argv[3]))
    sys.exit(helper_main(sys.argv[1:], __doc__, "google", derive, problems, describe, report))
