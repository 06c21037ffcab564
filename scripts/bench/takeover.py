#!/usr/bin/env python3
"""How long a take-over takes (issue 22): two release siaga nodes on one
PostgreSQL, the leader killed with SIGKILL again and again; for each kill,
the time until the other node answers a 112 INVITE with 200 (tried
again every 10 ms from the kill, straight to the node: the time a front
adds is not in it; each answered call is ACKed and hung up). The killed node
is started again and must stand by before the next kill. Bounded: every
wait gives up after 30 s. Not part of the test suite.

With --stream RATE, callers also dial 112 through a real Kamailio with the
shipped front config (sip-config/kamailio/), RATE new calls a second from
before the first kill until after the last, each held --hold seconds then
hung up. Each is counted kept (answered, hung up by the caller), cut (its
node died under it) or lost (never answered). With a stream, each kill
comes a lease and a renewal after the restarted node stands by: one
failure at a time, as the pair is built for. Meanwhile both nodes'
/healthz is read every 20 ms, and each answered call names the node that
answered it: two nodes saying `leader` at once, or the answering node
changing other than once per kill, is a split-brain event.

  takeover.py [--kills 10] [--lease 3s] [--renew 1s] [--stream 5 --hold 4]

SIAGA_BENCH_POSTGRES: an admin URL whose role may create databases
(default: the one scripts/test makes, postgres://siaga_test:siaga_test@
127.0.0.1:5432/postgres). SIAGA_BIN picks the binary (default:
target/release/siaga, built first). Ports: SIP 5560/5570, HTTP 8560/8570,
the front 5580.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODES = {"a": (5560, 8560), "b": (5570, 8570)}
FRONT = 5580


def build():
    binary = os.environ.get("SIAGA_BIN")
    if binary:
        return binary
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=REPO, check=True)
    return str(REPO / "target" / "release" / "siaga")


def database(admin):
    name = f"siaga_takeover_{os.getpid()}"
    for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", admin, "-qc", sql], check=True)
    return admin.rsplit("/", 1)[0] + "/" + name


def node_root(base, name, url, lease, renew):
    sip, web = NODES[name]
    root = Path(base) / name
    shutil.copytree(REPO / "sip-config", root / "sip-config", ignore=shutil.ignore_patterns("siaga.toml", "kamailio"))
    shutil.copytree(REPO / "dialplans", root / "dialplans")
    rtp = 31000 if name == "a" else 33000
    (root / "sip-config" / "siaga.toml").write_text(f"""[sip]
udp = ["127.0.0.1:{sip}"]
tcp = ["127.0.0.1:{sip}"]
public_ip = "127.0.0.1"

[media]
rtp_ip = "127.0.0.1"
rtp_port_min = {rtp}
rtp_port_max = {rtp + 1999}
prompts_dir = "{REPO / 'prompts'}"
recordings_dir = "recordings"

[http]
listen = "127.0.0.1:{web}"

[database]
url = "{url}"

[cluster]
node = "{name}"
lease = "{lease}"
renew = "{renew}"

[[trunk]]
name = "bench"
sources = ["127.0.0.1"]
""")
    with open(root / "sip-config" / "siaga.toml", "r+") as f:
        text = f.read().replace('public_ip = "127.0.0.1"', f'public_ip = "127.0.0.1"\nfronts = ["127.0.0.1:{FRONT}"]')
        f.seek(0)
        f.write(text)
    return root


def start(binary, root):
    log = open(root / "siaga.log", "ab")
    p = subprocess.Popen([binary, "serve", "--config-root", str(root)], stdout=subprocess.PIPE, stderr=log,
                         env={"SIAGA_LOG": "warn", **os.environ})
    end = time.monotonic() + 30
    for line in p.stdout:
        if line.startswith(b"READY "):
            break
        if time.monotonic() > end:
            sys.exit(f"{root.name} did not start")
    return p


def role(name):
    try:
        c = http.client.HTTPConnection("127.0.0.1", NODES[name][1], timeout=1)
        c.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
        return json.loads(c.getresponse().read()).get("role")
    except (OSError, ValueError):
        return None


def call_112(name):
    """One 112 call to a node, straight (the bench source is a trunk): the
    final status (None: none within 1 s); a 200 is ACKed and hung up."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    host, port = s.getsockname()
    sip = NODES[name][0]
    tag, cid = uuid.uuid4().hex[:12], uuid.uuid4().hex
    sdp = (f"v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {rtp.getsockname()[1]} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")
    head = (f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:0812000@{host}>;tag={tag}\r\n")
    s.sendto((f"INVITE sip:112@127.0.0.1:{sip} SIP/2.0\r\n{head}To: <sip:112@127.0.0.1:{sip}>\r\n"
              f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:0812000@{host}:{port}>\r\n"
              f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode(), ("127.0.0.1", sip))
    try:
        while True:
            msg = s.recv(65535).decode(errors="replace")
            code = int(msg.split()[1])
            if code >= 200:
                break
    except (OSError, IndexError, ValueError):
        s.close()
        rtp.close()
        return None
    if code == 200:
        hdrs = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
                for line in msg.split("\r\n\r\n")[0].split("\r\n")[1:] if ":" in line}
        to, target = hdrs.get("to", ""), hdrs.get("contact", "").strip("<>").split(">")[0]
        for cseq, method in ((1, "ACK"), (2, "BYE")):
            via = f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            s.sendto((f"{method} {target} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: <sip:0812000@{host}>;tag={tag}\r\n"
                      f"To: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode(),
                     ("127.0.0.1", sip))
        try:
            s.recv(65535)
        except OSError:
            pass
    s.close()
    rtp.close()
    return code


def start_front(base):
    """Kamailio with the shipped config in front of both nodes."""
    nodes = [f"127.0.0.1:{sip}" for sip, _ in NODES.values()]
    listing = "".join(f"{s} sip:{n} {flags} {100 - i}\n" for s, flags in ((1, 8), (2, 0)) for i, n in enumerate(nodes))
    folder = Path(base) / "front"
    folder.mkdir()
    (folder / "siaga-nodes.list").write_text(listing)
    log = open(folder / "kamailio.log", "ab")
    p = subprocess.Popen(["kamailio", "-f", str(REPO / "sip-config" / "kamailio" / "kamailio.cfg"),
                          "-A", f"SIP_LISTEN=udp:127.0.0.1:{FRONT}",
                          "-A", f'SIAGA_NODES="{folder / "siaga-nodes.list"}"',
                          "-m", "64", "-M", "8", "-Y", str(folder), "-P", str(folder / "kamailio.pid"), "-DD", "-E"],
                         stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    return p


def headers(msg):
    out = {}
    for line in msg.split("\r\n\r\n")[0].split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), []).append(v.strip())
    return out


def final(s, method, limit):
    """The final answer to `method` on `s` within `limit` seconds, or None."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            msg = s.recv(65535).decode(errors="replace")
        except OSError:
            return None
        if not msg.startswith("SIP/2.0 "):
            continue  # a request to the caller (none expected)
        cseq = headers(msg).get("cseq", [""])[0]
        if cseq.endswith(method) and int(msg.split()[1]) >= 200:
            return msg
    return None


def front_call(hold, results, lock):
    """One caller through the front: dials 112, on 200 ACKs, holds, hangs
    up. Appends (placed, outcome, node, answered_after)."""
    placed = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    host, port = s.getsockname()
    front = ("127.0.0.1", FRONT)
    tag, cid = uuid.uuid4().hex[:12], uuid.uuid4().hex
    sdp = (f"v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {rtp.getsockname()[1]} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")
    via = lambda: f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
    frm = f"From: <sip:0812000@{host}>;tag={tag}\r\n"
    s.sendto((f"INVITE sip:112@127.0.0.1:{FRONT} SIP/2.0\r\n{via()}Max-Forwards: 70\r\n{frm}"
              f"To: <sip:112@127.0.0.1:{FRONT}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n"
              f"Contact: <sip:0812000@{host}:{port}>\r\nContent-Type: application/sdp\r\n"
              f"Content-Length: {len(sdp)}\r\n\r\n{sdp}").encode(), front)
    answer = final(s, "INVITE", 40)
    code = int(answer.split()[1]) if answer else None
    outcome, node, after = "lost", None, None
    if code == 200:
        after = time.monotonic() - placed
        h = headers(answer)
        target = h.get("contact", [""])[0].strip("<>").split(">")[0]
        sip_port = int(target.split(":")[-1].split(";")[0])
        node = next(n for n, (p, _) in NODES.items() if p == sip_port)
        routes = "".join(f"Route: {r}\r\n" for rr in reversed(h.get("record-route", [])) for r in reversed(rr.split(",")))
        to = h["to"][0]

        def in_dialog(cseq, method):
            s.sendto((f"{method} {target} SIP/2.0\r\n{via()}Max-Forwards: 70\r\n{routes}{frm}To: {to}\r\n"
                      f"Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode(), front)

        in_dialog(1, "ACK")
        time.sleep(hold)
        in_dialog(2, "BYE")
        bye = final(s, "BYE", 10)
        outcome = "kept" if bye and bye.split()[1] == "200" else "cut"
    s.close()
    rtp.close()
    with lock:
        results.append((placed, outcome, node, after, code, cid))


class Stream:
    """Callers through the front at `rate` a second, and a watch on both
    nodes' roles, until stopped."""

    def __init__(self, rate, hold):
        self.rate, self.hold = rate, hold
        self.results, self.lock = [], threading.Lock()
        self.kills = []
        self.both_lead = 0
        self.samples = 0
        self.stopping = threading.Event()
        self.callers = []
        self.threads = [threading.Thread(target=self.dial), threading.Thread(target=self.watch)]
        for t in self.threads:
            t.start()

    def dial(self):
        gap = 1 / self.rate
        nxt = time.monotonic()
        while not self.stopping.is_set():
            t = threading.Thread(target=front_call, args=(self.hold, self.results, self.lock))
            t.start()
            self.callers.append(t)
            nxt += gap
            time.sleep(max(0, nxt - time.monotonic()))

    def watch(self):
        while not self.stopping.is_set():
            roles = [role(n) for n in NODES]
            self.samples += 1
            if roles.count("leader") > 1:
                self.both_lead += 1
            time.sleep(0.02)

    def stop(self):
        self.stopping.set()
        for t in self.threads + self.callers:
            t.join()

    def report(self, kills):
        rs = sorted(r[:5] for r in self.results)
        count = {o: sum(1 for r in rs if r[1] == o) for o in ("kept", "cut", "lost")}
        # The answering node, in answer order: it changes once per kill.
        answered = sorted((p + a, n) for p, o, n, a, _ in rs if n)
        switches = sum(1 for (_, x), (_, y) in zip(answered, answered[1:]) if x != y)
        waits = sorted(a * 1000 for _, _, n, a, _ in rs if n)
        lost_codes = sorted({str(c) for _, o, _, _, c in rs if o == "lost"})
        print(f"stream: {len(rs)} calls through the front at {self.rate}/s (held {self.hold} s): "
              f"kept {count['kept']}, cut {count['cut']}, lost {count['lost']}"
              + (f" (finals: {', '.join(lost_codes)})" if lost_codes else ""))
        print(f"answer time through the front: median {statistics.median(waits):.0f} ms, "
              f"p99 {waits[int(len(waits) * 0.99) - 1]:.0f} ms, max {waits[-1]:.0f} ms")
        if os.environ.get("BENCH_CALLS"):
            with open(os.environ["BENCH_CALLS"], "w") as f:
                f.write("placed_s,outcome,node,answered_after_ms,final,call_id\n")
                t0 = rs[0][0]
                for p, o, n, a, c, cid in sorted(self.results):
                    f.write(f"{p - t0:.3f},{o},{n or ''},{'' if a is None else round(a * 1000)},{c or ''},{cid}\n")
                for k in self.kills:
                    f.write(f"{k - t0:.3f},kill,,,,\n")
        print(f"split-brain: {self.both_lead} of {self.samples} role samples with two leaders; "
              f"answering node changed {switches} times over {kills} kills")


def front_answers():
    """Whether the front answers its own OPTIONS keep-alive."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    host, port = s.getsockname()
    s.sendto((f"OPTIONS sip:127.0.0.1:{FRONT} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]}"
              f";rport\r\nMax-Forwards: 70\r\nFrom: <sip:bench@{host}>;tag=o\r\nTo: <sip:127.0.0.1:{FRONT}>\r\n"
              f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", FRONT))
    answer = final(s, "OPTIONS", 0.2)
    s.close()
    return bool(answer) and answer.split()[1] == "200"


def call_through_front_answered_by():
    """The node that answers one 112 call through the front (None: none)."""
    results = []
    front_call(0, results, threading.Lock())
    return results[0][2]


def seconds(text):
    """A duration as the config writes it: `3s`, `500ms`."""
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def wait(what, ok, limit=30):
    start = time.monotonic()
    while not ok():
        if time.monotonic() - start > limit:
            sys.exit(f"gave up: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--lease", default="3s")
    ap.add_argument("--renew", default="1s")
    ap.add_argument("--stream", type=float, default=0, help="calls a second through the front (0: none)")
    ap.add_argument("--hold", type=float, default=4)
    args = ap.parse_args()
    binary = build()
    admin = os.environ.get("SIAGA_BENCH_POSTGRES", "postgres://siaga_test:siaga_test@127.0.0.1:5432/postgres")
    url = database(admin)
    base = tempfile.mkdtemp(prefix="siaga-takeover-")
    roots = {n: node_root(base, n, url, args.lease, args.renew) for n in NODES}
    procs = {}
    front = stream = None
    try:
        procs["a"] = start(binary, roots["a"])
        wait("a leads", lambda: role("a") == "leader")
        procs["b"] = start(binary, roots["b"])
        wait("b stands by", lambda: role("b") == "standby")
        leader, standby = "a", "b"
        if args.stream:
            front = start_front(base)
            wait("the front listens", front_answers)
            wait("the front sends calls to a", lambda: call_through_front_answered_by() == "a")
            stream = Stream(args.stream, args.hold)
            time.sleep(3)
        took = []
        for i in range(args.kills):
            # At a random moment of the renewal cycle: the restarts would
            # otherwise lock the kills to one phase of it.
            time.sleep(random.uniform(0, 2))
            if stream:
                stream.kills.append(time.monotonic())
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            took.append(wait(f"{standby} answers a 112 call", lambda: call_112(standby) == 200))
            print(f"kill {i + 1}: {leader} killed; {standby} answers a 112 call after {took[-1] * 1000:.0f} ms",
                  flush=True)
            assert role(standby) == "leader"
            procs[leader] = start(binary, roots[leader])
            wait(f"{leader} stands by", lambda: role(leader) == "standby")
            if stream:
                # One failure at a time: the restarted node may take the
                # lease only after a lease's length in touch, and the
                # front learns of it at its next probe. A second death
                # before then leaves no node that may take calls.
                time.sleep(seconds(args.lease) + seconds(args.renew))
            leader, standby = standby, leader
        if stream:
            time.sleep(3)
            stream.stop()
        ms = sorted(t * 1000 for t in took)
        print(f"take-over over {len(ms)} kills (lease {args.lease}, renew {args.renew}): "
              f"min {ms[0]:.0f} ms, median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms")
        if stream:
            stream.report(args.kills)
    finally:
        if stream:
            stream.stopping.set()
        if front:
            front.kill()
            front.wait()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
