#!/usr/bin/env python3
"""File choice, checks and the report for scripts/bench-write.sh.

  bench_write_report.py select VIEW NFILES NDIRS PREFIX
      picks, in the lower view mounted at VIEW, NFILES regular files to append
      to (PREFIX.append: path TAB size) and NFILES others to delete
      (PREFIX.delete), at random with a fixed seed among the regular files with
      one link; checks that the NDIRS new directories are not there; prints
      one line on the choice
  bench_write_report.py count MNT
      prints the number of entries under MNT (MNT itself not counted)
  bench_write_report.py check STEP MNT PREFIX [--dirs N --creates N --size N]
                                              [--total N]
      checks through the mount, after STEP (append, create or delete), that it
      did what it should: every appended file has its old size + 1 and ends in
      "x"; every directory holds exactly its created files, each of the size;
      every deleted file is gone and MNT holds --total entries. Prints what is
      wrong and exits 1 if anything is
  bench_write_report.py check-upper NAME UPPER PREFIX --dirs N --creates N
      after the unmount: how much of the work is in the upper directory in the
      format that kernel overlayfs reads (copied-up files with the new size,
      created files, char 0/0 whiteouts, or fuse-overlayfs's .wh. files);
      prints one line, never fails
  bench_write_report.py table TIMES.tsv --files N --creates N --dirs N
                        [--meta KEY=VALUE]... [--unavailable NAME=WHY]...
                        [--rss FILE] [--differences FILE] [--uppers FILE]
      prints the markdown report: per step, median (min-max) per candidate
      and the ratios strata/kernel-overlay, strata/fuse-overlayfs,
      strata-overlayfs/kernel-overlay, strata-overlayfs/fuse-overlayfs and
      fuse-overlayfs/kernel-overlay

TIMES.tsv lines: step (append, create, delete, mount), candidate, run, start,
end (seconds since the epoch, as bash's $EPOCHREALTIME gives them).
"""

import argparse
import collections
import os
import random
import stat
import statistics
import sys

import bench_lower_report

# bench-lower's, but for native (a flat copy is not mounted read-write).
CANDIDATES = [c for c in bench_lower_report.CANDIDATES if c != "native"]
SEED = 5
PAYLOAD_CHAR = "x"


def new_dirs(n):
    return [f"bench-w{i:02d}" for i in range(n)]


def created(ndirs, ncreates):
    """{dir: [file names]}: ncreates files spread evenly over ndirs new dirs."""
    per = ncreates // ndirs
    return {d: [f"f{j:04d}" for j in range(per)] for d in new_dirs(ndirs)}


def entries(root):
    n = 0
    for _, dirnames, filenames in os.walk(root):
        n += len(dirnames) + len(filenames)
    return n


# ---------------------------------------------------------------- select

def select(view, nfiles, ndirs, prefix):
    eligible = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(view):
        dirnames.sort()
        total += len(dirnames) + len(filenames)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, view)
            if not rel.isprintable() or "\t" in rel:
                continue
            st = os.lstat(full)
            # One link: a copy-up of a hardlinked file is where the candidates
            # differ on purpose (kernel overlayfs without index breaks the link).
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                eligible.append((rel, st.st_size))
    if len(eligible) < 2 * nfiles:
        sys.exit(f"select: the image has {len(eligible)} regular files with one link; "
                 f"{2 * nfiles} are needed (--files {nfiles}: as many to append to as to delete)")
    for d in new_dirs(ndirs):
        if os.path.lexists(os.path.join(view, d)):
            sys.exit(f"select: /{d} is already in the image")
    random.Random(SEED).shuffle(eligible)
    append, delete = eligible[:nfiles], eligible[nfiles:2 * nfiles]
    with open(prefix + ".append", "w") as f:
        f.writelines(f"{p}\t{s}\n" for p, s in sorted(append))
    with open(prefix + ".delete", "w") as f:
        f.writelines(f"{p}\n" for p, _ in sorted(delete))
    sizes = sorted(s for _, s in append)
    print(f"{total} entries, {len(eligible)} regular files with one link; appending to "
          f"{nfiles} of them ({sum(sizes) / 1e6:.1f} MB, median {statistics.median(sizes) / 1e3:.1f} kB, "
          f"largest {sizes[-1] / 1e6:.2f} MB) and deleting {nfiles} others, in "
          f"{len({os.path.dirname(p) for p, _ in delete})} directories")


def read_append(prefix):
    with open(prefix + ".append") as f:
        return [(p, int(s)) for p, s in (line.rstrip("\n").split("\t") for line in f)]


def read_delete(prefix):
    with open(prefix + ".delete") as f:
        return [line.rstrip("\n") for line in f]


# ---------------------------------------------------------------- checks

def check(step, mnt, prefix, ndirs, ncreates, size, total):
    wrong = []
    if step == "append":
        for rel, old in read_append(prefix):
            p = os.path.join(mnt, rel)
            try:
                st = os.lstat(p)
                if not stat.S_ISREG(st.st_mode) or st.st_size != old + 1:
                    wrong.append(f"/{rel}: size {st.st_size}, want {old + 1}")
                    continue
                with open(p, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    last = f.read(1)
                if last != PAYLOAD_CHAR.encode():
                    wrong.append(f"/{rel}: ends in {last!r}, want {PAYLOAD_CHAR!r}")
            except OSError as e:
                wrong.append(f"/{rel}: {e.strerror}")
        what = "appended files"
    elif step == "create":
        for d, names in created(ndirs, ncreates).items():
            try:
                have = sorted(os.listdir(os.path.join(mnt, d)))
            except OSError as e:
                wrong.append(f"/{d}: {e.strerror}")
                continue
            if have != names:
                wrong.append(f"/{d}: {len(have)} entries, want {len(names)} "
                             f"(missing {len(set(names) - set(have))}, extra {len(set(have) - set(names))})")
            for n in names:
                try:
                    st = os.lstat(os.path.join(mnt, d, n))
                    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                        wrong.append(f"/{d}/{n}: size {st.st_size}, want {size}")
                except OSError as e:
                    wrong.append(f"/{d}/{n}: {e.strerror}")
        what = "created files"
    else:
        for rel in read_delete(prefix):
            try:
                os.lstat(os.path.join(mnt, rel))
                wrong.append(f"/{rel}: still there")
            except FileNotFoundError:
                pass
            except OSError as e:
                wrong.append(f"/{rel}: {e.strerror}")
        n = entries(mnt)
        if total is not None and n != total:
            wrong.append(f"the mount holds {n} entries, want {total} "
                         f"(before + new dirs + created - deleted)")
        what = "deleted files and the entry count"
    if wrong:
        print(f"check after {step}: {len(wrong)} problems with the {what}:")
        for w in wrong[:10]:
            print(f"  {w}")
        if len(wrong) > 10:
            print(f"  ... and {len(wrong) - 10} more")
        return 1
    return 0


def check_upper(name, upper, prefix, ndirs, ncreates):
    app = read_append(prefix)
    copied = 0
    for rel, old in app:
        try:
            st = os.lstat(os.path.join(upper, rel))
            copied += stat.S_ISREG(st.st_mode) and st.st_size == old + 1
        except OSError:
            pass
    made = 0
    for d, names in created(ndirs, ncreates).items():
        for n in names:
            made += os.path.isfile(os.path.join(upper, d, n))
    dele = read_delete(prefix)
    char00 = wh_files = 0
    for rel in dele:
        try:
            st = os.lstat(os.path.join(upper, rel))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                char00 += 1
                continue
        except OSError:
            pass
        d, b = os.path.split(rel)
        wh_files += os.path.lexists(os.path.join(upper, d, ".wh." + b))
    ok = copied == len(app) and made == ncreates and char00 + wh_files == len(dele)
    print(f"{name}\t{'ok' if ok else 'WARNING'}\t{copied}/{len(app)} copied up with the new size, "
          f"{made}/{ncreates} created, {char00}/{len(dele)} char 0/0 whiteouts"
          + (f", {wh_files} .wh. files" if wh_files else ""))


# ---------------------------------------------------------------- table

def table(args):
    samples = collections.defaultdict(list)
    per_run = collections.defaultdict(float)
    steps_seen = collections.defaultdict(set)
    runs = set()
    with open(args.times) as f:
        for line in f:
            step, cand, run, t0, t1 = line.rstrip("\n").split("\t")
            secs = float(t1) - float(t0)
            samples[(step, cand)].append(secs)
            if step != "mount":
                per_run[(cand, run)] += secs
                steps_seen[(cand, run)].add(step)
            runs.add(int(run))
    for (cand, run), secs in per_run.items():
        if len(steps_seen[(cand, run)]) == 3:
            samples[("total", cand)].append(secs)
    unavailable = dict(u.split("=", 1) for u in args.unavailable)

    steps = [
        ("append", f"1. append 1 byte to {args.files} lower files (copy-up)"),
        ("create", f"2. create {args.creates} small files in {args.dirs} new dirs"),
        ("delete", f"3. delete {args.files} lower files (whiteouts)"),
        ("total", "all three steps"),
        ("mount", "mount (fresh upper, not in the total)"),
    ]
    print("## strata write side beside strata-overlayfs, fuse-overlayfs and kernel overlayfs\n")
    bench_lower_report.print_meta(args.meta, unavailable)
    bench_lower_report.print_table("step", steps, CANDIDATES, samples, unavailable)
    print(f"""
Cells: median seconds over {len(runs)} runs, (min–max); ratios are of medians. Each
run of a candidate mounts the image's layers read-write over a fresh, empty upper
directory and does the three steps in order, each timed on its own, then unmounts;
the candidates alternate run by run in a rotating order, after one untimed warm-up
run of each, with all uppers on one filesystem. The steps run in one bash (builtins, no process per file): step 1 is
`printf x >>FILE` per file (the first write to a lower file copies it up), step 2
one `mkdir` of the {args.dirs} directories then `printf %s 100-BYTES >FILE` per file,
step 3 one `rm` of the {args.files} files. The files of steps 1 and 3 are regular files
with one link, picked at random (fixed seed) in the lower view, the same for every
candidate and run. After each step, untimed, a check through the mount: appended files
have the new size and end in the new byte, created files are all there, deleted ones
gone, and the mount holds the expected number of entries; the script fails if not.""")
    if args.uppers and os.path.exists(args.uppers):
        with open(args.uppers) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        if rows:
            print("\nWhat each candidate left in its upper directory (first run; every run checked"
                  " the same way):\n")
            seen = set()
            for name, status, text in rows:
                if name not in seen:
                    seen.add(name)
                    print(f"- {name}: {text}")
            bad = sorted({n for n, s, _ in rows if s != "ok"})
            if bad:
                print(f"\nWARNING: not all of the work is in the upper in kernel overlayfs's "
                      f"format for: {', '.join(bad)}.")
    if args.rss and os.path.exists(args.rss):
        with open(args.rss) as f:
            peaks = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        if peaks:
            print("\nDaemon peak RSS (VmHWM, last run): "
                  + ", ".join(f"{c} {v}" for c, v in peaks) + ".")
    bench_lower_report.print_differences(
        args.differences,
        "The trees after the three steps of the first run, against kernel overlayfs's"
        " (mtimes not compared):",
        drop=" mtimes,",
    )

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select")
    s.add_argument("view")
    s.add_argument("nfiles", type=int)
    s.add_argument("ndirs", type=int)
    s.add_argument("prefix")
    c = sub.add_parser("count")
    c.add_argument("mnt")
    k = sub.add_parser("check")
    k.add_argument("step", choices=["append", "create", "delete"])
    k.add_argument("mnt")
    k.add_argument("prefix")
    k.add_argument("--dirs", type=int, default=0)
    k.add_argument("--creates", type=int, default=0)
    k.add_argument("--size", type=int, default=0)
    k.add_argument("--total", type=int)
    u = sub.add_parser("check-upper")
    u.add_argument("name")
    u.add_argument("upper")
    u.add_argument("prefix")
    u.add_argument("--dirs", type=int, required=True)
    u.add_argument("--creates", type=int, required=True)
    t = sub.add_parser("table")
    t.add_argument("times")
    t.add_argument("--files", type=int, required=True)
    t.add_argument("--creates", type=int, required=True)
    t.add_argument("--dirs", type=int, required=True)
    t.add_argument("--meta", action="append", default=[])
    t.add_argument("--unavailable", action="append", default=[])
    t.add_argument("--rss")
    t.add_argument("--differences")
    t.add_argument("--uppers")
    args = p.parse_args()
    if args.cmd == "select":
        select(args.view, args.nfiles, args.ndirs, args.prefix)
    elif args.cmd == "count":
        print(entries(args.mnt))
    elif args.cmd == "check":
        return check(args.step, args.mnt, args.prefix, args.dirs, args.creates, args.size, args.total)
    elif args.cmd == "check-upper":
        check_upper(args.name, args.upper, args.prefix, args.dirs, args.creates)
    else:
        table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
