#!/usr/bin/env python3
"""Helper for bench/backup.sh: makes the tree, changes 1% of it, measures what each run wrote into
its repository, and writes the markdown report.

    backuphelper.py gen ROOT COUNT SEED
        COUNT files in nested folders under ROOT (ROOT/dNN/dN/dN/fNNNNNN.bin, 50 files a folder),
        sizes log-uniform from 1 to 64 KiB, pseudo-random content from SEED (incompressible, the
        same every time). Prints `files bytes`.
    backuphelper.py change COUNT SEED ROOT...
        the same change in every ROOT (copies of one tree): new content (and size) for 0.5% of
        COUNT files, 0.25% new files, 0.25% deleted. Prints `modified added deleted`.
    backuphelper.py payload ROOT
        `files bytes` of the regular files under ROOT.
    backuphelper.py written REPO SNAP OUT.json
        what changed in the folder REPO since the listing SNAP (a JSON file this command wrote
        last time; missing: an empty folder): the files new or rewritten, bytes and count, by
        top-level folder (`runs/<id>` apart), and the files' bytes in all, into OUT.json; then
        SNAP is the new listing.
    backuphelper.py report RUNSDIR MACHINE.tsv CONFIG.tsv [DOCS.md]
        the tables of every run under RUNSDIR, on stdout and, given DOCS.md, between
        `<!-- bench-backup:begin -->` and `<!-- bench-backup:end -->` in it (the markers are
        added at the end if missing), leaving everything else in the file alone.

A run's folder (bench/backup.sh, `measure`) holds meta.tsv (tool, source, run, wall_ns, cpu_s,
rss_kib, busy_ticks, server_ticks, clk_tck, payload_files, payload_bytes, du_sb, du_disk, and for
the S3 sandbox log_from and log_to: the byte range of its log this run made), stdout (ferry's
`backup --json` or restic's `backup --json` lines) and written.json (`written`).
"""

import json
import os
import random
import sys
from collections import Counter, OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fmt_int, fmt_s, publish, read_kv, run_header, targets_table  # noqa: E402

BEGIN = "<!-- bench-backup:begin -->"
END = "<!-- bench-backup:end -->"

# Targets from the issue.
NOCHANGE_MAX_WALL = 0.05  # a no-change run under 5% of the first run's wall time
NOCHANGE_MAX_WRITTEN = 1 << 20  # under 1 MiB written beyond its run record
REPO_MAX_OVERHEAD = 0.05  # repository size within 5% of the payload

PER_FOLDER = 50
MIN_SIZE, MAX_SIZE = 1024, 64 * 1024


# --- The tree ----------------------------------------------------------------------------------
def rel_path(i):
    leaf = i // PER_FOLDER
    return os.path.join("d%02d" % (leaf // 100), "d%d" % (leaf // 10 % 10), "d%d" % (leaf % 10), "f%06d.bin" % i)


def content(rnd):
    return rnd.randbytes(int(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** rnd.random()))


def write(roots, rel, data):
    for root in roots:
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def gen(root, count, seed):
    rnd = random.Random("tree-%s" % seed)
    total = 0
    for i in range(int(count)):
        data = content(rnd)
        write([root], rel_path(i), data)
        total += len(data)
    print(count, total)


def change(count, seed, *roots):
    """0.5% modified, 0.25% added, 0.25% deleted (at least one each), chosen among the files of
    the first root; the added files go in the folders of existing ones, numbered after COUNT."""
    count = int(count)
    rnd = random.Random("change-%s" % seed)
    files = sorted(os.path.relpath(os.path.join(d, n), roots[0]) for d, _, ns in os.walk(roots[0]) for n in ns)
    n_mod, n_add, n_del = max(1, count // 200), max(1, count // 400), max(1, count // 400)
    picked = rnd.sample(files, n_mod + n_del)
    for rel in picked[:n_mod]:
        write(roots, rel, content(rnd))
    for rel in picked[n_mod:]:
        for root in roots:
            os.remove(os.path.join(root, rel))
    for j in range(n_add):
        near = os.path.dirname(rnd.choice(files))
        write(roots, os.path.join(near, "new%06d.bin" % (count + j)), content(rnd))
    print(n_mod, n_add, n_del)


def payload(root):
    n = total = 0
    for d, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(d, name))
            n, total = n + 1, total + st.st_size
    print(n, total)


# --- What a run wrote --------------------------------------------------------------------------
def listing(root):
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def group(rel):
    parts = rel.split(os.sep)
    if parts[0] == "runs" and len(parts) > 2:
        return "runs/" + parts[1]
    return parts[0] if len(parts) > 1 else "(top)"


def written(repo, snap, out):
    try:
        with open(snap) as f:
            before = json.load(f)
    except FileNotFoundError:
        before = {}
    after = listing(repo)
    by = {}
    files = total = 0
    for rel, v in after.items():
        if before.get(rel) != v:
            g = by.setdefault(group(rel), [0, 0])
            g[0] += 1
            g[1] += v[0]
            files, total = files + 1, total + v[0]
    with open(out, "w") as f:
        json.dump({"files": files, "bytes": total, "by": by, "repo_files": len(after),
                   "repo_bytes": sum(v[0] for v in after.values()),
                   "removed": sum(1 for rel in before if rel not in after)}, f, sort_keys=True)
    with open(snap, "w") as f:
        json.dump(after, f)


# --- The report --------------------------------------------------------------------------------
def last_json(text, want=None):
    """TEXT as one JSON object (ferry's summary), or its last JSON line (with message_type WANT, if
    given: restic's summary)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    found = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if want is None or o.get("message_type") == want:
                found = o
    return found


def server_requests(log, start, end):
    """Requests by S3 operation in bytes START..END of the sandbox's log (s3s's debug line
    `resolved route op=…` is one per request)."""
    ops = Counter()
    with open(log, "rb") as f:
        f.seek(start)
        for line in f.read(end - start).decode("utf-8", "replace").splitlines():
            if "resolved route" in line:
                i = line.find("op=")
                if i != -1:
                    ops[line[i + 3:].split()[0]] += 1
    return ops


def load(d, server_log):
    m = read_kv(os.path.join(d, "meta.tsv"))
    r = {"tool": m["tool"], "source": m["source"], "run": int(m["run"]), "dir": d}
    for k in ("wall_ns", "rss_kib", "busy_ticks", "server_ticks", "clk_tck", "payload_files", "payload_bytes",
              "du_sb", "du_disk"):
        r[k] = int(m[k])
    r["wall"] = r["wall_ns"] / 1e9
    r["cpu"] = float(m["cpu_s"])
    hz = r["clk_tck"]
    r["server_cores"] = r["server_ticks"] / hz / r["wall"]
    r["other_cores"] = max(0.0, r["busy_ticks"] / hz - r["server_ticks"] / hz - r["cpu"]) / r["wall"]
    with open(os.path.join(d, "written.json")) as f:
        r["written"] = json.load(f)
    with open(os.path.join(d, "stdout"), encoding="utf-8", errors="replace") as f:
        out = f.read()
    r["requests"] = None
    if "log_from" in m and server_log:
        r["requests"] = server_requests(server_log, int(m["log_from"]), int(m["log_to"]))
    by = r["written"]["by"]
    if r["tool"] == "ferry":
        s = last_json(out) or {}
        c = s.get("counts", {})
        r["summary"] = s
        r["listed"], r["unchanged"] = c.get("listed"), c.get("unchanged")
        r["new"] = (c.get("added") or 0) + (c.get("changed") or 0)
        r["removed"] = c.get("removed")
        r["read"] = c.get("bytes_read")
        r["stored"] = c.get("bytes_written")
        r["blobs"] = c.get("blobs_written")
        r["record"] = by.get("runs/%s" % s.get("run"), [0, 0])[1]
        r["ok"] = s.get("status") == "completed" and s.get("exit_code") == 0
    else:
        s = last_json(out, "summary") or {}
        r["summary"] = s
        r["listed"] = s.get("total_files_processed")
        r["unchanged"] = s.get("files_unmodified")
        r["new"] = (s.get("files_new") or 0) + (s.get("files_changed") or 0)
        r["removed"] = None
        r["read"] = s.get("total_bytes_processed")
        r["stored"] = s.get("data_added")
        r["blobs"] = (s.get("data_blobs") or 0) + (s.get("tree_blobs") or 0)
        r["record"] = by.get("snapshots", [0, 0])[1]
        r["ok"] = bool(s)
    r["beyond"] = r["written"]["bytes"] - r["record"]
    return r


def mib(b):
    return "%.2f" % (b / 2**20) if b < 10 * 2**20 else fmt_int(round(b / 2**20))


def fmt_b(b):
    """Bytes: exact under 10 KiB, else KiB or MiB."""
    if b is None:
        return "–"
    if b < 10 * 1024:
        return "%s B" % fmt_int(b)
    if b < 10 * 2**20:
        return "%.1f KiB" % (b / 1024)
    return "%s MiB" % fmt_int(round(b / 2**20))


def fmt_req(ops):
    if ops is None:
        return "n/a"
    total = sum(ops.values())
    parts = ", ".join("%s %s" % (fmt_int(n), op) for op, n in sorted(ops.items(), key=lambda x: -x[1]))
    return "%s (%s)" % (fmt_int(total), parts) if parts else "0"


RUN_NAMES = {1: "1 first", 2: "2 no change", 3: "3 after 1% changed"}


def table(w, runs, with_requests):
    heads = ["tool", "run", "wall s", "items (unchanged)", "new or changed", "read", "stored (own count)",
             "written into the repo", "of which run record", "written beyond the record", "repo du -sb",
             "repo ÷ payload", "on disk", "CPU s", "peak RSS", "other CPU"]
    if with_requests:
        heads.append("S3 requests")
    w("| " + " | ".join(heads) + " |")
    w("| --- | --- |" + " ---: |" * (len(heads) - 2))
    for r in runs:
        row = [r["tool"], RUN_NAMES.get(r["run"], str(r["run"])), fmt_s(r["wall"]),
               "%s (%s)" % (fmt_int(r["listed"] or 0), fmt_int(r["unchanged"] or 0)),
               fmt_int(r["new"] or 0) + ("" if r["removed"] is None else ", %s removed" % fmt_int(r["removed"])),
               fmt_b(r["read"]), fmt_b(r["stored"]),
               "%s in %s files" % (fmt_b(r["written"]["bytes"]), fmt_int(r["written"]["files"])),
               fmt_b(r["record"]), fmt_b(r["beyond"]), fmt_b(r["du_sb"]),
               "%.3f" % (r["du_sb"] / r["payload_bytes"]), fmt_b(r["du_disk"]), "%.1f" % r["cpu"],
               "%.0f MiB" % (r["rss_kib"] / 1024), "%.2f cores" % r["other_cores"]]
        if with_requests:
            row.append(fmt_req(r["requests"]))
        w("| " + " | ".join(row) + " |")
    w("")


def targets_of(source, ferry, targets):
    first, nochange = ferry.get(1), ferry.get(2)
    if first and nochange:
        ratio = nochange["wall"] / first["wall"]
        targets.append(("%s: no-change run < %.0f%% of the first run's wall time" % (source, NOCHANGE_MAX_WALL * 100),
                        "%.1f%% (%s s of %s s)" % (ratio * 100, fmt_s(nochange["wall"]), fmt_s(first["wall"])),
                        ratio < NOCHANGE_MAX_WALL))
        targets.append(("%s: no-change run writes < 1 MiB beyond its run record" % source,
                        "%s (run record %s)" % (fmt_b(nochange["beyond"]), fmt_b(nochange["record"])),
                        nochange["beyond"] < NOCHANGE_MAX_WRITTEN))
    if first:
        over = first["du_sb"] / first["payload_bytes"] - 1
        targets.append(("%s: repository within %.0f%% of the payload after the first run (du -sb)"
                        % (source, REPO_MAX_OVERHEAD * 100),
                        "%+.1f%% (%s for %s)" % (over * 100, fmt_b(first["du_sb"]), fmt_b(first["payload_bytes"])),
                        abs(over) <= REPO_MAX_OVERHEAD))


def report(runsdir, machine, config, docs=None):
    cfg = read_kv(config)
    server_log = cfg.get("server log")
    runs = []
    for name in sorted(os.listdir(runsdir)):
        d = os.path.join(runsdir, name)
        if os.path.isfile(os.path.join(d, "written.json")):
            runs.append(load(d, server_log))
    if not runs:
        sys.stderr.write("no runs\n")
        return 1
    lines = []
    w = lines.append
    run_header(w, "bench/backup.sh", cfg, machine)
    w("**Tree.** %s; the change before run 3: %s. Payload after run 1: %s files, %s bytes (%s MiB); "
      "after run 3: %s files, %s bytes."
      % (cfg.get("tree", "?"), cfg.get("change", "?"), fmt_int(runs[0]["payload_files"]),
         fmt_int(runs[0]["payload_bytes"]), mib(runs[0]["payload_bytes"]),
         fmt_int(runs[-1]["payload_files"]), fmt_int(runs[-1]["payload_bytes"])))
    w("")
    cmds = [(k[4:], v) for k, v in cfg.items() if k.startswith("cmd:")]
    if cmds:
        w("**Commands** (each repository fresh before run 1):")
        w("")
        for label, cmd in cmds:
            w("- %s: `%s`" % (label, cmd))
        w("")
    targets = []
    by_source = OrderedDict()
    for r in runs:
        by_source.setdefault(r["source"], []).append(r)
    for source, rs in by_source.items():
        rs.sort(key=lambda r: (r["tool"] != "ferry", r["tool"], r["run"]))
        w("### %s" % cfg.get("title:" + source, source))
        w("")
        table(w, rs, any(r["requests"] is not None for r in rs))
        for tool in sorted({r["tool"] for r in rs}, key=lambda t: t != "ferry"):
            t = {r["run"]: r for r in rs if r["tool"] == tool}
            if 1 in t and 2 in t:
                w("- %s: no-change ÷ first wall time %.1f%%; after 1%% changed ÷ first %.1f%%; repository "
                  "÷ payload after run 1 %.3f (du -sb), %.3f (files' bytes), %.3f (on disk)."
                  % (tool, 100 * t[2]["wall"] / t[1]["wall"], 100 * t[3]["wall"] / t[1]["wall"] if 3 in t else 0,
                     t[1]["du_sb"] / t[1]["payload_bytes"], t[1]["written"]["repo_bytes"] / t[1]["payload_bytes"],
                     t[1]["du_disk"] / t[1]["payload_bytes"]))
        w("")
        ferry = {r["run"]: r for r in rs if r["tool"] == "ferry"}
        targets_of(cfg.get("short:" + source, source), ferry, targets)
    bad = [r for r in runs if not r["ok"]]
    if bad:
        w("**Runs that did not complete:** %s." % ", ".join("%s %s run %d" % (r["tool"], r["source"], r["run"])
                                                          for r in bad))
        w("")
    w("### Targets")
    w("")
    targets_table(w, targets)
    if cfg.get("notes"):
        w(cfg["notes"])
    publish(lines, docs, BEGIN, END)
    return 0


def main(argv):
    cmds = {"gen": (gen, 3), "payload": (payload, 1), "written": (written, 3)}
    if argv and argv[0] in cmds and len(argv) == cmds[argv[0]][1] + 1:
        cmds[argv[0]][0](*argv[1:])
        return 0
    if len(argv) >= 4 and argv[0] == "change":
        change(*argv[1:])
        return 0
    if len(argv) in (4, 5) and argv[0] == "report":
        return report(*argv[1:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
