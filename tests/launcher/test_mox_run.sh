#!/bin/bash
# Tests for tools/mox-run (the single-machine launcher).
# Usage: tests/launcher/test_mox_run.sh      (namespace parts need root)
# Exits non-zero if any check fails; prints every failed check.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
MOXRUN=${MOXRUN:-$(cd "$HERE/../.." && pwd)/tools/mox-run}
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/mox-run-test.XXXXXX)
FAILS=0
CHECKS=0
T0=$(date +%s.%N)
BGPIDS=()

cleanup() {
    local p
    for p in "${BGPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() { FAILS=$((FAILS + 1)); echo "FAIL: $*"; }
pass() { :; }
check() {  # check DESCRIPTION CONDITION...
    local desc=$1; shift
    CHECKS=$((CHECKS + 1))
    if "$@"; then pass; else fail "$desc"; fi
}
section() { echo "== $*"; }
now() { date +%s.%N; }
elapsed_since() { $PY -c "import sys; print('%.2f' % ($(now) - $1))"; }
lt() { $PY -c "import sys; sys.exit(0 if float('$1') < float('$2') else 1)"; }
ge() { $PY -c "import sys; sys.exit(0 if float('$1') >= float('$2') else 1)"; }

# mr OUTPREFIX args... : run mox-run (bounded), stdout/stderr to files, rc in $RC
mr() {
    local out=$1; shift
    timeout -k 5 90 "$MOXRUN" --timeout 60 "$@" >"$TMP/$out.out" 2>"$TMP/$out.err"
    RC=$?
}
show() {  # print a run's output (on failure)
    echo "---- $1 stdout"; head -n 40 "$TMP/$1.out"
    echo "---- $1 stderr"; head -n 40 "$TMP/$1.err"
}

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

# ---------------------------------------------------------------------------
section "help and argument errors"
"$MOXRUN" --help >"$TMP/help.out" 2>&1
check "--help exits 0" [ $? = 0 ]
for w in -n --nodes --node-sizes --link-rate --timeout --link-stats --env --mpi \
         MOX_RANK MOX_SIZE MOX_LOCAL_RANK MOX_LOCAL_SIZE MOX_ROOT_ADDR MOX_JOB_SECRET \
         MOX_JOB_ID MOX_NODE_ID MOX_NET_DEVICES MOX_NET_TLS; do
    check "--help mentions $w" grep -q -- "$w" "$TMP/help.out"
done
check "shebang is /usr/bin/python3" [ "$(head -n 1 "$MOXRUN")" = "#!/usr/bin/python3" ]
check "mox-run is executable" [ -x "$MOXRUN" ]
badargs() {
    "$MOXRUN" "$@" >"$TMP/bad.out" 2>"$TMP/bad.err"
    local rc=$?
    CHECKS=$((CHECKS + 1))
    if [ $rc != 2 ] || [ "$(wc -l <"$TMP/bad.err")" != 1 ] || ! grep -q '^mox-run:' "$TMP/bad.err"; then
        fail "bad args '$*': rc=$rc (want 2), stderr: $(cat "$TMP/bad.err")"
    fi
}
badargs true
badargs -n 0 true
badargs -n x true
badargs -n 2
badargs -n 4 --nodes 5 true
badargs -n 4 --nodes 2 --node-sizes 2,2 true
badargs -n 4 --node-sizes 1,2 true
badargs -n 4 --node-sizes 1,0,3 true
badargs -n 2 --link-rate fast true
badargs -n 2 --timeout -1 true
badargs -n 2 --env NOEQUALS true
badargs -n 2 --bogus true

# ---------------------------------------------------------------------------
section "single node: environment, prefix, output"
mr env1 -n 3 --env FOO=bar BAZ=qux -- sh -c \
  'echo "E $MOX_RANK $MOX_SIZE $MOX_LOCAL_RANK $MOX_LOCAL_SIZE $MOX_ROOT_ADDR $MOX_JOB_ID $MOX_JOB_SECRET ${MOX_NODE_ID-unset} $FOO $BAZ ${MOX_NET_DEVICES-unset} ${INHERITED_X-}"; echo "to stderr $MOX_RANK" >&2; printf "no newline $MOX_RANK"'
RC0=$RC
check "single node rc 0 (got $RC0)" [ $RC0 = 0 ]
INHERITED_X=1 "$MOXRUN" --timeout 60 -n 1 sh -c 'echo "$INHERITED_X"' >"$TMP/inh.out" 2>&1
check "environment is inherited" grep -qx '\[0\] 1' "$TMP/inh.out"
JOBIDS=$(grep -c . "$TMP/env1.out")
for r in 0 1 2; do
    line=$(grep "^\[$r\] E " "$TMP/env1.out")
    set -- $line
    check "rank $r: MOX_RANK" [ "${3-}" = $r ]
    check "rank $r: MOX_SIZE" [ "${4-}" = 3 ]
    check "rank $r: MOX_LOCAL_RANK" [ "${5-}" = $r ]
    check "rank $r: MOX_LOCAL_SIZE" [ "${6-}" = 3 ]
    check "rank $r: MOX_ROOT_ADDR is 127.0.0.1:port (${7-})" grep -qE '^127\.0\.0\.1:[0-9]+$' <<<"${7-}"
    check "rank $r: MOX_JOB_ID is 12 hex (${8-})" grep -qE '^[0-9a-f]{12}$' <<<"${8-}"
    check "rank $r: MOX_JOB_SECRET is 32 hex" grep -qE '^[0-9a-f]{32}$' <<<"${9-}"
    check "rank $r: no MOX_NODE_ID on a single node" [ "${10-}" = unset ]
    check "rank $r: --env FOO=bar" [ "${11-}" = bar ]
    check "rank $r: --env BAZ=qux (several K=V after --env)" [ "${12-}" = qux ]
    check "rank $r: no MOX_NET_DEVICES on a single node" [ "${13-}" = unset ]
    check "rank $r: stderr line prefixed, on stderr" grep -qx "\[$r\] to stderr $r" "$TMP/env1.err"
    check "rank $r: unterminated last line forwarded" grep -qx "\[$r\] no newline $r" "$TMP/env1.out"
done
check "stderr lines do not go to stdout" [ "$(grep -c 'to stderr' "$TMP/env1.out")" = 0 ]
check "same JOB_ID/SECRET/ROOT_ADDR for all ranks" \
    [ "$(grep ' E ' "$TMP/env1.out" | awk '{print $7, $8, $9}' | sort -u | wc -l)" = 1 ]
[ $FAILS = 0 ] || show env1
"$MOXRUN" -n 1 sh -c 'echo $MOX_JOB_ID $MOX_JOB_SECRET' >"$TMP/id2.out" 2>&1
check "JOB_ID and SECRET differ between runs" \
    [ "$(awk '{print $2}' "$TMP/id2.out")" != "$(grep '^\[0\] E' "$TMP/env1.out" | awk '{print $8}')" ]
mr rootaddr -n 2 -- sh -c \
  'if [ $MOX_RANK = 0 ]; then exec '$PY' -c "import os,socket; h,p=os.environ[\"MOX_ROOT_ADDR\"].split(\":\"); s=socket.socket(); s.bind((h,int(p))); print(\"bound\")"; fi'
check "rank 0 can bind MOX_ROOT_ADDR (rc $RC)" grep -qx '\[0\] bound' "$TMP/rootaddr.out"

section "output: big volumes do not block, lines are never interleaved"
mr big -n 4 -- $PY -c '
import os, sys
r = os.environ["MOX_RANK"]
line = (r * 1000)[:1000] + "\n"
for i in range(3000):
    sys.stdout.write(line)
    sys.stderr.write(line)
'
check "big output rc 0 (got $RC)" [ $RC = 0 ]
for r in 0 1 2 3; do
    n=$(grep -cxE "\[$r\] ${r}{1000}" "$TMP/big.out")
    check "rank $r: 3000 intact stdout lines (got $n)" [ "$n" = 3000 ]
    n=$(grep -cxE "\[$r\] ${r}{1000}" "$TMP/big.err")
    check "rank $r: 3000 intact stderr lines (got $n)" [ "$n" = 3000 ]
done
check "no other stdout lines" [ "$(wc -l <"$TMP/big.out")" = 12000 ]

# ---------------------------------------------------------------------------
section "exit status propagation"
t=$(now)
mr fail3 -n 3 -- sh -c 'if [ $MOX_RANK = 1 ]; then sleep 0.3; exit 3; fi; sleep 30'
el=$(elapsed_since "$t")
check "one rank exits 3 -> mox-run exits 3 (got $RC)" [ $RC = 3 ]
check "failure ends the run quickly (${el}s < 10s)" lt "$el" 10
check "failure line printed" grep -qx 'mox-run: rank 1 exited with status 3' "$TMP/fail3.err"
check "exactly one failure line" [ "$(grep -c 'mox-run: rank' "$TMP/fail3.err")" = 1 ]

t=$(now)
mr fail_term -n 2 -- sh -c 'trap "" TERM; if [ $MOX_RANK = 0 ]; then exit 5; fi; for i in $(seq 300); do sleep 0.1; done'
el=$(elapsed_since "$t")
check "rank ignoring SIGTERM is SIGKILLed: rc 5 (got $RC)" [ $RC = 5 ]
check "SIGTERM-ignoring rank killed after ~3 s (${el}s < 10s)" lt "$el" 10

mr sig -n 2 -- sh -c 'if [ $MOX_RANK = 1 ]; then kill -9 $$; fi; sleep 30'
check "rank killed by SIGKILL -> exit 137 (got $RC)" [ $RC = 137 ]
check "signal line printed" grep -q '^mox-run: rank 1 killed by signal 9' "$TMP/sig.err"

mr ok0 -n 4 -- sh -c 'sleep 0.$MOX_RANK; exit 0'
check "all ranks exit 0 -> 0 (got $RC)" [ $RC = 0 ]

mr noexec -n 2 -- /nonexistent/program
check "command not found -> non-zero (got $RC)" [ $RC != 0 ]

t=$(now)
timeout -k 5 60 "$MOXRUN" --timeout 1 -n 2 sleep 30 >"$TMP/to.out" 2>"$TMP/to.err"
RC=$?
el=$(elapsed_since "$t")
check "--timeout -> exit 124 (got $RC)" [ $RC = 124 ]
check "--timeout 1 ends quickly (${el}s < 6s)" lt "$el" 6
check "timeout line printed" grep -q '^mox-run: .*timeout' "$TMP/to.err"

section "loopback: /dev/shm cleanup and link stats"
mr shm -n 2 --link-stats "$TMP/ls0.json" -- sh -c 'echo x > /dev/shm/mox-$MOX_JOB_ID-seg$MOX_RANK; echo $MOX_JOB_ID'
JID=$(head -n 1 "$TMP/shm.out" | awk '{print $2}')
check "shm run rc 0" [ $RC = 0 ]
check "/dev/shm/mox-<JOB_ID>-* removed after a loopback run" \
    [ -n "$JID" -a -z "$(ls /dev/shm | grep "^mox-$JID-")" ]
check "--link-stats in loopback mode" $PY -c "
import json; d = json.load(open('$TMP/ls0.json'))
assert d['emulated'] is False and d['nodes'] == [], d"

# ---------------------------------------------------------------------------
section "node layout (--nodes / --node-sizes)"
LAYOUT_CMD='echo "L $MOX_RANK $MOX_SIZE $MOX_LOCAL_RANK $MOX_LOCAL_SIZE ${MOX_NODE_ID-unset} ${MOX_NET_DEVICES-unset} ${MOX_NET_TLS-unset} $MOX_ROOT_ADDR"'
# check_layout OUT "rank:lr:ls ..."
check_layout() {
    local out=$1 spec=$2 e r lr ls line
    for e in $spec; do
        IFS=: read -r r lr ls <<<"$e"
        line=$(grep "^\[$r\] L " "$TMP/$out.out")
        set -- $line
        check "$out: rank $r MOX_RANK" [ "${3-}" = "$r" ]
        check "$out: rank $r MOX_LOCAL_RANK=$lr (got ${5-})" [ "${5-}" = "$lr" ]
        check "$out: rank $r MOX_LOCAL_SIZE=$ls (got ${6-})" [ "${6-}" = "$ls" ]
    done
}
mr lay1 -n 4 --nodes 2 -- sh -c "$LAYOUT_CMD"
check "--nodes 2 rc 0 (got $RC)" [ $RC = 0 ]
check_layout lay1 "0:0:2 1:1:2 2:0:2 3:1:2"
mr lay2 -n 4 --node-sizes 1,3 -- sh -c "$LAYOUT_CMD"
check "--node-sizes 1,3 rc 0 (got $RC)" [ $RC = 0 ]
check_layout lay2 "0:0:1 1:0:3 2:1:3 3:2:3"
mr lay3 -n 5 --nodes 3 -- sh -c "$LAYOUT_CMD"
check_layout lay3 "0:0:2 1:1:2 2:0:2 3:1:2 4:0:1"
mr lay4 -n 3 --nodes 1 -- sh -c "$LAYOUT_CMD"
check_layout lay4 "0:0:3 1:1:3 2:2:3"
check "--nodes 1: no namespaces, loopback root" grep -q '^\[0\] L 0 3 0 3 unset unset unset 127\.0\.0\.1:' "$TMP/lay4.out"

if [ $IS_ROOT = 1 ]; then
    for out in lay1 lay2 lay3; do
        check "$out: namespace mode: ROOT_ADDR 10.99.0.1:29500, no MOX_NODE_ID, MOX_NET_TLS=tcp" \
            [ "$(grep -c ' unset mox[0-9] tcp 10\.99\.0\.1:29500$' "$TMP/$out.out")" = "$(grep -c ' L ' "$TMP/$out.out")" ]
        check "$out: no fallback message" [ -z "$(grep 'loopback' "$TMP/$out.err")" ]
    done
    check "lay2: node of rank 0 uses mox0, others mox1" \
        [ "$(grep ' L ' "$TMP/lay2.out" | sort | awk '{print $8}' | tr '\n' ' ')" = "mox0 mox1 mox1 mox1 " ]
    MOX_NET_TLS=keepme "$MOXRUN" --timeout 60 -n 2 --nodes 2 sh -c 'echo $MOX_NET_TLS' >"$TMP/tls.out" 2>&1
    check "existing MOX_NET_TLS is kept" [ "$(grep -c 'keepme' "$TMP/tls.out")" = 2 ]
fi

section "fallback without root"
if [ $IS_ROOT = 1 ] && command -v setpriv >/dev/null; then
    chmod 755 "$TMP"; mkdir -m 777 "$TMP/fbdir"
    (cd / && timeout -k 5 60 setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$MOXRUN" --timeout 60 -n 4 --nodes 2 --link-stats "$TMP/fbdir/fb.json" -- sh -c "$LAYOUT_CMD" \
        >"$TMP/fb.out" 2>"$TMP/fb.err")
    RC=$?
    check "fallback rc 0 (got $RC)" [ $RC = 0 ]
    check "fallback: exactly one mox-run line on stderr" [ "$(grep -c '^mox-run:' "$TMP/fb.err")" = 1 ]
    check "fallback: nothing else on stderr" [ "$(wc -l <"$TMP/fb.err")" = 1 ]
    check_layout fb "0:0:2 1:1:2 2:0:2 3:1:2"
    check "fallback: MOX_NODE_ID per rank, loopback root, no NET vars" \
        [ "$(grep ' L ' "$TMP/fb.out" | sort | awk '{print $7, $8, $9, $10}' | sed 's/:[0-9]*$//' | tr '\n' ' ')" = \
          "0 unset unset 127.0.0.1 0 unset unset 127.0.0.1 1 unset unset 127.0.0.1 1 unset unset 127.0.0.1 " ]
    check "fallback --link-stats" $PY -c "
import json; d = json.load(open('$TMP/fbdir/fb.json'))
assert d['emulated'] is False and d['nodes'] == [], d"
else
    echo "SKIP: fallback test needs root (to drop privileges) and setpriv"
fi

# ---------------------------------------------------------------------------
if [ $IS_ROOT != 1 ]; then
    echo "SKIP: namespace tests need root"
else
    ns_of() { ip netns list | awk '{print $1}' | grep -E "^moxr$1n[0-9]+$"; }
    links_of() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^(moxb$1|mxv$1n[0-9]+)$"; }
    gone() { [ -z "$(ns_of "$1")" ] && [ -z "$(links_of "$1")" ]; }
    # wait_ns PID COUNT: wait (max 10 s) until mox-run PID has COUNT namespaces
    wait_ns() {
        local i
        for i in $(seq 100); do
            [ "$(ns_of "$1" | wc -l)" = "$2" ] && return 0
            sleep 0.1
        done
        return 1
    }

    section "namespaces: lifetime"
    "$MOXRUN" --timeout 60 -n 3 --nodes 3 -- sh -c 'sleep 2' >"$TMP/life.out" 2>"$TMP/life.err" &
    P=$!; BGPIDS+=($P)
    check "3 namespaces exist during the run" wait_ns $P 3
    check "bridge moxb$P and 3 veths exist during the run" [ "$(links_of $P | wc -l)" = 4 ]
    check "tbf on bridge-side veth" sh -c "tc qdisc show dev mxv${P}n1 | grep -q tbf"
    check "tbf on namespace veth" sh -c "ip netns exec moxr${P}n1 tc qdisc show dev mox1 | grep -q tbf"
    wait $P; RC=$?
    check "lifetime run rc 0 (got $RC)" [ $RC = 0 ]
    check "namespaces, bridge and veths gone after a normal end" gone $P

    "$MOXRUN" --timeout 60 -n 2 --nodes 2 -- sh -c 'sleep 1; [ $MOX_RANK = 1 ] && exit 7; sleep 30' \
        >"$TMP/nsfail.out" 2>"$TMP/nsfail.err" &
    P=$!; BGPIDS+=($P)
    check "namespaces exist (failure run)" wait_ns $P 2
    t=$(now)
    wait $P; RC=$?
    el=$(elapsed_since "$t")
    check "namespace mode: rank exit 7 -> 7 (got $RC)" [ $RC = 7 ]
    check "namespace mode: failure ends quickly (${el}s < 10s)" lt "$el" 10
    check "namespaces gone after a rank failed" gone $P

    MARK=$((RANDOM + 40000))
    "$MOXRUN" --timeout 60 -n 2 --nodes 2 -- sleep $MARK.5 >"$TMP/int.out" 2>"$TMP/int.err" &
    P=$!; BGPIDS+=($P)
    check "namespaces exist (SIGINT run)" wait_ns $P 2
    sleep 0.5
    check "ranks running before SIGINT" pgrep -f "^sleep $MARK.5" >/dev/null
    t=$(now)
    kill -INT $P
    wait $P; RC=$?
    el=$(elapsed_since "$t")
    check "SIGINT -> exit 130 (got $RC)" [ $RC = 130 ]
    check "SIGINT handled quickly (${el}s < 8s)" lt "$el" 8
    check "namespaces gone after SIGINT" gone $P
    check "ranks gone after SIGINT" sh -c "! pgrep -f '^sleep $MARK.5' >/dev/null"

    "$MOXRUN" --timeout 60 -n 2 --nodes 2 -- sleep $MARK.7 >"$TMP/term.out" 2>"$TMP/term.err" &
    P=$!; BGPIDS+=($P)
    check "namespaces exist (SIGTERM run)" wait_ns $P 2
    kill -TERM $P
    wait $P; RC=$?
    check "SIGTERM -> exit 143 (got $RC)" [ $RC = 143 ]
    check "namespaces gone after SIGTERM" gone $P
    check "ranks gone after SIGTERM" sh -c "! pgrep -f '^sleep $MARK.7' >/dev/null"

    section "namespaces: stale leftovers of dead runs are removed"
    FAKE=4194999   # above any pid_max: never alive
    ip netns add moxr${FAKE}n0 2>/dev/null
    ip link add moxb$FAKE type bridge 2>/dev/null
    ip link add mxv${FAKE}n0 type veth peer name mox0 netns moxr${FAKE}n0 2>/dev/null
    check "fake leftovers created" [ -n "$(ns_of $FAKE)" -a "$(links_of $FAKE | wc -l)" = 2 ]
    mr stale -n 2 --nodes 2 -- true
    check "run with leftovers rc 0 (got $RC)" [ $RC = 0 ]
    check "leftovers of a dead PID removed" gone $FAKE

    section "namespaces: nodes are separate machines"
    mr sep -n 4 --nodes 2 -- sh -c '
        echo "IPC $(readlink /proc/self/ns/ipc) NET $(readlink /proc/self/ns/net)"
        if [ $MOX_LOCAL_RANK = 0 ]; then echo hello > /dev/shm/mox-$MOX_JOB_ID-node$MOX_RANK; fi
        sleep 1
        echo "SHM $(ls /dev/shm | grep "^mox-$MOX_JOB_ID-" | tr "\n" " ")"
        echo "MNT $(awk "\$2==\"/dev/shm\" {print \$3}" /proc/self/mounts | tail -n 1)"'
    check "separation run rc 0 (got $RC)" [ $RC = 0 ]
    ipc() { grep "^\[$1\] IPC" "$TMP/sep.out" | awk '{print $3}'; }
    net() { grep "^\[$1\] IPC" "$TMP/sep.out" | awk '{print $5}'; }
    shm() { grep "^\[$1\] SHM" "$TMP/sep.out" | cut -d' ' -f3- | sed 's/ *$//'; }
    check "ranks of one node share the IPC namespace" [ -n "$(ipc 0)" -a "$(ipc 0)" = "$(ipc 1)" -a "$(ipc 2)" = "$(ipc 3)" ]
    check "two nodes have different IPC namespaces" [ "$(ipc 0)" != "$(ipc 2)" ]
    check "no node uses the host IPC namespace" [ "$(ipc 0)" != "$(readlink /proc/self/ns/ipc)" -a "$(ipc 2)" != "$(readlink /proc/self/ns/ipc)" ]
    check "two nodes have different network namespaces" [ "$(net 0)" = "$(net 1)" -a "$(net 0)" != "$(net 2)" ]
    J=$(grep -o 'mox-[0-9a-f]*-node' "$TMP/sep.out" | head -n 1 | cut -d- -f2)
    check "node 0 ranks see only node 0's /dev/shm file" [ "$(shm 0)" = "mox-$J-node0" -a "$(shm 1)" = "mox-$J-node0" ]
    check "node 1 ranks see only node 1's /dev/shm file" [ "$(shm 2)" = "mox-$J-node2" -a "$(shm 3)" = "mox-$J-node2" ]
    check "/dev/shm inside a node is a tmpfs" grep -q '^\[0\] MNT tmpfs$' "$TMP/sep.out"
    check "node files are not in the host /dev/shm" [ -z "$J" -o -z "$(ls /dev/shm | grep "^mox-$J-")" ]
    [ $FAILS = 0 ] || show sep

    # a receiver on node 0 and a sender on node 1; prints elapsed receive time
    XFER='
      if [ $MOX_RANK = 0 ]; then
        exec '$PY' -c "
import socket, time, os
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((\"10.99.0.1\", 29600)); s.listen(1); s.settimeout(30)
c, a = s.accept(); t = None; n = 0; head = b\"\"
while True:
    d = c.recv(1 << 20)
    if not d: break
    if t is None: t = time.time()
    if len(head) < 12: head += d[:12]
    n += len(d)
print(\"RECV\", n, \"%.3f\" % (time.time() - t), a[0], head[:12].decode(), os.environ[\"MOX_JOB_ID\"])
"
      else
        for i in $(seq 100); do
          if exec 3>/dev/tcp/10.99.0.1/29600; then break; fi 2>/dev/null
          sleep 0.1
        done
        { printf %s "$MOX_JOB_ID"; head -c $BYTES /dev/zero; } >&3
        exec 3>&-
      fi'

    section "namespaces: traffic crosses the link and shows in --link-stats"
    BYTES=5000000
    mr xfer -n 2 --nodes 2 --link-stats "$TMP/xfer.json" -- env BYTES=$BYTES bash -c "$XFER"
    check "transfer run rc 0 (got $RC)" [ $RC = 0 ]
    check "receiver got all bytes from 10.99.0.2" grep -qE "^\[0\] RECV $((BYTES + 12)) [0-9.]+ 10\.99\.0\.2 " "$TMP/xfer.out"
    check "--link-stats shows the traffic" $PY -c "
import json; d = json.load(open('$TMP/xfer.json'))
assert d['emulated'] is True, d
n = {x['node']: x for x in d['nodes']}
assert n[0]['iface'] == 'mox0' and n[1]['iface'] == 'mox1', d
assert n[1]['tx_bytes'] >= $BYTES and n[0]['rx_bytes'] >= $BYTES, d
assert n[0]['tx_bytes'] < $BYTES and n[1]['rx_bytes'] < $BYTES, d
"
    [ $FAILS = 0 ] || { show xfer; cat "$TMP/xfer.json"; }

    section "namespaces: shaping binds"
    BYTES=10000000
    mr shaped -n 2 --nodes 2 --link-rate 100mbit -- env BYTES=$BYTES bash -c "$XFER"
    ST=$(grep '^\[0\] RECV' "$TMP/shaped.out" | awk '{print $4}')
    check "shaped transfer complete (rc $RC)" grep -qE "^\[0\] RECV $((BYTES + 12)) " "$TMP/shaped.out"
    check "10 MB at 100mbit takes >= 0.7 s (took ${ST:-?} s)" ge "${ST:-0}" 0.7
    mr unshaped -n 2 --nodes 2 --link-rate none -- env BYTES=$BYTES bash -c "$XFER"
    UT=$(grep '^\[0\] RECV' "$TMP/unshaped.out" | awk '{print $4}')
    check "unshaped transfer complete (rc $RC)" grep -qE "^\[0\] RECV $((BYTES + 12)) " "$TMP/unshaped.out"
    check "--link-rate none is faster than 100mbit (${UT:-?} s vs ${ST:-?} s)" lt "${UT:-99}" "${ST:-0}"
    echo "   10 MB: 100mbit ${ST:-?} s, unshaped ${UT:-?} s"

    section "namespaces: two concurrent runs"
    BYTES=20000000
    "$MOXRUN" --timeout 60 -n 2 --nodes 2 --link-rate 200mbit -- env BYTES=$BYTES bash -c "$XFER" \
        >"$TMP/c1.out" 2>"$TMP/c1.err" &
    P1=$!; BGPIDS+=($P1)
    "$MOXRUN" --timeout 60 -n 2 --nodes 2 --link-rate 200mbit -- env BYTES=$BYTES bash -c "$XFER" \
        >"$TMP/c2.out" 2>"$TMP/c2.err" &
    P2=$!; BGPIDS+=($P2)
    check "both concurrent runs have their namespaces at once" sh -c \
        "for i in \$(seq 100); do [ \$(ip netns list | grep -cE '^moxr($P1|$P2)n') = 4 ] && exit 0; sleep 0.1; done; exit 1"
    wait $P1; RC1=$?
    wait $P2; RC2=$?
    check "concurrent run 1 rc 0 (got $RC1)" [ $RC1 = 0 ]
    check "concurrent run 2 rc 0 (got $RC2)" [ $RC2 = 0 ]
    for c in c1 c2; do
        # the receiver got its own job's bytes (the two bridges never meet)
        check "$c: receiver got its own job's data" \
            sh -c "grep '^\[0\] RECV $((BYTES + 12)) ' '$TMP/$c.out' | awk '{exit !(\$6 == \$7)}'"
    done
    check "concurrent runs cleaned up" sh -c "[ -z \"\$(ip netns list | grep -E '^moxr($P1|$P2)n')\" ]"
    [ $FAILS = 0 ] || { show c1; show c2; }

    section "--mpi: one mpirun, ranks in their node's namespaces"
    if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
        echo "SKIP: --mpi tests need Open MPI (mpirun, mpicc)"
    else
        # a trivial MPI program: where am I, how many ranks share my node
        # (MPI_COMM_TYPE_SHARED), and a checked 1 MiB MPI_Bcast from rank 0
        cat >"$TMP/mpihello.c" <<'EOC'
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void ns(const char *path, char *out, size_t len)
{
    ssize_t k = readlink(path, out, len - 1);
    out[k > 0 ? k : 0] = 0;
}
int main(int argc, char **argv)
{
    int r, n, ls, hl;
    char net[64], ipc[64], host[MPI_MAX_PROCESSOR_NAME];
    MPI_Comm node;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    MPI_Get_processor_name(host, &hl);
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &ls);
    ns("/proc/self/ns/net", net, sizeof net);
    ns("/proc/self/ns/ipc", ipc, sizeof ipc);
    int len = 1 << 20;
    long bad = 0;
    unsigned char *b = malloc(len);
    for (int i = 0; i < len; i++)
        b[i] = r == 0 ? (unsigned char)(i * 7 + 3) : 0;
    MPI_Bcast(b, len, MPI_BYTE, 0, MPI_COMM_WORLD);
    for (int i = 0; i < len; i++)
        bad += b[i] != (unsigned char)(i * 7 + 3);
    const char *dev = getenv("MOX_NET_DEVICES"), *tls = getenv("MOX_NET_TLS");
    printf("M %d %d %s %s %s %d %ld %s %s\n", r, n, net, ipc, host, ls, bad,
           dev ? dev : "-", tls ? tls : "-");
    MPI_Finalize();
    return 0;
}
EOC
        mpicc -o "$TMP/mpihello" "$TMP/mpihello.c" 2>"$TMP/mpicc.err"
        check "trivial MPI program compiles" [ -x "$TMP/mpihello" ]
        "$MOXRUN" --mpi --timeout 60 -n 4 --nodes 2 --link-stats "$TMP/mpi.json" -- "$TMP/mpihello" \
            >"$TMP/mpi.out" 2>"$TMP/mpi.err" &
        P=$!; BGPIDS+=($P)
        wait $P; RC=$?
        check "--mpi --nodes 2 -n 4 rc 0 (got $RC)" [ $RC = 0 ]
        mfield() { grep "^\[$1\] M $1 " "$TMP/mpi.out" | awk -v f=$2 '{print $f}'; }
        for r in 0 1 2 3; do
            check "--mpi: rank $r prints once with its [RANK] prefix, size 4" \
                [ "$(grep -c "^\[$r\] M $r 4 " "$TMP/mpi.out")" = 1 ]
            check "--mpi: rank $r received the 1 MiB broadcast intact" [ "$(mfield $r 9)" = 0 ]
            check "--mpi: rank $r: MPI sees 2 ranks on its node (got $(mfield $r 8))" [ "$(mfield $r 8)" = 2 ]
            check "--mpi: rank $r runs on host moxr${P}n$((r / 2)) (got $(mfield $r 7))" \
                [ "$(mfield $r 7)" = "moxr${P}n$((r / 2))" ]
            check "--mpi: rank $r sees MOX_NET_DEVICES=mox$((r / 2)) MOX_NET_TLS=tcp (got $(mfield $r 10) $(mfield $r 11))" \
                [ "$(mfield $r 10) $(mfield $r 11)" = "mox$((r / 2)) tcp" ]
        done
        check "--mpi: ranks of a node share its network namespace, nodes differ" \
            [ -n "$(mfield 0 5)" -a "$(mfield 0 5)" = "$(mfield 1 5)" -a "$(mfield 2 5)" = "$(mfield 3 5)" \
              -a "$(mfield 0 5)" != "$(mfield 2 5)" -a "$(mfield 0 5)" != "$(readlink /proc/self/ns/net)" ]
        check "--mpi: ranks of a node share an IPC namespace of their own" \
            [ -n "$(mfield 0 6)" -a "$(mfield 0 6)" = "$(mfield 1 6)" -a "$(mfield 2 6)" = "$(mfield 3 6)" \
              -a "$(mfield 0 6)" != "$(mfield 2 6)" -a "$(mfield 0 6)" != "$(readlink /proc/self/ns/ipc)" ]
        check "--mpi: the broadcast crossed the link (--link-stats)" $PY -c "
import json; d = json.load(open('$TMP/mpi.json'))
assert d['emulated'] is True and d['nodes'][1]['rx_bytes'] >= 1 << 20, d"
        check "--mpi: namespaces gone, no process left in them" gone $P
        check "--mpi: no hostfile left" [ -z "$(ls /tmp | grep "^mox-run-$P-")" ]
        [ $FAILS = 0 ] || show mpi

        "$MOXRUN" --mpi --timeout 60 -n 4 --nodes 2 -- sh -c \
            'if [ $OMPI_COMM_WORLD_RANK = 3 ]; then sleep 0.5; exit 3; fi; sleep 30' \
            >"$TMP/mpifail.out" 2>"$TMP/mpifail.err" &
        P=$!; BGPIDS+=($P)
        t=$(now); wait $P; RC=$?; el=$(elapsed_since "$t")
        check "--mpi: a rank exits 3 -> 3 (got $RC)" [ $RC = 3 ]
        check "--mpi: failure ends the run quickly (${el}s < 15s)" lt "$el" 15
        check "--mpi: namespaces gone after a failure" gone $P
        t=$(now)
        "$MOXRUN" --mpi --timeout 2 -n 4 --nodes 2 -- sleep $MARK.9 >"$TMP/mpito.out" 2>"$TMP/mpito.err" &
        P=$!; BGPIDS+=($P)
        wait $P; RC=$?; el=$(elapsed_since "$t")
        check "--mpi: --timeout -> 124 (got $RC)" [ $RC = 124 ]
        check "--mpi: timeout ends the run quickly (${el}s < 12s)" lt "$el" 12
        check "--mpi: namespaces gone after a timeout" gone $P
        check "--mpi: ranks gone after a timeout" sh -c "! pgrep -f '^sleep $MARK.9' >/dev/null"
        "$MOXRUN" --mpi --timeout 60 -n 2 -- sh -c 'echo "S $OMPI_COMM_WORLD_RANK $OMPI_COMM_WORLD_SIZE"' \
            >"$TMP/mpi1.out" 2>"$TMP/mpi1.err"
        RC=$?
        check "--mpi on one node: plain local mpirun, rc 0 (got $RC)" [ $RC = 0 ]
        check "--mpi on one node: both ranks, prefixed" \
            [ "$(sort "$TMP/mpi1.out" | tr '\n' ' ')" = "[0] S 0 2 [1] S 1 2 " ]
    fi
fi

# ---------------------------------------------------------------------------
echo "== $CHECKS checks, $FAILS failed, $(elapsed_since "$T0") s"
[ $FAILS = 0 ]
