#!/usr/bin/python3
"""Run mox-conformance and assert its verdicts.

expect_conformance.py [--exit-nonzero] [--fail REGEX ...] [--pass REGEX ...]
    [--skip REGEX ...] [--min-passed N] -- mox-conformance args...

--fail REGEX: some case whose name matches was reported FAIL (so the suite
caught the bug where it should); --pass REGEX: every matching case passed
(the bug is reported where it is, not everywhere); --skip REGEX: every
matching case was skipped as unsupported. The summary line must be there.
"""
import argparse
import re
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exit-nonzero", action="store_true")
    ap.add_argument("--fail", action="append", default=[])
    ap.add_argument("--fail-detail", action="append", default=[])
    ap.add_argument("--pass", dest="pass_", action="append", default=[])
    ap.add_argument("--skip", action="append", default=[])
    ap.add_argument("--min-passed", type=int, default=1)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace")
    sys.stdout.write(p.stdout)
    print("expect: exit %d after %.1f s" % (p.returncode, time.monotonic() - t0))
    verdict = {}
    for line in p.stdout.splitlines():
        m = re.match(r"(pass|FAIL|skip)  (\S+)", line)
        if m:
            verdict[m.group(2)] = (m.group(1), line)
    ok = True

    def bad(msg):
        nonlocal ok
        ok = False
        print("expect: FAIL: " + msg)

    summary = re.search(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", p.stdout, re.M)
    if not summary:
        bad("no summary line")
    elif int(summary.group(1)) < a.min_passed:
        bad("only %s case(s) passed" % summary.group(1))
    if a.exit_nonzero != (p.returncode != 0):
        bad("exit status %d, expected %s" % (p.returncode,
            "non-zero" if a.exit_nonzero else "0"))
    for rx in a.fail:
        hits = [n for n, (v, _) in verdict.items() if re.search(rx, n) and v == "FAIL"]
        if not hits:
            bad("no case matching /%s/ failed" % rx)
        else:
            print("expect: caught in %d case(s) /%s/, e.g. %s" % (len(hits), rx, hits[0]))
    for rx in a.fail_detail:
        if not any(v == "FAIL" and re.search(rx, l) for v, l in verdict.values()):
            bad("no FAIL line says /%s/" % rx)
    for rx, want in [(r, "pass") for r in a.pass_] + [(r, "skip") for r in a.skip]:
        names = [n for n in verdict if re.search(rx, n)]
        if not names:
            bad("no case matches /%s/" % rx)
        for n in names:
            if verdict[n][0] != want:
                bad("%s: %s, expected %s" % (n, verdict[n][0], want))
    print("expect: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
