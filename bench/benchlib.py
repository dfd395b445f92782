"""Shared by the bench helpers (helper.py, s3helper.py, m365helper.py, googlehelper.py,
backuphelper.py): reading `key<TAB>value` files, formatting numbers and times, writing a results
block into docs/benchmarks.md, and (for the sandbox export benchmarks, m365 and google) reading
the records of one export and the lines every such report has.

Not a script: the helpers import it from their own folder.
"""

import json
import os
import sys
from collections import OrderedDict


def read_kv(path):
    """The `key<TAB>value` lines of PATH, in order (blank lines skipped)."""
    out = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                k, _, v = line.partition("\t")
                out[k] = v
    return out


def fmt_s(x):
    """Seconds with 2, 1 or 0 decimals, by size."""
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def spread(runs):
    """` (min–max)` of RUNS.seconds, or nothing for a single run."""
    if len(runs.seconds) < 2:
        return ""
    return " (%s–%s)" % (fmt_s(min(runs.seconds)), fmt_s(max(runs.seconds)))


def kv_sentence(title, items):
    """`**Title.** k: v; k: v.` from (key, value) pairs."""
    return "**%s.** " % title + "; ".join("%s: %s" % (k, v) for k, v in items) + "."


def targets_table(w, targets):
    """The `| target | measured | result |` table of (target, measured, ok) rows, then a blank line."""
    w("| target | measured | result |")
    w("| --- | --- | --- |")
    for t, m, ok in targets:
        w("| %s | %s | %s |" % (t, m, "**met**" if ok else "**MISSED**"))
    w("")


def publish(lines, docs, begin, end):
    """Prints the markdown LINES on stdout and, given DOCS, writes them into that file between
    the BEGIN and END markers (added at the end if missing), leaving the rest of it alone."""
    text = "\n".join(lines).rstrip() + "\n"
    sys.stdout.write(text)
    if docs:
        splice(docs, text, begin, end)


def splice(path, text, begin, end):
    block = "%s\n%s%s" % (begin, text, end)
    try:
        with open(path, encoding="utf-8") as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n\n"
    b, e = doc.find(begin), doc.find(end)
    if b != -1 and e != -1 and e > b:
        doc = doc[:b] + block + doc[e + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, path)
    sys.stderr.write("wrote results into %s\n" % path)


def fmt_int(n):
    """An integer with thousands separators: 106,101."""
    return "{:,}".format(n)


# --- Sandbox export benchmarks (bench/m365.sh, bench/google.sh) -------------------------------
# One export's records are a folder (see `measure_export` in bench/lib.sh): summary.json
# (`ferry export --json`), run.json (the bag's ferry/run.json), before.json and after.json (the
# sandbox's /_sandbox/stats), time (`/usr/bin/time -f '%e %U %S %M'`), server_rss (the sandbox's
# VmHWM in KiB) and meta.tsv (integers: latency_ms, concurrency, wall_ns, busy_ticks,
# server_ticks, clk_tck, verify_ns).


def load_run(d):
    """The records of the export in folder D."""
    r = {}
    for name in ("summary", "run", "before", "after"):
        with open(os.path.join(d, name + ".json")) as f:
            r[name] = json.load(f)
    with open(os.path.join(d, "time")) as f:
        _wall, user, sys_, rss = f.read().split()[-4:]
    r["user"], r["sys"] = float(user), float(sys_)
    r["cpu"] = r["user"] + r["sys"]
    r["rss_kib"] = int(rss)
    r["meta"] = {k: int(v) for k, v in read_kv(os.path.join(d, "meta.tsv")).items()}
    try:
        with open(os.path.join(d, "server_rss")) as f:
            r["server_rss_kib"] = int(f.read().strip() or 0)
    except (OSError, ValueError):
        r["server_rss_kib"] = 0
    r["dir"] = d
    return r


def derive_run(r):
    """What every report says about one export R (from `load_run`): the settings, items, bytes,
    speed, ferry's CPU and memory, and the cores the sandbox and everything else kept busy."""
    s, m = r["summary"], r["meta"]
    wall = m["wall_ns"] / 1e9
    hz = m["clk_tck"]
    items = s["archived_items"]
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
        "details": r["run"]["sources"][0].get("details", {}),
        "verify": m.get("verify_ns"),
    }


def summary_problems(s):
    """What is wrong with an export's JSON summary S (an empty list if it is complete)."""
    out = []
    if s.get("status") != "complete" or s.get("exit_code") != 0:
        out.append("export status %s, exit code %s" % (s.get("status"), s.get("exit_code")))
    if s.get("failed_items"):
        out.append("%d items failed" % s["failed_items"])
    return out


def run_line(d):
    """The start of the line a check prints about one export D (from `derive_run`)."""
    return ("  %d items, %.1f MB in %.1f s: %.0f items/s, %.1f MB/s, %.2f CPU-s/1000 items, peak RSS %.0f MiB"
            % (d["items"], d["bytes"] / 1e6, d["wall"], d["items_s"], d["mb_s"], d["cpu_per_k"], d["rss_mib"]))


def print_problems(problems):
    """Prints each problem; 1 if there is any (the exit code of a check), else 0."""
    for x in problems:
        sys.stderr.write("  PROBLEM: %s\n" % x)
    return 1 if problems else 0


def load_runs(runsdir, derive):
    """DERIVE(load_run(d)) of every export under RUNSDIR, by latency, then concurrency."""
    runs = []
    for name in sorted(os.listdir(runsdir)):
        d = os.path.join(runsdir, name)
        if os.path.isfile(os.path.join(d, "meta.tsv")) and os.path.isfile(os.path.join(d, "run.json")):
            runs.append(derive(load_run(d)))
    runs.sort(key=lambda x: (x["latency"], x["concurrency"]))
    return runs


def begin_report(runsdir, derive, script, machine, config):
    """(runs, cfg, lines): every export under RUNSDIR (`load_runs`), CONFIG's keys, and the report's
    first lines (`run_header`); None if there is no run."""
    runs = load_runs(runsdir, derive)
    if not runs:
        sys.stderr.write("no runs\n")
        return None
    cfg = read_kv(config)
    lines = []
    run_header(lines.append, script, cfg, machine)
    return runs, cfg, lines


def run_header(w, script, cfg, machine):
    """The report's first lines: which script made it and when (CFG, the config.tsv's keys), then a
    table of the machine (MACHINE, a machine.tsv path) and of CFG's server, destination, quiet gate
    and command."""
    w("_Generated by `%s` (%s run, %s)._" % (script, cfg.get("mode", "?"), cfg.get("date", "?")))
    w("")
    w("| machine | |")
    w("| --- | --- |")
    for k, v in read_kv(machine).items():
        w("| %s | %s |" % (k, v))
    for k in ("server", "destination", "quiet gate", "command"):
        if k in cfg:
            w("| %s | %s |" % (k, cfg[k].replace("|", "\\|")))
    w("")


def runs_table(w, latency, runs, heads, cells):
    """The table of RUNS, a row each: the latency (column LATENCY), the columns every report has
    (concurrency, items, MB, wall s, items/s, MB/s, ferry's CPU per 1,000 items and peak RSS,
    sandbox and other CPU), then the columns HEADS, CELLS(d) (strings) of each run; a blank line."""
    hs = [latency, "--concurrency", "items", "MB", "wall s", "items/s", "MB/s", "ferry CPU s / 1,000 items",
          "ferry peak RSS", "sandbox CPU", "other CPU"] + heads
    w("| " + " | ".join(hs) + " |")
    w("|" + " ---: |" * len(hs))
    for d in runs:
        row = ["%d ms" % d["latency"], "%d" % d["concurrency"], fmt_int(d["items"]), fmt_int(round(d["bytes"] / 1e6)),
               "%.1f" % d["wall"], fmt_int(round(d["items_s"])), "%.1f" % d["mb_s"], "%.3f" % d["cpu_per_k"],
               "%.0f MiB" % d["rss_mib"], "%.2f cores" % d["server_cores"], "%.2f cores" % d["other_cores"]]
        w("| " + " | ".join(row + cells(d)) + " |")
    w("")


CPU_COLUMNS = ("CPU columns: *ferry* is user + system time of `ferry export`; *sandbox* and *other* are "
               "cores busy on average during the export (the sandbox generates every byte it serves; other "
               "is everything else on the machine).")


def run_footer(w, runs):
    """The report's last lines: the sandbox's peak RSS and (with VERIFY=1) `ferry verify` times."""
    w("")
    w("Sandbox peak RSS per export: %s MiB." % ", ".join("%.0f" % d["server_rss_mib"] for d in runs))
    if any(d["verify"] for d in runs):
        w("")
        w("`ferry verify` of each bag (untimed in the table): %s s."
          % ", ".join("%.1f" % (d["verify"] / 1e9) for d in runs if d["verify"]))


def check_run(rundir, derive, problems, describe):
    """Prints a line about the export in RUNDIR (`run_line`, then DESCRIBE(d)) and its PROBLEMS(r,
    d); 1 if it has any. D is DERIVE(r), R its records (`load_run`)."""
    r = load_run(rundir)
    d = derive(r)
    sys.stderr.write("%s; %s\n" % (run_line(d), describe(d)))
    return print_problems(problems(r, d))


def helper_main(argv, doc, name, derive, problems, describe, report):
    """The command line of the helper of bench/NAME.sh: `check RUNDIR` (`check_run`), or
    `report RUNSDIR MACHINE.tsv CONFIG.tsv [DOCS.md]`: REPORT(runs, cfg, w) writes the body of the
    report (`begin_report` its start, `run_footer` its end) with w, which is printed and, given
    DOCS.md, put between the bench-NAME markers in it (`publish`)."""
    if len(argv) == 2 and argv[0] == "check":
        return check_run(argv[1], derive, problems, describe)
    if len(argv) in (4, 5) and argv[0] == "report":
        begun = begin_report(argv[1], derive, "bench/%s.sh" % name, argv[2], argv[3])
        if not begun:
            return 1
        runs, cfg, lines = begun
        report(runs, cfg, lines.append)
        run_footer(lines.append, runs)
        publish(lines, argv[4] if len(argv) == 5 else None,
                "<!-- bench-%s:begin -->" % name, "<!-- bench-%s:end -->" % name)
        return 0
    sys.stderr.write(doc)
    return 2
