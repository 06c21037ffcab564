#!/usr/bin/env python3
"""How long a take-over takes (issue 22): two release siaga nodes on one
PostgreSQL, the leader killed with SIGKILL again and again; for each kill,
the time until the other node answers a 112 INVITE with 200 (tried
again every 10 ms from the kill, straight to the node: the time a front
adds is not in it; each answered call is ACKed and hung up). The killed node
is started again and must stand by before the next kill. Bounded: every
wait gives up after 30 s. Not part of the test suite.

  takeover.py [--kills 10] [--lease 3s] [--renew 1s]

SIAGA_BENCH_POSTGRES: an admin URL whose role may create databases
(default: the one scripts/test makes, postgres://siaga_test:siaga_test@
127.0.0.1:5432/postgres). SIAGA_BIN picks the binary (default:
target/release/siaga, built first). Ports: SIP 5560/5570, HTTP 8560/8570.
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
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODES = {"a": (5560, 8560), "b": (5570, 8570)}


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
    return root


def start(binary, root):
    log = open(root / "siaga.log", "ab")
    p = subprocess.Popen([binary, "serve", "--config-root", str(root)], stdout=subprocess.PIPE, stderr=log,
                         env={**os.environ, "SIAGA_LOG": "warn"})
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
    args = ap.parse_args()
    binary = build()
    admin = os.environ.get("SIAGA_BENCH_POSTGRES", "postgres://siaga_test:siaga_test@127.0.0.1:5432/postgres")
    url = database(admin)
    base = tempfile.mkdtemp(prefix="siaga-takeover-")
    roots = {n: node_root(base, n, url, args.lease, args.renew) for n in NODES}
    procs = {}
    try:
        procs["a"] = start(binary, roots["a"])
        wait("a leads", lambda: role("a") == "leader")
        procs["b"] = start(binary, roots["b"])
        wait("b stands by", lambda: role("b") == "standby")
        leader, standby = "a", "b"
        took = []
        for i in range(args.kills):
            # At a random moment of the renewal cycle: the restarts would
            # otherwise lock the kills to one phase of it.
            time.sleep(random.uniform(0, 2))
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            took.append(wait(f"{standby} answers a 112 call", lambda: call_112(standby) == 200))
            print(f"kill {i + 1}: {leader} killed; {standby} answers a 112 call after {took[-1] * 1000:.0f} ms",
                  flush=True)
            assert role(standby) == "leader"
            procs[leader] = start(binary, roots[leader])
            wait(f"{leader} stands by", lambda: role(leader) == "standby")
            leader, standby = standby, leader
        ms = sorted(t * 1000 for t in took)
        print(f"take-over over {len(ms)} kills (lease {args.lease}, renew {args.renew}): "
              f"min {ms[0]:.0f} ms, median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
