#!/usr/bin/env python3
"""The summary of scripts/bench-compare.sh: one markdown table and one chart.

  bench_compare_report.py [--read-20 TSV] [--read-5 TSV] [--write-20 TSV]
                          [--start TSV] [--import TSV] [--meta KEY=VALUE]...
                          [--chart PNG]

Each TSV is the --raw output of one part (bench-lower.sh, bench-write.sh,
bench-run.sh, bench-import.sh): workload, candidate, run, start, end. Prints the
markdown summary: per workload the median (min-max) of every candidate, the
ratios to kernel overlayfs and to fuse-overlayfs, and issue #9's target with
whether strata meets it; then container start beside bwrap and ch-run, and import
beside umoci. With --chart, draws the same ratios as a PNG (needs matplotlib:
Debian's python3-matplotlib); without matplotlib it says so and exits 2 after
printing the table.
"""

import argparse
import collections
import statistics
import sys

from bench_lower_report import fmt

UNION = ["strata", "strata-overlayfs", "fuse-overlayfs", "kernel-overlay", "native"]
RATIOS = [("strata", "kernel-overlay"), ("strata", "fuse-overlayfs"),
          ("strata-overlayfs", "kernel-overlay"), ("fuse-overlayfs", "kernel-overlay")]

# (part, workload key in its TSV, label, target ratio strata/kernel-overlay or None).
UNION_ROWS = [
    ("read-20", "stat walk, warm", "stat walk, warm", 1.2),
    ("read-20", "stat walk, first after mount", "stat walk, first after mount", 1.5),
    ("read-20", "read all, warm", "read all, warm", 1.3),
    ("read-20", "read all, first after mount", "read all, first after mount", None),
    ("read-20", "python imports, warm", "python imports, warm", 1.2),
    ("read-20", "python imports, first after mount", "python imports, first after mount", 1.2),
    ("write-20", "append", "copy-up: append 1 byte to 1000 lower files", 1.5),
    ("write-20", "create", "create 5000 files in 50 new dirs", 2.0),
    ("write-20", "delete", "delete 1000 lower files", 2.0),
    ("read-5", "stat walk, warm", "stat walk, warm", None),
    ("read-5", "stat walk, first after mount", "stat walk, first after mount", None),
    ("read-5", "read all, warm", "read all, warm", None),
    ("read-5", "read all, first after mount", "read all, first after mount", None),
    ("read-5", "python imports, warm", "python imports, warm", None),
    ("read-5", "python imports, first after mount", "python imports, first after mount", None),
]
PART_TITLES = {"read-20": "20 layers", "write-20": "20 layers, writes", "read-5": "5 layers"}
# (part, candidate, reference, target ratio candidate/reference).
OTHER_ROWS = [
    ("start", "strata", "bwrap", 2.0),
    ("start", "strata", "ch-run", None),
    ("start", "strata-single", "bwrap", None),
    ("import", "strata", "umoci", 1.0),
]


def load(path):
    """{(workload, candidate): [seconds]} from a --raw TSV."""
    samples = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            workload, cand, _run, t0, t1 = line.rstrip("\n").split("\t")
            samples[(workload, cand)].append(float(t1) - float(t0))
    return samples


def cell(samples):
    if not samples:
        return "–"
    return f"{fmt(statistics.median(samples))} ({fmt(min(samples))}–{fmt(max(samples))})"


def ratio(parts, part, a, b, workload):
    s = parts.get(part, {})
    sa, sb = s.get((workload, a)), s.get((workload, b))
    if not sa or not sb or statistics.median(sb) <= 0:
        return None
    return statistics.median(sa) / statistics.median(sb)


def verdict(value, target):
    if target is None:
        return "", ""
    if value is None:
        return f"<= {target}x", "not measured"
    return f"<= {target}x", "met" if value <= target else "**missed**"


def union_table(parts):
    head = (["workload"] + UNION + [f"{a} / {b}" for a, b in RATIOS]
            + ["target (strata / kernel-overlay)", "strata"])
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 3) + "|---|---|")
    for part, key, label, target in UNION_ROWS:
        s = parts.get(part)
        if s is None or not any((key, c) in s for c in UNION):
            continue
        cells = [f"{PART_TITLES[part]}: {label}"] + [cell(s.get((key, c))) for c in UNION]
        for a, b in RATIOS:
            r = ratio(parts, part, a, b, key)
            cells.append("–" if r is None else f"{r:.2f}x")
        cells += verdict(ratio(parts, part, "strata", "kernel-overlay", key), target)
        print("| " + " | ".join(cells) + " |")


def other_table(parts):
    rows = [r for r in OTHER_ROWS if r[0] in parts]
    if not rows:
        return
    work = {"start": "container start (`true`)", "import": "import"}
    print("| workload | candidate | median s (min–max) | reference | median s (min–max)"
          " | candidate / reference | target | met |")
    print("|---|---|---:|---|---:|---:|---|---|")
    for part, cand, ref, target in rows:
        key = "container start" if part == "start" else "import"
        s = parts[part]
        if (key, cand) not in s or (key, ref) not in s:
            continue
        r = ratio(parts, part, cand, ref, key)
        goal, met = verdict(r, target)
        print(f"| {work[part]} | {cand} | {cell(s[(key, cand)])} | {ref} | {cell(s[(key, ref)])}"
              f" | {r:.2f}x | {goal} | {met} |")


def chart(parts, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"bench_compare_report: no chart: matplotlib is missing"
              f" (Debian: apt-get install python3-matplotlib)", file=sys.stderr)
        return False
    rows = [(p, k, label, t) for p, k, label, t in UNION_ROWS
            if p in ("read-20", "write-20") and ratio(parts, p, "strata", "kernel-overlay", k)]
    others = [(p, c, ref, t) for p, c, ref, t in OTHER_ROWS
              if ratio(parts, p, c, ref, "container start" if p == "start" else "import")]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 0.55 * max(len(rows), 4) + 2),
        gridspec_kw={"width_ratios": [3, 2]})
    cands = [("strata", "#1f77b4"), ("strata-overlayfs", "#7fb3e0"), ("fuse-overlayfs", "#d62728")]
    height = 0.8 / len(cands)
    for i, (cand, colour) in enumerate(cands):
        ys, xs = [], []
        for j, (p, k, _label, _t) in enumerate(rows):
            r = ratio(parts, p, cand, "kernel-overlay", k)
            if r is not None:
                ys.append(j + (i - 1) * height)
                xs.append(r)
        left.barh(ys, xs, height=height, color=colour, label=cand)
    for j, (_p, _k, _label, target) in enumerate(rows):
        if target:
            left.plot([target, target], [j - 0.45, j + 0.45], color="black", linewidth=2)
    left.axvline(1.0, color="grey", linestyle=":")
    left.set_yticks(range(len(rows)))
    left.set_yticklabels([label for _p, _k, label, _t in rows])
    left.invert_yaxis()
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _pos: f"{x:g}x"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xticks([t for t in (0.5, 1, 2, 5, 10, 20, 50) if t <= left.get_xlim()[1] * 1.01])
    left.set_xlabel("median time / kernel overlayfs's (log scale; black bar: target for strata)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    left.set_title("Union filesystems, 20-layer image")
    for j, (p, c, ref, target) in enumerate(others):
        r = ratio(parts, p, c, ref, "container start" if p == "start" else "import")
        right.barh(j, r, color="#1f77b4" if c == "strata" else "#7fb3e0")
        right.text(r, j, f" {r:.2f}x", va="center")
        if target:
            right.plot([target, target], [j - 0.45, j + 0.45], color="black", linewidth=2)
    right.axvline(1.0, color="grey", linestyle=":")
    right.set_xlim(0, right.get_xlim()[1] * 1.15)   # room for the labels
    right.set_yticks(range(len(others)))
    right.set_yticklabels([("start: " if p == "start" else "import: ") + f"{c} / {ref}"
                           for p, c, ref, _t in others])
    right.invert_yaxis()
    right.set_xlabel("median time ratio (black bar: target)")
    right.set_title("Container start and import")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for part in ("read-20", "read-5", "write-20", "start", "import"):
        p.add_argument(f"--{part}")
    p.add_argument("--meta", action="append", default=[])
    p.add_argument("--chart")
    args = vars(p.parse_args())
    parts = {}
    for part in ("read-20", "read-5", "write-20", "start", "import"):
        path = args[part.replace("-", "_")]
        if path:
            parts[part] = load(path)
    print("## Summary\n")
    for item in args["meta"]:
        key, _, value = item.partition("=")
        print(f"- {key}: {value}")
    print()
    union_table(parts)
    print()
    other_table(parts)
    print("""
Cells: median seconds (min–max) over the runs of one invocation, the candidates
alternated run by run; ratios are of medians. Each part's own report (below, or in
its .md file) says exactly what was run and checked.""")
    if args["chart"] and not chart(parts, args["chart"]):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
