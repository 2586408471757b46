#!/usr/bin/env python3
"""Statistics and tree comparison for scripts/bench-lower.sh.

  bench_lower_report.py compare NAME_A PREFIX_A NAME_B PREFIX_B
      compares PREFIX_A.tree/.md5 (one mount's listing) with PREFIX_B's and
      prints every difference, one line each, under a one-line summary
  bench_lower_report.py extras MOUNTPOINT > PREFIX.extra
      lists what find cannot print: every xattr (name and value) and, for each
      file with several links, the group of paths that share its inode
  bench_lower_report.py table TIMES.tsv [--meta KEY=VALUE]... [--rss FILE]
                                        [--unavailable NAME=WHY]...
                                        [--differences FILE]
      prints the markdown report: medians (min-max) per workload and candidate,
      and the ratios strata/kernel-overlay, strata/fuse-overlayfs,
      strata-overlayfs/kernel-overlay, strata-overlayfs/fuse-overlayfs and
      fuse-overlayfs/kernel-overlay

TIMES.tsv lines: workload, candidate, run, start, end (seconds since the epoch,
as bash's $EPOCHREALTIME gives them).
"""

import argparse
import collections
import os
import statistics
import sys

CANDIDATES = ["strata", "strata-overlayfs", "fuse-overlayfs", "kernel-overlay", "native"]
WORKLOADS = [
    "stat walk, warm",
    "read all, warm",
    "python imports, warm",
    "stat walk, first after mount",
    "read all, first after mount",
    "python imports, first after mount",
    "mount (until it answers)",
]
RATIOS = [("strata", "kernel-overlay"), ("strata", "fuse-overlayfs"),
          ("strata-overlayfs", "kernel-overlay"), ("strata-overlayfs", "fuse-overlayfs"),
          ("fuse-overlayfs", "kernel-overlay")]


# ---------------------------------------------------------------- compare

def read_tree(path):
    """path -> {field: value} from a listing written by bench-lower.sh."""
    entries = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            name, kind, mode, owner = parts[:4]
            fields = {"type": kind, "mode": mode, "owner": owner}
            for extra in parts[4:]:
                if extra.startswith("-> "):
                    fields["target"] = extra[3:]
                else:
                    key, _, value = extra.partition("=")
                    fields[key] = value
            entries[name] = fields
    return entries


def read_md5(path):
    sums = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            digest, name = line.rstrip("\n").split("  ", 1)
            sums[name[2:] if name.startswith("./") else name] = digest
    return sums


def extras(root):
    """Prints "path<TAB>xattr NAME=HEX" and "path<TAB>hardlinks P1 P2 ..." lines."""
    groups = collections.defaultdict(list)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames + filenames):
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, root)
            if rel == ".":
                continue
            st = os.lstat(full)
            try:
                names = os.listxattr(full, follow_symlinks=False)
            except OSError as e:
                out.append(f"{rel}\txattr list error {e.strerror}")
                names = []
            for x in sorted(names):
                try:
                    value = os.getxattr(full, x, follow_symlinks=False).hex()
                except OSError as e:
                    value = f"error {e.strerror}"
                out.append(f"{rel}\txattr {x}={value}")
            if not os.path.isdir(full) and st.st_nlink > 1:
                groups[(st.st_dev, st.st_ino)].append(rel)
    for paths in groups.values():
        paths.sort()
        for p in paths:
            out.append(f"{p}\thardlinks {' '.join(paths)}")
    sys.stdout.write("".join(line + "\n" for line in sorted(out)))


def read_extras(path):
    out = collections.defaultdict(set)
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            rel, _, what = line.rstrip("\n").partition("\t")
            out[rel].add(what)
    return out


def describe(fields):
    out = f"{fields['type']} {fields['mode']} {fields['owner']}"
    if "size" in fields:
        out += f" size={fields['size']}"
    if "target" in fields:
        out += f" -> {fields['target']}"
    return out


def compare(name_a, prefix_a, name_b, prefix_b):
    a, b = read_tree(prefix_a + ".tree"), read_tree(prefix_b + ".tree")
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    differ = []
    for path in sorted(set(a) & set(b)):
        fa, fb = a[path], b[path]
        keys = [k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)]
        # A directory's size and link count depend on the filesystem, never compared.
        if keys:
            differ.append((path, sorted(keys)))
    ma, mb = read_md5(prefix_a + ".md5"), read_md5(prefix_b + ".md5")
    content = sorted(p for p in set(ma) & set(mb) if ma[p] != mb[p])
    xa, xb = read_extras(prefix_a + ".extra"), read_extras(prefix_b + ".extra")
    extra = sorted(p for p in (set(xa) | set(xb)) & set(a) & set(b) if xa[p] != xb[p])
    label = f"{name_a} vs {name_b}"
    nx = sum(1 for ws in xb.values() for w in ws if w.startswith("xattr "))
    nh = len({w for ws in xb.values() for w in ws if w.startswith("hardlinks ")})
    if not (only_a or only_b or differ or content or extra):
        print(f"trees: {label}: identical ({len(a)} entries; names, types, modes, owners, "
              f"sizes, nlink, mtimes, link targets, contents, {nx} xattrs, "
              f"{nh} hardlink groups)")
        return
    counts = collections.Counter(k for _, keys in differ for k in keys)
    print(f"trees: {label}: WARNING: {len(a)} vs {len(b)} entries; {len(only_a)} only in "
          f"{name_a}, {len(only_b)} only in {name_b}, {len(differ)} differ in metadata "
          f"({', '.join(f'{k}: {n}' for k, n in sorted(counts.items())) or 'none'}), "
          f"{len(content)} differ in content, {len(extra)} in xattrs or hardlink groups")
    for path in only_a:
        why = ""
        if a[path]["type"] in ("c", "b") and path not in b:
            why = " [expected: a device node, which the overlay-format layers lack]"
        print(f"  only in {name_a}: /{path} ({describe(a[path])}){why}")
    for path in only_b:
        print(f"  only in {name_b}: /{path} ({describe(b[path])})")
    if any(a[p]["type"] in ("c", "b") for p in only_a):
        print("  (make-test-image.py cannot create device nodes other than whiteouts"
              " unprivileged, and leaves them out of the overlay-format layers)")
    for path, keys in differ:
        detail = ", ".join(f"{k} {a[path].get(k, '-')} vs {b[path].get(k, '-')}" for k in keys)
        print(f"  differs: /{path} ({a[path]['type']}): {detail}")
    for path in content:
        print(f"  content differs: /{path}")
    for path in extra:
        only = sorted(xa[path] - xb[path])
        detail = "; ".join([f"{name_a} has {w}" for w in only]
                           + [f"{name_b} has {w}" for w in sorted(xb[path] - xa[path])])
        why = ""
        if xb[path] <= xa[path] and all(w.startswith("xattr ") and not w.startswith("xattr user.")
                                        for w in only):
            why = " [expected: the overlay-format layers keep only user.* xattrs]"
        print(f"  differs: /{path}: {detail}{why}")


# ---------------------------------------------------------------- table

def fmt(secs):
    if secs >= 1:
        return f"{secs:.2f}"
    if secs >= 0.01:
        return f"{secs:.3f}"
    return f"{secs:.4f}"


def print_table(first, rows, candidates, samples, unavailable):
    """The markdown table: one row per (key, label) of ROWS, a median (min–max)
    cell per candidate ("unavailable" for one in UNAVAILABLE, a dict), then the
    RATIOS of medians among the candidates."""
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = [(a, b) for a, b in RATIOS if a in candidates and b in candidates]
    head = [first] + candidates + [f"{a} / {b}" for a, b in ratios]
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for key, label in rows:
        cells = [label]
        for c in candidates:
            s = samples.get((key, c))
            if s:
                cells.append(f"{fmt(med[(key, c)])} ({fmt(min(s))}–{fmt(max(s))})")
            else:
                cells.append("unavailable" if c in unavailable else "–")
        for a, b in ratios:
            if (key, a) in med and (key, b) in med and med[(key, b)] > 0:
                cells.append(f"{med[(key, a)] / med[(key, b)]:.2f}x")
            else:
                cells.append("–")
        print("| " + " | ".join(cells) + " |")


def print_meta(meta, unavailable):
    for item in meta:
        key, _, value = item.partition("=")
        print(f"- {key}: {value}")
    for c, why in unavailable.items():
        print(f"- {c}: not measured: {why}")
    print()


def table(times_path, meta, rss_path, differences_path, unavailable, python_unavailable):
    samples = collections.defaultdict(list)
    runs = set()
    with open(times_path) as f:
        for line in f:
            workload, cand, run, t0, t1 = line.rstrip("\n").split("\t")
            samples[(workload, cand)].append(float(t1) - float(t0))
            runs.add(int(run))
    unavailable = dict(u.split("=", 1) for u in unavailable)

    print("## strata read side beside strata-overlayfs, fuse-overlayfs, kernel overlayfs"
          " and native\n")
    print_meta(meta, unavailable)
    measured = [w for w in WORKLOADS if any((w, c) in samples for c in CANDIDATES)]
    print_table("workload", [(w, w) for w in measured], CANDIDATES, samples, unavailable)
    nruns = len(runs)
    nmounts = max((len(v) for (w, _), v in samples.items() if w == "mount (until it answers)"),
                  default=0)
    print(f"""
Cells: median seconds over {nruns} runs, (min–max); ratios are of medians. The
candidates alternate run by run, in a rotating order, over the same layers on one
filesystem. "Warm" follows one warm-up walk and read of the same mount. "First after
mount" is the first walk (or read) on a fresh mount; page cache and dentry cache
cannot be dropped unprivileged, so the backing files are cached: it measures the
union's own cold state (its dentries, inodes, attributes, open files), not the disk.
For native, a fresh bind mount of the flat copy: the same as warm. "Mount" is the
time until the mount answers (the remount before each "first" workload, {nmounts}
per candidate). Stat walk: `find M -xdev -printf '%i %s\\n' >/dev/null`; read all:
`tar -C M -cf - . | cat >/dev/null`; python imports: `chroot M python3 -I -B -c
'import json, email, asyncio, http.client'`.""")
    if python_unavailable and os.path.exists(python_unavailable):
        with open(python_unavailable) as f:
            why = f.read().strip()
        print(f"\nPython imports not measured: python3 does not run in this image ({why}).")
    if rss_path and os.path.exists(rss_path):
        with open(rss_path) as f:
            peaks = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        if peaks:
            print("\nDaemon peak RSS after the runs (VmHWM of the last mount): "
                  + ", ".join(f"{c} {v}" for c, v in peaks) + ".")
    print_differences(differences_path, "Tree checks against kernel overlayfs (before timing):")

def print_differences(path, heading, drop=""):
    """Prints the tree comparisons in PATH: its `trees: ` lines as a list under
    HEADING (each with the text DROP taken out), then the details in a block."""
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f]
    summary = [line for line in lines if line.startswith("trees: ")]
    if not summary:
        return
    print(f"\n{heading}\n")
    for line in summary:
        text = line[len("trees: "):]
        print(f"- {text.replace(drop, '') if drop else text}")
    details = [line for line in lines if not line.startswith("trees: ")]
    if details:
        print("\n```")
        for line in details[:60]:
            print(line.strip())
        if len(details) > 60:
            print(f"... and {len(details) - 60} more lines")
        print("```")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extras")
    e.add_argument("root")
    c = sub.add_parser("compare")
    c.add_argument("name_a")
    c.add_argument("prefix_a")
    c.add_argument("name_b")
    c.add_argument("prefix_b")
    t = sub.add_parser("table")
    t.add_argument("times")
    t.add_argument("--meta", action="append", default=[])
    t.add_argument("--rss")
    t.add_argument("--unavailable", action="append", default=[])
    t.add_argument("--differences")
    t.add_argument("--python-unavailable")
    args = p.parse_args()
    if args.cmd == "extras":
        extras(args.root)
    elif args.cmd == "compare":
        compare(args.name_a, args.prefix_a, args.name_b, args.prefix_b)
    else:
        table(args.times, args.meta, args.rss, args.differences, args.unavailable,
              args.python_unavailable)


if __name__ == "__main__":
    sys.exit(main())
