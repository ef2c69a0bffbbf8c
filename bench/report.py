#!/usr/bin/env python3
"""Turn bench/run.sh's results into the markdown table and the issue-7
target summary.

  report.py RESULTS.tsv MACHINE.md RSYNC_TIMEOUT

RESULTS.tsv rows: case, tool, status (ok|FAILED|TIMEOUT), seconds, bytes
sent, bytes received (over ssh, payload before encryption), peak RSS KiB,
remote peak RSS KiB, destination allocated bytes, note, CPU busy % just
before the run (the worst of its repetitions).
Several rows of one case and tool (runs interleaved with the peers' by
run.sh) become one: the median time, the largest RSS, the worst status.
Exit status: 0 all rows ok and all targets met, 1 a row FAILED, 3 every row
ok (or timed out as allowed) but a target not met.
"""
import sys

RSS_LIMIT_MIB = 256


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def human(n):
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


def mib(kib):
    return "-" if kib is None else "%.0f" % (kib / 1024)


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            p += [""] * (11 - len(p))
            sent, recv = num(p[4]), num(p[5])
            wire = None if sent is None and recv is None else (sent or 0) + (recv or 0)
            rows.append(dict(case=p[0], tool=p[1], status=p[2], secs=num(p[3]),
                             sent=sent, recv=recv, wire=wire, rss=num(p[6]),
                             rrss=num(p[7]), alloc=num(p[8]), note=p[9],
                             busy=num(p[10])))
    return merge_runs(rows)


def merge_runs(rows):
    """One row per (case, tool), in order of first appearance."""
    groups = {}
    for r in rows:
        groups.setdefault((r["case"], r["tool"]), []).append(r)
    out = []
    for key in dict.fromkeys((r["case"], r["tool"]) for r in rows):
        runs = groups[key]
        if len(runs) == 1:
            out.append(runs[0])
            continue
        m = dict(runs[-1])
        bad = [r for r in runs if r["status"] != "ok"]
        if bad:
            m = dict(bad[0])
        else:
            times = sorted(r["secs"] for r in runs)
            m["secs"] = times[(len(times) - 1) // 2]
            m["note"] = "median of %d runs interleaved with the peers': %s" % (
                len(runs), " ".join("%.2f" % r["secs"] for r in runs))
        for k in ("rss", "rrss", "busy"):
            vals = [r[k] for r in runs if r[k] is not None]
            m[k] = max(vals) if vals else None
        out.append(m)
    return out


def ref_of(rows, case):
    for r in rows:
        if r["case"] == case and r["tool"] == "sparsync":
            return r
    return None


def ratio(rows, r):
    """peer seconds / sparsync seconds; (value, is_lower_bound)."""
    ref = ref_of(rows, r["case"])
    if not ref or ref["status"] != "ok" or not ref["secs"] or r["secs"] is None:
        return None, False
    if r["status"] not in ("ok", "TIMEOUT"):
        return None, False
    return r["secs"] / max(ref["secs"], 0.01), r["status"] == "TIMEOUT"


def table(rows):
    out = ["| case | tool | seconds | wire bytes (both ways) | peak RSS MiB | remote RSS MiB"
           " | dest allocated | ratio (peer s / sparsync s) | CPU busy before | result |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        secs = "-" if r["secs"] is None else "%.2f" % r["secs"]
        if r["status"] == "TIMEOUT":
            secs = "> %.0f" % r["secs"]
        v, lower = ratio(rows, r)
        if r["tool"] == "sparsync":
            rt = "1.00 (ref)" if r["status"] == "ok" else "-"
        elif v is None:
            rt = "-"
        else:
            rt = ("> " if lower else "") + "%.2f" % v
        result = r["status"] + (": " + r["note"] if r["note"] else "")
        busy = "-" if r["busy"] is None else "%.0f%%" % r["busy"]
        cells = (r["case"], r["tool"], secs, human(r["wire"]), mib(r["rss"]),
                 mib(r["rrss"]), human(r["alloc"]), rt, busy, result)
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def find(rows, case, tool):
    for r in rows:
        if r["case"] == case and r["tool"] == tool:
            return r
    return None


def targets(rows):
    """[(text, met or None when not run)]"""
    res = []

    def ratio_target(case, tool, want, label):
        r = find(rows, case, tool)
        if not r or not ref_of(rows, case):
            res.append(("%s: not run" % label, None))
            return
        v, lower = ratio(rows, r)
        if v is None:
            res.append(("%s: no ratio (%s / sparsync %s)" % (
                label, r["status"], ref_of(rows, case)["status"]), False))
            return
        res.append(("%s: %s%.2fx (target >= %gx)" % (
            label, "> " if lower else "", v, want), v >= want))

    ratio_target("fs: push fresh (ssh)", "rsync -S", 5,
                 "fresh push of the fs image, sparsync vs rsync -S")
    ratio_target("fs: push fresh (ssh)", "tar -S | ssh", 5,
                 "fresh push of the fs image, sparsync vs tar -S | ssh")
    ratio_target("fs: push unchanged (ssh)", "rsync -S", 10,
                 "unchanged re-sync, sparsync vs rsync -S")
    ratio_target("fs: push unchanged (ssh)", "sparsync --no-digest", 1 / 0.6,
                 "unchanged raw re-sync with the digest file (dest_bytes_read 0, checked) takes"
                 " at most 60 % of --no-digest")
    ratio_target("fs.qcow2: push unchanged, --track (ssh)", "rsync -S", 30,
                 "unchanged --track re-sync of the fs image as qcow2 (only metadata read,"
                 " checked), sparsync vs rsync -S")
    for r in rows:
        if r["case"].startswith("fs.qcow2: push") and "changed" in r["case"] and \
                r["tool"] == "sparsync":
            res.append(("%s: source read within the dirty clusters + 16 MiB of metadata,"
                        " nothing read at the receiver (checked): %s" % (r["case"], r["status"]),
                        r["status"] == "ok"))
    scale = [r for r in rows if r["case"].startswith("track scale:") and r["tool"] == "sparsync"]
    if scale:
        ok = [r for r in scale if r["status"] == "ok" and r["secs"] is not None]
        if len(ok) == len(scale) and len(ok) > 1:
            lo, hi = min(r["secs"] for r in ok), max(r["secs"] for r in ok)
            res.append(("unchanged --track re-sync stays flat as the data grows (%s): %s s"
                        " (target: slowest within 1.5x of the fastest + 0.1 s)" % (
                            ", ".join(r["case"].split(", ")[1].split(" of")[0] for r in ok),
                            " / ".join("%.2f" % r["secs"] for r in ok)),
                        hi <= lo * 1.5 + 0.1))
        else:
            res.append(("unchanged --track scaling: a row failed", False))
    ratio_target("fs as RBD: push to qcow2 (ssh)", "rbd export | ssh dd", 3.0,
                 "an RBD image of the fs image pushed to a qcow2, sparsync vs rbd export | ssh dd")
    for r in rows:
        if r["case"].startswith("fs as RBD:") and "--track" in r["case"] and r["tool"] == "sparsync":
            res.append(("%s: read no more than the changed objects (checked): %s" % (
                r["case"], r["status"]), r["status"] == "ok"))
    ratio_target("fs.qcow2 via NBD: local raw", "nbdcopy", 1.0,
                 "an NBD export of the fs image to a local raw file, sparsync vs nbdcopy")
    for r in rows:
        if r["case"].startswith("fs.qcow2 via NBD:") and "--bitmap" in r["case"] and \
                r["tool"] == "sparsync":
            res.append(("%s: read no more than the dirty clusters (checked): %s" % (
                r["case"], r["status"]), r["status"] == "ok"))
    ratio_target("fs: local 1% re-sync, safe vs --inplace", "sparsync --inplace", 1 / 1.2,
                 "safe 1 % re-sync costs at most 20 % more than --inplace")
    ratio_target("fs: local raw->raw", "qemu-img convert", 1.0,
                 "local raw->raw, sparsync vs qemu-img convert")
    ratio_target("fs: local raw->qcow2", "qemu-img convert", 1.0,
                 "local raw->qcow2, sparsync vs qemu-img convert")

    for case, limit in (("1 TiB: local copy", 1.0), ("1 TiB: push fresh (ssh)", 2.0)):
        r = ref_of(rows, case)
        label = "%s with sparsync" % case
        if not r:
            res.append(("%s: not run" % label, None))
        elif r["status"] != "ok":
            res.append(("%s: %s" % (label, r["status"]), False))
        else:
            res.append(("%s: %.2f s (target < %g s)" % (label, r["secs"], limit),
                        r["secs"] < limit))

    sp = [r for r in rows if r["tool"].startswith("sparsync")]
    peaks = [(max(r["rss"] or 0, r["rrss"] or 0), r) for r in sp
             if r["rss"] is not None or r["rrss"] is not None]
    if not peaks:
        res.append(("peak RSS of sparsync: not measured", None))
    else:
        worst, wr = max(peaks, key=lambda p: p[0])
        res.append(("peak RSS of sparsync (either end), worst case: %.0f MiB in "
                    "'%s' (target < %d MiB)" % (worst / 1024, wr["case"], RSS_LIMIT_MIB),
                    worst / 1024 < RSS_LIMIT_MIB))
    return res


def wire_notes(rows):
    out = []
    for r in rows:
        if r["wire"] is None or r["status"] != "ok":
            continue
        out.append("- %s, %s: sent %s, received %s" % (
            r["case"], r["tool"], human(r["sent"]), human(r["recv"])))
    return out


def main(argv):
    if len(argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    rows = load(argv[1])
    with open(argv[2]) as f:
        machine = f.read().rstrip("\n")
    print("# sparsync benchmark\n")
    print(machine + "\n")
    print(table(rows) + "\n")
    print("Ratio: the peer's wall time divided by sparsync's in the same case"
          " (> 1 means sparsync is faster). Times include `sync`; peak RSS is the"
          " local process tree, remote RSS the process sshd started. TIMEOUT"
          " rows were killed after %s s. CPU busy before: share of both cores"
          " in use during the 0.3 s before the run (worst repetition); well"
          " above 0%% means other work shared the machine and the row is"
          " noisy.\n" % argv[3])
    print("## Targets\n")
    ts = targets(rows)
    for text, met in ts:
        print("- %s%s" % (text, {True: " — MET", False: " — NOT MET", None: ""}[met]))
    notes = wire_notes(rows)
    if notes:
        print("\n## Bytes on the wire\n")
        print("Payload handed to ssh, before encryption: sparsync's bytes_sent and"
              " bytes_received (--json), rsync's --stats totals, the size of tar's"
              " stream.\n")
        print("\n".join(notes))
    failed = [r for r in rows if r["status"] == "FAILED"]
    if failed:
        print("\n%d row(s) FAILED: %s" % (len(failed), "; ".join(
            "%s / %s" % (r["case"], r["tool"]) for r in failed)))
        return 1
    return 3 if any(m is False for _, m in ts) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
