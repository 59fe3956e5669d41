#!/usr/bin/python3
"""Run a multi-process mox test under tools/mox-run and check its outcome.

check_run.py --mox-run PATH -n N [--nodes K | --node-sizes A,B] \
    [--expect-fail REGEX] [--within SEC] [--env K=V ...] -- program args...

Passes when:
  * (default) every rank printed "MOXTEST ok rank R ..." and mox-run exited
    0; with several emulated nodes, the bytes counted on the namespace links
    are at least the inter-node bytes mox says it sent (so the traffic
    really crossed the shaped links, not shared memory), and nonzero;
  * (--expect-fail) at least --min-matches ranks printed a line matching
    REGEX (the error they were meant to get) and the whole run took less
    than --within seconds. The fault programs exit 0 when they saw the
    expected error, so a rank that succeeded where it should have failed
    shows as a non-zero exit.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mox-run", required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--node-sizes")
    ap.add_argument("--expect-fail")
    ap.add_argument("--min-matches", type=int, default=1)
    ap.add_argument("--within", type=float, default=0)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--mpi", action="store_true",
                    help="launch through mox-run --mpi (Open MPI's mpirun)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no program given")

    stats = tempfile.NamedTemporaryFile(prefix="mox-link-", suffix=".json", delete=False)
    stats.close()
    argv = [a.mox_run, "-n", str(a.n), "--timeout", str(a.timeout),
            "--link-stats", stats.name]
    if a.mpi:
        argv += ["--mpi"]
    if a.nodes:
        argv += ["--nodes", str(a.nodes)]
    if a.node_sizes:
        argv += ["--node-sizes", a.node_sizes]
    for e in a.env:
        argv += ["--env", e]
    argv += ["--"] + cmd
    print("check_run: " + " ".join(argv), flush=True)
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace")
    elapsed = time.monotonic() - t0
    sys.stdout.write(p.stdout)
    print("check_run: exit %d after %.2f s" % (p.returncode, elapsed))
    try:
        with open(stats.name) as f:
            link = json.load(f)
    except (OSError, ValueError):
        link = {"emulated": False, "nodes": []}
    os.unlink(stats.name)

    if a.expect_fail:
        return check_failure(a, p, elapsed)
    return check_success(a, p, link)


def check_failure(a, p, elapsed):
    pat = re.compile(a.expect_fail)
    ranks = set()
    for line in p.stdout.splitlines():
        m = re.match(r"\[(\d+)\] ", line)
        if m and pat.search(line):
            ranks.add(int(m.group(1)))
    ok = True
    if p.returncode != 0:
        print("check_run: FAIL: mox-run exited %d (a rank did not see the "
              "expected error)" % p.returncode)
        ok = False
    if len(ranks) < a.min_matches:
        print("check_run: FAIL: %d rank(s) printed /%s/, expected at least %d"
              % (len(ranks), a.expect_fail, a.min_matches))
        ok = False
    if a.within and elapsed > a.within:
        print("check_run: FAIL: took %.1f s, limit %.1f s" % (elapsed, a.within))
        ok = False
    if ok:
        print("check_run: PASS: ranks %s reported /%s/" % (sorted(ranks), a.expect_fail))
    return 0 if ok else 1


def check_success(a, p, link):
    ok = p.returncode == 0
    if not ok:
        print("check_run: FAIL: mox-run exited %d" % p.returncode)
    oks = {}
    for line in p.stdout.splitlines():
        m = re.search(r"MOXTEST ok rank (\d+)(.*)", line)
        if m:
            fields = m.group(2).split()
            oks[int(m.group(1))] = {k: int(v) for k, v in zip(fields[::2], fields[1::2])
                                    if v.isdigit()}
    missing = sorted(set(range(a.n)) - set(oks))
    if missing:
        print("check_run: FAIL: no MOXTEST ok line from ranks %s" % missing)
        ok = False
    nodes = a.nodes or (len(a.node_sizes.split(",")) if a.node_sizes else 1)
    inter = sum(v.get("inter_bytes", 0) for v in oks.values())
    if ok and nodes > 1:
        if not link.get("emulated"):
            print("check_run: note: nodes not emulated (not root?); link "
                  "counters not checked")
        else:
            tx = sum(n["tx_bytes"] for n in link["nodes"])
            print("check_run: inter-node bytes: mox %d, links tx %d" % (inter, tx))
            if inter == 0 or tx < inter:
                print("check_run: FAIL: inter-node traffic did not cross the "
                      "namespace links (mox %d bytes, links %d)" % (inter, tx))
                ok = False
    if ok and nodes == 1 and inter != 0:
        print("check_run: FAIL: one node but %d inter-node bytes" % inter)
        ok = False
    print("check_run: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
