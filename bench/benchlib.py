"""Shared by the bench helpers (helper.py, s3helper.py, m365helper.py): reading `key<TAB>value`
files, formatting times, and writing a results block into docs/benchmarks.md.

Not a script: the helpers import it from their own folder.
"""

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
