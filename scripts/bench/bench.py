#!/usr/bin/env python3
"""siaga benchmarks (issue 7): the release binary on loopback, driven by
SIPp callers and SIPp agents registered with digest, with an RTP probe
(scripts/bench/rtp-probe) as the callers' media where loss and latency
are measured. Every scenario is bounded in time, samples siaga's CPU and
memory, and afterwards opens every recording and checks its SHA-256
against the call record. Not part of the test suite (a smoke run is:
`bench.py smoke`, tests/bench_smoke.rs).

  bench.py setup-rate [--rates 50,100,200] [--seconds 10] [--hold-ms 1000]
  bench.py concurrency [--calls 500] [--rate 100] [--hold 60]
  bench.py surge [--calls 1000] [--rate 100] [--hold 30]
  bench.py floor [--calls 1000,2000,3000] [--seconds 10] [--nap-us 200]
  bench.py smoke

`floor` runs no siaga: it is what the concurrency scenario's packets cost
this machine's kernel when a relay and its peers do nothing else
(rtp-probe's loopback-floor), the floor under any relay here.

SIAGA_BIN picks the binary (default: target/release/siaga, built first).
Ports: SIP 5460 (siaga), 5461 (callers), 5463 (agents), HTTP 8460,
agents' RTP 6000, probe 40000 and up.
"""

import argparse
import atexit
import csv
import glob
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"
SIP, CALLERS, HTTP = 5460, 5461, 8460
# The agents' phones: several SIPp processes (one echo socket each could
# not keep up with all calls: its receive queue overflowed), agent i on
# process i % len(AGENT_SIP), at AGENT_SIP[k] with media at AGENT_RTP[k].
AGENT_SIP = (5463, 5465, 5467, 5469)
AGENT_RTP = (6000, 6010, 6020, 6030)
PROBE_BASE = 40000
# A flood onto a surge: short calls from another SIPp, their RTP to one
# socket that nobody reads (the kernel drops what does not fit).
FLOOD, FLOOD_SINK = 5471, 5472
PASSWORD = "bench-sandi"
HZ = os.sysconf("SC_CLK_TCK")
# Every process started here, ended at exit whatever happened, so a failed
# run leaves nothing holding the ports.
CHILDREN = []


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    CHILDREN.append(p)
    return p


# Where runs live: as root, a fresh ext4 filesystem (a sparse file, loop
# mounted) made for this bench and dropped at its end. ext4 skips inodes
# freed in the last minutes when it allocates new ones, so a run made
# right after another deleted its thousands of recordings paid for that in
# file creation (seen as `recently_deleted` in perf); a center keeps its
# recordings. The loop device does direct I/O on its image (see below).
# Not root: a folder in /tmp, and those caveats.
WORK = None
FINISHED = []


def workdir():
    global WORK
    if WORK is None:
        base = Path(tempfile.mkdtemp(prefix="siaga-bench-fs."))
        image, mnt = base / "fs.img", base / "mnt"
        mnt.mkdir()
        tmpfs = os.environ.get("BENCH_FS") == "tmpfs"
        if tmpfs:
            # For diagnosis only: no disk at all, so what is left is not
            # the storage's (a center's recordings need a disk).
            made = os.geteuid() == 0 and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8G", "tmpfs", str(mnt)],
                capture_output=True,
            ).returncode == 0
        else:
            made = os.geteuid() == 0 and shutil.which("mkfs.ext4") and subprocess.run(
                f"truncate -s 40G {image} && mkfs.ext4 -q -F {image} && mount -o loop {image} {mnt}",
                shell=True, capture_output=True,
            ).returncode == 0
        if made and not tmpfs:
            # Direct I/O under the loop device: the image's pages go to the
            # disk, not into a second page cache (the backing file's) by the
            # loop workers on the same two cores. A real disk has one cache.
            # Buffered, the recorder thread took 365 ms of CPU a second with
            # 2,000 callers waiting; direct, 177 (BENCHMARKS.md).
            subprocess.run(f"losetup --direct-io=on $(findmnt -no SOURCE {mnt})",
                           shell=True, capture_output=True)
        WORK = (base, mnt if made else base, made)
    return WORK[1]


@atexit.register
def _end_children():
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
    for root in FINISHED:
        shutil.rmtree(root, ignore_errors=True)
    if WORK and os.environ.get("BENCH_KEEP"):
        log(f"kept {WORK[1]} (mounted: {WORK[2]})")
    elif WORK:
        base, _, mounted = WORK
        if mounted:
            subprocess.run(["umount", "-l", str(base / "mnt")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def quantile(values, f):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int((len(v) - 1) * f))]


def build(siaga=True):
    """The binaries: siaga's (unless not needed) and the bench peers'."""
    binary = os.environ.get("SIAGA_BIN")
    if not binary and siaga:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        binary = str(REPO / "target" / "release" / "siaga")
    probe_dir = BENCH / "rtp-probe"
    target = REPO / "target" / "rtp-probe"
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--target-dir", str(target)],
        cwd=probe_dir,
        check=True,
    )
    return binary, str(target / "release" / "rtp-probe")


def floor(probe_bin, calls, seconds, nap_us):
    """The concurrency scenario's packets with nothing else done: a
    do-nothing relay between a do-nothing probe and echo, `calls` at a time
    (scripts/bench/rtp-probe/src/bin/loopback-floor.rs)."""
    binary = str(Path(probe_bin).with_name("loopback-floor"))
    runs = []
    for n in calls:
        with tempfile.TemporaryDirectory(prefix="siaga-floor-") as root:
            before = machine(root)
        out = subprocess.run([binary, "--calls", str(n), "--seconds", str(seconds), "--nap-us", str(nap_us)],
                             capture_output=True, text=True, check=True, timeout=seconds + 60)
        run = json.loads(out.stdout)
        run["loss_pct"] = round(100 * run["lost"] / max(1, run["probe_sent"]), 4)
        run["machine"] = before
        runs.append(run)
    return {"scenario": "floor", "runs": runs}


class Siaga:
    """One siaga with a config made for the benchmark: one queue, `agents`
    agents (bench-0001...), no wrap-up, a trunk on loopback."""

    def __init__(self, binary, agents, ring_timeout="15s"):
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="run.", dir=workdir()))
        self.agents = [f"bench-{i:04d}" for i in range(1, agents + 1)]
        cfg = self.root / "sip-config"
        cfg.mkdir()
        (self.root / "dialplans").mkdir()
        shutil.copy(REPO / "dialplans" / "emergency.toml", self.root / "dialplans")
        (cfg / "siaga.toml").write_text(
            f"""[sip]
udp = ["127.0.0.1:{SIP}"]
tcp = ["127.0.0.1:{SIP}"]
public_ip = "127.0.0.1"
shutdown_grace = "5s"
realm = "siaga"
digest_algorithms = ["MD5"]
[media]
rtp_ip = "127.0.0.1"
rtp_port_min = 20000
rtp_port_max = 39999
prompts_dir = "{REPO / 'prompts'}"
recordings_dir = "{self.root / 'rec'}"
rtp_timeout = "60s"
[http]
listen = "127.0.0.1:{HTTP}"
[database]
url = "sqlite://{self.root / 'db' / 'siaga.db'}?mode=rwc"
[[trunk]]
name = "bench"
sources = ["127.0.0.1"]
"""
        )
        (cfg / "queues.toml").write_text(
            f"""[[queue]]
name = "ntpd-112"
max_wait = "3600s"
ring_timeout = "{ring_timeout}"
wrap_up = "0s"
[[queue]]
name = "psc-119"
max_wait = "3600s"
"""
        )
        (cfg / "agencies.toml").write_text('[[agency]]\nid = "ntpd"\nname = "NTPD"\n')
        lines = []
        for a in self.agents:
            md5 = hashlib.md5(f"{a}:siaga:{PASSWORD}".encode()).hexdigest()
            sha = hashlib.sha256(f"{a}:siaga:{PASSWORD}".encode()).hexdigest()
            lines.append(
                f'[[agent]]\nid = "{a}"\nname = "{a}"\nagency = "ntpd"\n'
                f'skills = {{ triage = 3, id = 3 }}\nha1_md5 = "{md5}"\nha1_sha256 = "{sha}"\n'
            )
        (cfg / "agents.toml").write_text("\n".join(lines))
        self.proc = None
        self.samples = []
        self._sampling = False

    def start(self):
        self.err = open(self.root / "siaga.log", "w")
        self.proc = spawn(
            [self.binary, "serve", "--config-root", str(self.root)],
            stdout=subprocess.PIPE,
            stderr=self.err,
            env={**os.environ, "SIAGA_LOG": os.environ.get("BENCH_LOG", "warn")},
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(f"siaga did not start: {line!r}\n{self.log()}")
        self.password = (self.root / "initial-admin-password").read_text().strip()
        self.cookie = self._login()
        self.idle_rss = self.rss()

    def log(self):
        return self.log_text()[-4000:]

    def log_text(self):
        return (self.root / "siaga.log").read_text(errors="replace")

    def _login(self):
        c = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=10)
        body = json.dumps({"username": "admin", "password": self.password})
        c.request("POST", "/api/login", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        cookie = r.getheader("Set-Cookie", "").split(";")[0]
        if r.status != 200 or not cookie:
            raise SystemExit(f"login failed: {r.status}")
        return cookie

    def api(self, method, path, body=None, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", HTTP, timeout=30)
        headers = {"Cookie": self.cookie, "Content-Type": "application/json"}
        c.request(method, path, body and json.dumps(body), headers)
        r = c.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None)

    def register_agents(self):
        """Every agent registers (digest, RFC 2617 qop=auth) from the port
        the agents' SIPp UAS takes next (siaga rings a phone where its
        REGISTER came from); then each is made ready. SIPp 3.6 cannot take
        a per-call user in its digest keyword, so the registrations are
        made here; the load itself is SIPp's."""
        socks = []
        for port in AGENT_SIP:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            sock.settimeout(5)
            socks.append((sock, port))

        def register(agent, cseq, auth=""):
            sock, port = socks[int(agent.split("-")[1]) % len(socks)]
            msg = (
                f"REGISTER sip:127.0.0.1:{SIP} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{agent}{cseq}\r\n"
                f"From: <sip:{agent}@127.0.0.1>;tag=r{agent}\r\n"
                f"To: <sip:{agent}@127.0.0.1>\r\nCall-ID: reg-{agent}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:{agent}@127.0.0.1:{port}>\r\nExpires: 3600\r\n{auth}"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendto(msg.encode(), ("127.0.0.1", SIP))
            while True:
                reply = sock.recv(65535).decode(errors="replace")
                if f"CSeq: {cseq} REGISTER" in reply and f"Call-ID: reg-{agent}" in reply:
                    return reply

        uri = f"sip:127.0.0.1:{SIP}"
        for agent in self.agents:
            challenge = register(agent, 1)
            nonce = challenge.split('nonce="', 1)[1].split('"', 1)[0]
            md5 = lambda t: hashlib.md5(t.encode()).hexdigest()
            ha1 = md5(f"{agent}:siaga:{PASSWORD}")
            ha2 = md5(f"REGISTER:{uri}")
            response = md5(f"{ha1}:{nonce}:00000001:bench:auth:{ha2}")
            auth = (
                f'Authorization: Digest username="{agent}", realm="siaga", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="bench"\r\n'
            )
            reply = register(agent, 2, auth)
            if not reply.startswith("SIP/2.0 200"):
                raise SystemExit(f"{agent} did not register: {reply.splitlines()[0]}")
        for sock, _ in socks:
            sock.close()
        conn = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=30)
        for a in self.agents:
            status, body = self.api("POST", f"/api/agents/{a}/state", {"state": "ready"}, conn)
            if status != 200:
                raise SystemExit(f"{a} not ready ({status} {body})")

    # -- sampling -------------------------------------------------------

    def cpu_ticks(self, pid=None):
        with open(f"/proc/{pid or self.proc.pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024
        return 0

    def sample(self, others=()):
        """Starts sampling CPU (% of one core) and RSS every second, and
        the kernel's per-socket UDP drop counters (who lost packets)."""
        self._sampling = True
        self.samples = []
        self.drops = {}

        def run():
            prev = self.cpu_ticks()
            prev_o = {p: self._ticks_or_0(p) for p in others}
            t0 = time.monotonic()
            while self._sampling:
                time.sleep(1)
                cur = self.cpu_ticks()
                cur_o = {p: self._ticks_or_0(p) for p in others}
                other = sum(cur_o[p] - prev_o[p] for p in others) * 100 / HZ
                self.samples.append((time.monotonic() - t0, (cur - prev) * 100 / HZ, self.rss(), other))
                prev, prev_o = cur, cur_o
                udp_drops(self.drops)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        # /healthz on a thread of its own: a slow answer must not stretch
        # the CPU samples' one-second intervals.
        self.behind = []

        def poll():
            while self._sampling:
                time.sleep(1)
                self.behind.append(self.recorder_health())

        self._poller = threading.Thread(target=poll, daemon=True)
        self._poller.start()

    def recorder_health(self):
        """What /healthz says of the recordings: how far behind the calls
        they are written, how long since they were last made durable, and
        how much audio was left out of them (the recorder's queue full);
        None when it does not answer within a second."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=1)
            c.request("GET", "/healthz")
            body = json.loads(c.getresponse().read())
            c.close()
            return (
                body["recordings_behind_ms"],
                body["recordings_unsynced_ms"],
                body["recordings_lost_ms"],
            )
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return None

    def health_summary(self):
        """The recorder's worst figures while sampling, and how often
        /healthz did not answer."""
        seen = [b for b in self.behind if b is not None]
        return {
            "recorder_behind_ms_max": max((b[0] for b in seen), default=None),
            "recorder_unsynced_ms_max": max((b[1] for b in seen), default=None),
            "recordings_lost_ms": max((b[2] for b in seen), default=None),
            "healthz_unanswered": len(self.behind) - len(seen),
        }

    def _ticks_or_0(self, pid):
        try:
            return self.cpu_ticks(pid)
        except OSError:
            return 0

    def stop_sampling(self):
        self._sampling = False
        self._thread.join()
        self._poller.join()
        return self.samples

    # -- the end -----------------------------------------------------------

    def stop(self):
        """SIGTERM: siaga drains, closes recordings and flushes records."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("siaga did not stop within 60 s of SIGTERM")
        self.stop_s = round(time.monotonic() - began, 2)

    def verify(self):
        """Every call's record and recording: (rows, summary dict)."""
        db = sqlite3.connect(self.root / "db" / "siaga.db")
        rows = db.execute(
            "SELECT recording_path, recording_sha256, answered_at, agent_answered_at, ended_at,"
            " end_cause, arrived_at, recording_error FROM calls WHERE direction = 'inbound'"
        ).fetchall()
        ok, durations, total_bytes = 0, [], 0
        # Why a recording did not verify: no checksum stored (its record
        # never came), a file missing, or a checksum that differs.
        unsummed = missing = differs = errors = 0
        for path, sha, *rest in rows:
            errors += rest[-1] is not None
            if not path or not os.path.exists(path):
                missing += bool(path)
                continue
            data = open(path, "rb").read()
            total_bytes += len(data)
            if sha is None:
                unsummed += 1
            elif sha != hashlib.sha256(data).hexdigest():
                differs += 1
            if sha == hashlib.sha256(data).hexdigest():
                try:
                    with wave.open(path) as w:
                        durations.append(w.getnframes() / w.getframerate())
                        ok += 1
                except wave.Error:
                    pass
        return rows, {
            "calls": len(rows),
            "recordings_verified": ok,
            "not_verified": {"no_checksum": unsummed, "file_missing": missing, "checksum_differs": differs,
                             "with_error_on_record": errors},
            "stop_s": getattr(self, "stop_s", None),
            "records_lost_at_stop": "did not take every record" in self.log_text(),
            "with_agent": sum(1 for r in rows if r[3]),
            "recording_s_p1": round(quantile(durations, 0.01), 2),
            "recording_s_p50": round(quantile(durations, 0.5), 2),
            "recording_bytes": total_bytes,
            "end_causes": {c: sum(1 for r in rows if r[5] == c) for c in {r[5] for r in rows}},
        }

    def teardown(self, uas=None):
        """Whatever happened: the agents' phones and siaga end, the run's
        folder is left for deletion."""
        if uas:
            uas.kill()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        self.cleanup()

    def cleanup(self):
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {self.root}")
        else:
            FINISHED.append(self.root)


class AgentsUas:
    """The agents' phones: SIPp UAS processes answering for every agent,
    echoing RTP (AGENT_SIP, AGENT_RTP)."""

    def __init__(self, root, limit_s):
        self.procs = [
            spawn(
                ["sipp", "-timeout", f"{int(limit_s)}s", "-sf", str(BENCH / "sipp" / "agent.xml"),
                 "-i", "127.0.0.1", "-p", str(sip), "-mi", "127.0.0.1", "-mp", str(rtp), "-rtp_echo",
                 "-nostdin", "-bind_local", "-max_socket", "10000"],
                cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for sip, rtp in zip(AGENT_SIP, AGENT_RTP)
        ]
        self.pids = [p.pid for p in self.procs]

    def kill(self):
        for p in self.procs:
            p.kill()


def caller_sipp(cwd, port, inf, rate, count, hold_ms, limit_s, extra=()):
    """SIPp dialing 112 from `port` with caller.xml, its RTP ports from
    `inf`, `count` calls at `rate`, each `hold_ms` long; stats in `cwd`."""
    return spawn(
        ["sipp", f"127.0.0.1:{SIP}", "-timeout", f"{int(limit_s)}s", "-sf", str(BENCH / "sipp" / "caller.xml"),
         "-inf", str(inf), "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1",
         "-r", str(rate), "-m", str(count), "-l", str(count), "-d", str(hold_ms), "-nostdin",
         "-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1", *extra, "-max_socket", "10000"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def callers(root, count, rate, hold_ms, rtp_ports, limit_s, tag):
    """SIPp callers dialing 112; caller i's RTP is at rtp_ports[i]."""
    inf = Path(root) / f"callers-{tag}.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{p}\n" for p in rtp_ports))
    return caller_sipp(root, CALLERS, inf, rate, count, hold_ms, limit_s,
                       ["-trace_err", "-trace_logs", "-log_file", str(Path(root) / "answers.log")])


def flood(root, rate, seconds, hold_ms, limit_s):
    """Short calls to 112 at `rate` for `seconds`, each hanging up after
    `hold_ms` (prank and silent calls), from a SIPp of their own in
    `root`/flood; their RTP goes to FLOOD_SINK."""
    folder = Path(root) / "flood"
    folder.mkdir()
    count = max(1, int(rate * seconds))
    inf = folder / "flood.csv"
    inf.write_text(f"SEQUENTIAL\n{FLOOD_SINK}\n")
    proc = caller_sipp(folder, FLOOD, inf, rate, count, hold_ms, limit_s)
    proc.folder = folder
    proc.count = count
    return proc


def sipp_outcome(proc, root):
    proc.communicate()
    stats = sorted(glob.glob(f"{root}/caller_*_.csv"))
    ok = failed = 0
    if stats:
        with open(stats[-1]) as f:
            rows = list(csv.reader(f, delimiter=";"))
        head, last = rows[0], rows[-1]
        ok = int(last[head.index("SuccessfulCall(C)")])
        failed = int(last[head.index("FailedCall(C)")])
    rtt = {1: [], 2: []}
    for path in glob.glob(f"{root}/caller_*_rtt.csv"):
        with open(path) as f:
            for row in csv.reader(f, delimiter=";"):
                try:
                    rtt[int(row[2])].append(float(row[1]))
                except (ValueError, IndexError):
                    pass
    for path in glob.glob(f"{root}/caller_*"):
        os.rename(path, path + ".done")
    return ok, failed, rtt


class SipCapture:
    """INVITE->100 and INVITE->200 per call from the wire (dumpcap on
    loopback, kernel timestamps, µs), when Wireshark's dumpcap and tshark
    are installed (apt-get install tshark); else None."""

    def __init__(self, root):
        self.file = Path(root) / "sip.pcapng"
        self.proc = None
        if shutil.which("dumpcap") and shutil.which("tshark"):
            self.proc = spawn(
                ["dumpcap", "-q", "-i", "lo", "-f", f"udp and port {SIP} and port {CALLERS}", "-w", str(self.file)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1)

    def times(self):
        if not self.proc:
            return None
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        out = subprocess.run(
            ["tshark", "-r", str(self.file), "-d", f"udp.port=={SIP},sip", "-T", "fields", "-E", "separator=;",
             "-e", "frame.time_epoch", "-e", "sip.Call-ID", "-e", "sip.Method", "-e", "sip.Status-Code",
             "-e", "sip.CSeq.method"],
            capture_output=True, text=True, check=True,
        ).stdout
        invite, trying, ok = {}, {}, {}
        for line in out.splitlines():
            t, call, method, status, cseq = (line.split(";") + [""] * 5)[:5]
            if cseq != "INVITE" or not call:
                continue
            if method == "INVITE":
                invite.setdefault(call, float(t))
            elif status == "100":
                trying.setdefault(call, float(t))
            elif status == "200":
                ok.setdefault(call, float(t))
        d = lambda got: [(got[c] - invite[c]) * 1000 for c in got if c in invite]
        return {1: d(trying), 2: d(ok)}


def udp_drops(seen):
    """Largest drop count seen per UDP socket (inode), with its port."""
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            w = line.split()
            port, inode, drops = int(w[1].split(":")[1], 16), w[9], int(w[12])
            if drops:
                seen[inode] = (port, max(drops, seen.get(inode, (0, 0))[1]))


def drop_summary(seen):
    """Packets the kernel dropped for lack of room, by whose sockets."""
    out = {"siaga_rtp": 0, "siaga_sip": 0, "agents_echo": 0, "probe": 0, "other": 0}
    for port, n in seen.values():
        if 20000 <= port <= 39999:
            out["siaga_rtp"] += n
        elif port == SIP:
            out["siaga_sip"] += n
        elif port in AGENT_RTP or port - 2 in AGENT_RTP:
            out["agents_echo"] += n
        elif port >= PROBE_BASE:
            out["probe"] += n
        elif port == FLOOD_SINK:
            out["flood_sink"] = out.get("flood_sink", 0) + n
        else:
            out["other"] += n
    return out


def machine(root):
    """The machine's state just before a run, so that runs made hours apart
    can be told apart from changes in siaga: the same build on this VM
    measured very differently in the afternoon and the evening. First waits
    (up to 60 s) for the last run's dirty pages to reach the disk, then
    times a fixed busy loop (best of 3) and 20 small writes with
    `fdatasync` on the run's filesystem."""
    waited = time.monotonic()
    while time.monotonic() - waited < 60:
        with open("/proc/meminfo") as f:
            kb = {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("Dirty:", "Writeback:"))}
        if kb.get("Dirty", 0) + kb.get("Writeback", 0) < 32 * 1024:
            break
        time.sleep(0.5)
    settle_s = time.monotonic() - waited
    spins = []
    for _ in range(3):
        t = time.perf_counter()
        x = 0
        for i in range(2_000_000):
            x += i
        spins.append((time.perf_counter() - t) * 1000)
    syncs = []
    path = Path(root) / "fsync-probe"
    with open(path, "wb") as f:
        for _ in range(20):
            f.write(b"\0" * 4096)
            t = time.perf_counter()
            os.fdatasync(f.fileno())
            syncs.append((time.perf_counter() - t) * 1000)
    path.unlink()
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    return {"settle_s": round(settle_s, 1), "spin_ms": round(min(spins), 1),
            "fdatasync_ms_p50": round(quantile(syncs, 0.5), 2), "fdatasync_ms_max": round(max(syncs), 2),
            "load_1min": load, "storage": storage(root)}


def storage(root):
    """What the run's files are on: a loop device doing direct I/O (as
    bench runs as root make it), a buffered loop device, or a plain folder.
    Figures before the direct I/O (BENCHMARKS.md) were on a buffered one."""
    source = subprocess.run(["findmnt", "-no", "SOURCE", "-T", str(root)],
                            capture_output=True, text=True).stdout.strip()
    if source == "tmpfs":
        return "tmpfs"
    if not source.startswith("/dev/loop"):
        return "folder"
    try:
        dio = Path(f"/sys/block/{Path(source).name}/loop/dio").read_text().strip()
    except OSError:
        return "loop"
    return "loop, direct I/O" if dio == "1" else "loop, buffered"


def answer_times(rtt):
    """INVITE->100 Trying and INVITE->200 OK, p50 and p99 (ms), from
    `sipp_outcome`'s or the wire's times."""
    q = lambda times, f: round(quantile(times, f), 3)
    return {"trying_ms_p50": q(rtt[1], 0.5), "trying_ms_p99": q(rtt[1], 0.99),
            "ok_ms_p50": q(rtt[2], 0.5), "ok_ms_p99": q(rtt[2], 0.99)}


def cpu_summary(samples, skip_first=1):
    cpu = [s[1] for s in samples[skip_first:]] or [0]
    return {
        "cpu_pct_mean": round(sum(cpu) / len(cpu)),
        "cpu_pct_max": round(max(cpu)),
        "rss_mib_max": round(max((s[2] for s in samples), default=0) / 2**20, 1),
        "peers_cpu_pct_mean": round(sum(s[3] for s in samples) / max(1, len(samples))),
    }


def probe(binary, count, seconds, target=None, root=None, until_measured=False):
    """The callers' RTP: to `target` (baseline), or where each answer says
    (SIPp's log in `root`). With `until_measured`, `seconds` is a least:
    the probe goes on until every call has been measured (a minute more
    at most), so a call set up late on a busy machine is not missed."""
    args = [binary, "--base", str(PROBE_BASE), "--count", str(count), "--seconds", str(seconds)]
    if target:
        args += ["--target", target]
    if root:
        args += ["--remotes", str(Path(root) / "answers.log")]
    if until_measured:
        args += ["--until-measured"]
    p = spawn(args, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    p.seconds = seconds
    return p


def probe_result(p):
    out, _ = p.communicate(timeout=p.seconds + 120)
    return json.loads(out.strip().splitlines()[-1])


# -- scenarios ---------------------------------------------------------


def setup_rate(binary, probe_bin, rates, seconds, hold_ms):
    """Short recorded calls answered by agents, at each rate in turn, each
    on a fresh siaga: failed calls, 100 Trying and 200 OK times."""
    results = []
    for rate in rates:
        count = int(rate * seconds)
        agents = max(10, int(rate * (hold_ms / 1000 + 1.5)))
        s = Siaga(binary, agents)
        uas = None
        try:
            before = machine(s.root)
            s.start()
            s.register_agents()
            uas = AgentsUas(s.root, seconds + hold_ms / 1000 + 120)
            time.sleep(0.5)
            cap = SipCapture(s.root)
            # The callers talk (the probe); the agents echo.
            p = probe(probe_bin, count, seconds + hold_ms / 1000 + 3, root=s.root)
            s.sample(others=[*uas.pids, p.pid])
            c = callers(s.root, count, rate, hold_ms, [PROBE_BASE + 2 * i for i in range(count)],
                        seconds + hold_ms / 1000 + 60, "rate")
            ok, failed, rtt = sipp_outcome(c, s.root)
            media = probe_result(p)
            wire = cap.times()
            rtt = wire or rtt
            samples = s.stop_sampling()
            time.sleep(1)
            s.stop()
            rows, rec = s.verify()
            not_to_agent = count - rec["with_agent"]
            bad = failed + max(0, not_to_agent) + (rec["calls"] - rec["recordings_verified"])
            r = {
                "rate": rate, "calls": count, "sipp_ok": ok, "sipp_failed": failed,
                "timed_by": "wire (dumpcap)" if wire else "SIPp (ms steps)", "timed_calls": len(rtt[2]),
                "reached_agent": rec["with_agent"], "recordings_verified": rec["recordings_verified"],
                "not_verified": rec["not_verified"], "stop_s": rec["stop_s"],
                "records_lost_at_stop": rec["records_lost_at_stop"],
                "failed_pct": round(100 * bad / count, 3),
                "rtp_lost": media["packets_lost"], "rtp_returned": media["packets_returned"],
                "udp_drops": drop_summary(s.drops),
                **answer_times(rtt),
                **cpu_summary(samples), **s.health_summary(),
                "machine": before,
            }
            results.append(r)
            log(json.dumps(r))
        finally:
            s.teardown(uas)
    best = max((r["rate"] for r in results if r["failed_pct"] < 0.1), default=0)
    return {"scenario": "setup-rate", "hold_ms": hold_ms, "seconds_per_rate": seconds,
            "highest_rate_under_0.1pct_failed": best, "rates": results}


def concurrency(binary, probe_bin, calls, rate, hold):
    """`calls` bridged, recorded calls at once for `hold` s, RTP both ways
    (probe -> siaga -> agent's echo -> siaga -> probe)."""
    ramp = calls / rate
    s = Siaga(binary, calls + 5)
    uas = None
    try:
        before = machine(s.root)
        s.start()
        s.register_agents()
        uas = AgentsUas(s.root, 30 + ramp + hold + 120)
        time.sleep(0.5)
        # Baseline first: the probe straight to the agents' echo, no siaga.
        echoes = ",".join(f"127.0.0.1:{port}" for port in AGENT_RTP)
        base = probe_result(probe(probe_bin, calls, 5, target=echoes))
        p = probe(probe_bin, calls, ramp + 2 + hold, root=s.root, until_measured=True)
        s.sample(others=[*uas.pids, p.pid])
        c = callers(s.root, calls, rate, int((ramp + hold + 6) * 1000), [PROBE_BASE + 2 * i for i in range(calls)],
                    ramp + hold + 120, "conc")
        via = probe_result(p)
        plateau_rss = s.rss()
        ok, failed, rtt = sipp_outcome(c, s.root)
        samples = s.stop_sampling()
        s.stop()
        rows, rec = s.verify()
        plateau = [x for x in samples if ramp + 2 < x[0] < ramp + hold]
        added = lambda k: round((via["rtt_us"][k] - base["rtt_us"][k]) / 2 / 1000, 3)
        return {
            "scenario": "concurrency", "calls": calls, "rate": rate, "hold_s": hold,
            "sipp_ok": ok, "sipp_failed": failed, "reached_agent": rec["with_agent"],
            "recordings_verified": rec["recordings_verified"],
            "rtp": via, "baseline_rtt_us": base["rtt_us"], "udp_drops": drop_summary(s.drops),
            "added_latency_ms_p50": added("p50"), "added_latency_ms_p99": added("p99"),
            "loss_pct": round(100 * via["packets_lost"] / max(1, via["packets_expected"]), 4),
            "mib_per_call": round((plateau_rss - s.idle_rss) / 2**20 / calls, 3),
            "recorder_mib_s": round(rec["recording_bytes"] / 2**20 / (ramp + hold + 6), 1),
            **cpu_summary(plateau or samples, 0), **s.health_summary(),
            "rss_mib_idle": round(s.idle_rss / 2**20, 1),
            "machine": before,
        }
    finally:
        s.teardown(uas)


def surge(binary, probe_bin, calls, rate, hold, flood_rate=0, flood_seconds=10, flood_hold_ms=2000):
    """No agent free: `calls` callers wait hearing prompts, recorded; the
    probe is each caller's phone and times the prompts' packets. With
    `flood_rate`, 5 s after the queue has filled, short calls come at that
    rate for `flood_seconds` (each `flood_hold_ms` long) while the callers
    wait: what those already waiting hear through a flood."""
    ramp = calls / rate
    if flood_rate and 5 + flood_seconds + flood_hold_ms / 1000 + 5 > hold:
        raise SystemExit("the flood must end 5 s before the hold does: a longer --hold")
    s = Siaga(binary, 0)
    sink = None
    try:
        before = machine(s.root)
        s.start()
        p = probe(probe_bin, calls, ramp + hold, root=s.root)
        s.sample(others=[p.pid])
        began = time.monotonic()
        c = callers(s.root, calls, rate, int((ramp + hold + 3) * 1000), [PROBE_BASE + 2 * i for i in range(calls)],
                    ramp + hold + 120, "surge")
        f = None
        if flood_rate:
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", FLOOD_SINK))
            time.sleep(max(0.0, began + ramp + 5 - time.monotonic()))
            f = flood(s.root, flood_rate, flood_seconds, flood_hold_ms, hold + 120)
        got = probe_result(p)
        plateau_rss = s.rss()
        _, queues = s.api("GET", "/api/queues")
        waiting = sum(len(q["waiting"]) for q in queues)
        flooded = {}
        if f:
            fok, ffailed, frtt = sipp_outcome(f, f.folder)
            flooded = {"flood": {
                "rate": flood_rate, "seconds": flood_seconds, "hold_ms": flood_hold_ms, "calls": f.count,
                "sipp_ok": fok, "sipp_failed": ffailed, **answer_times(frtt),
            }}
        ok, failed, rtt = sipp_outcome(c, s.root)
        samples = s.stop_sampling()
        s.stop()
        rows, rec = s.verify()
        plateau = [x for x in samples if ramp + 1 < x[0] < ramp + hold]
        return {
            "scenario": "surge", "calls": calls, "rate": rate, "hold_s": hold, **flooded,
            "waiting_at_end": waiting, "sipp_ok": ok, "sipp_failed": failed,
            "records": rec["calls"], "recordings_verified": rec["recordings_verified"], "prompts": got["prompts"],
            "udp_drops": drop_summary(s.drops),
            "mib_per_call": round((plateau_rss - s.idle_rss) / 2**20 / calls, 3),
            "recording_s_p1": rec["recording_s_p1"], "recording_s_p50": rec["recording_s_p50"],
            "trying_ms_p99": round(quantile(rtt[1], 0.99), 2),
            **cpu_summary(plateau or samples, 0), **s.health_summary(),
            "machine": before,
        }
    finally:
        if sink:
            sink.close()
        s.teardown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("setup-rate")
    a.add_argument("--rates", default="50,100,200,300,500")
    a.add_argument("--seconds", type=float, default=10)
    a.add_argument("--hold-ms", type=int, default=1000)
    a = sub.add_parser("concurrency")
    a.add_argument("--calls", type=int, default=500)
    a.add_argument("--rate", type=int, default=100)
    a.add_argument("--hold", type=float, default=60)
    a = sub.add_parser("surge")
    a.add_argument("--calls", type=int, default=1000)
    a.add_argument("--rate", type=int, default=100)
    a.add_argument("--hold", type=float, default=30)
    a.add_argument("--flood-rate", type=int, default=0, help="short calls a second onto the waiting callers")
    a.add_argument("--flood-seconds", type=float, default=10)
    a.add_argument("--flood-hold-ms", type=int, default=2000)
    a = sub.add_parser("floor")
    a.add_argument("--calls", default="1000,2000,3000")
    a.add_argument("--seconds", type=float, default=10)
    a.add_argument("--nap-us", type=int, default=200)
    sub.add_parser("smoke")
    args = ap.parse_args()
    for tool in ("sipp", "cargo"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool} (sipp: apt-get install sip-tester)")
    binary, probe_bin = build(siaga=args.cmd != "floor")
    if args.cmd == "setup-rate":
        out = [setup_rate(binary, probe_bin, [int(r) for r in args.rates.split(",")], args.seconds, args.hold_ms)]
    elif args.cmd == "concurrency":
        out = [concurrency(binary, probe_bin, args.calls, args.rate, args.hold)]
    elif args.cmd == "surge":
        out = [surge(binary, probe_bin, args.calls, args.rate, args.hold,
                     args.flood_rate, args.flood_seconds, args.flood_hold_ms)]
    elif args.cmd == "floor":
        out = [floor(probe_bin, [int(n) for n in args.calls.split(",")], args.seconds, args.nap_us)]
    else:
        out = [
            setup_rate(binary, probe_bin, [5], 2, 500),
            concurrency(binary, probe_bin, 5, 5, 3),
            surge(binary, probe_bin, 5, 5, 12, flood_rate=5, flood_seconds=1, flood_hold_ms=1000),
            floor(probe_bin, [5], 2, 200),
        ]
    for o in out:
        print(json.dumps(o))


if __name__ == "__main__":
    main()
