"""Separate hosts on one machine: network namespaces joined by an emulated link (root only).

Each party ("host") gets its own network namespace (``ip netns``) with one point-to-point TUN
interface ``tun0`` (10.77.0.1 = client, .2 = server, .3 = dealer). A small forwarding process in
the root namespace (the *wire*) moves every IP packet between the hosts' TUN devices and applies
the link: each direction serialises packets at the link's bandwidth and delivers them one-way
delay (RTT / 2) later. TCP, its windows and its acknowledgements run unchanged in the kernels of
the namespaces, so what the parties measure is what the link costs them.

Why not ``tc netem``: it is the usual tool (``tc qdisc add dev veth0 root netem delay 5ms rate
100mbit``), but many kernels (this machine's among them) are built without ``sch_netem``;
:func:`netem_available` says whether it is there. The wire needs only TUN, which every Linux
kernel with namespaces has; its packet timing is close to netem's with an unlimited queue.

    with Lab(["client", "server"], Link("wan10", 100e6, 0.010)) as lab:
        lab.set_link(Link(...))                 # change the link between runs
        p = lab.popen("client", [...])          # a command inside the client's namespace
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from pmpc import markdown as md
from pmpc.mpc import handshake
from pmpc.mpc.cost import Link

SUBNET = "10.77.0"
MTU = 16000  # large packets keep the Python wire well below one core at 1 Gbit/s
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


def address(index: int) -> str:
    return f"{SUBNET}.{index + 1}"


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, TUN devices)"
    if not shutil.which("ip"):
        return "the `ip` command (iproute2) is missing"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no TUN support)"
    probe = f"pmpcprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def netem_available() -> bool:
    """Whether this kernel has tc's netem qdisc (the wire is used either way)."""
    if not shutil.which("tc") or os.geteuid() != 0:
        return False
    probe = f"pmpcnetem{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return False
    try:
        r = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                            "delay", "1ms"], capture_output=True)
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Lab:
    """Namespaces ``<prefix>-<name>`` for ``names`` (in address order), joined by the wire."""

    def __init__(self, names, link: Link | None = None, prefix: str | None = None):
        self.names = list(names)
        self.prefix = prefix or f"pmpc{os.getpid()}"
        self.link = link
        self.wire: subprocess.Popen | None = None
        self.made: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def addr(self, name: str) -> str:
        return address(self.names.index(name))

    def __enter__(self):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        try:
            for i, name in enumerate(self.names):
                ns = self.ns(name)
                _ip("netns", "add", ns)
                self.made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "tuntap", "add", "dev", "tun0", "mode", "tun")
                _ip("-n", ns, "addr", "add", f"{address(i)}/24", "dev", "tun0")
                _ip("-n", ns, "link", "set", "tun0", "mtu", str(MTU), "up")
            self.wire = subprocess.Popen([sys.executable, "-m", "pmpc.mpc.netlab", *[self.ns(n) for n in self.names]],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            if self.wire.stdout.readline().strip() != "ready":
                raise RuntimeError("the wire process did not start")
            self.set_link(self.link)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def set_link(self, link: Link | None) -> None:
        """Change the emulated link (None: no delay, no rate limit)."""
        self.link = link
        bw, rtt = (0.0, 0.0) if link is None else (link.bandwidth_bps, link.rtt_s)
        self.wire.stdin.write(f"set {bw} {rtt}\n")
        self.wire.stdin.flush()
        if self.wire.stdout.readline().strip() != "ok":
            raise RuntimeError("the wire did not take the new link")

    def popen(self, name: str, argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(name), *argv], **kw)

    def __exit__(self, *exc):
        if self.wire is not None:
            with contextlib.suppress(Exception):
                self.wire.stdin.close()
            try:
                self.wire.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.wire.kill()
                self.wire.wait()
            self.wire = None
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []
        return False


# -- the wire (runs as `python -m pmpc.mpc.netlab NS1 NS2 ...`) ------------------------------------
def _open_tun_in(ns: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tun0", IFF_TUN | IFF_NO_PI))
        os.set_blocking(fd, False)
        return fd
    finally:
        libc.setns(here, CLONE_NEWNET)
        os.close(here)
        os.close(there)


def wire(namespaces) -> None:
    """Forward IPv4 packets between the namespaces' TUN devices with the current link applied."""
    fds = [_open_tun_in(ns) for ns in namespaces]
    index = {fd: i for i, fd in enumerate(fds)}
    bw, one_way = 0.0, 0.0
    free_at: dict = {}   # (src, dst) -> when that direction's transmitter is free
    heap: list = []      # (deliver_at, seq, dst_fd, packet)
    seq = 0
    print("ready", flush=True)
    ctl = sys.stdin
    while True:
        now = time.monotonic()
        wait = max(0.0, heap[0][0] - now) if heap else None
        ready, _, _ = select.select(fds + [ctl], [], [], wait)
        for fd in ready:
            if fd is ctl:
                line = ctl.readline()
                if not line:  # the lab closed our stdin: done
                    return
                cmd = line.split()
                if cmd and cmd[0] == "set":
                    bw, one_way = float(cmd[1]), float(cmd[2]) / 2
                    print("ok", flush=True)
                continue
            src = index[fd]
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(pkt) < 20 or pkt[0] >> 4 != 4:
                    continue  # not IPv4 (e.g. IPv6 router solicitations): dropped
                dst = pkt[19] - 1
                if not 0 <= dst < len(fds) or dst == src:
                    continue
                t = time.monotonic()
                start = max(t, free_at.get((src, dst), 0.0))
                done = start + (len(pkt) * 8 / bw if bw > 0 else 0.0)
                free_at[(src, dst)] = done
                seq += 1
                heapq.heappush(heap, (done + one_way, seq, fds[dst], pkt))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, dst_fd, pkt = heapq.heappop(heap)
            try:
                os.write(dst_fd, pkt)
            except OSError:
                pass  # the device went away (lab closing); the packet is lost, as on a real link


if __name__ == "__main__":
    wire(sys.argv[1:])


# -- a secure generation across the lab, measured against the cost model ---------------------------
def run_session(lab: Lab, model: str, protocol: str, ids: str, new_tokens: int = 1, dealer: str = "local",
                weights: str = "public", timeout_s: float = 60.0, preprocess: bool = True,
                workdir: str | None = None) -> dict:
    """One secure generation with each party a separate ``pmpc party`` process in its own
    namespace (client, server and, for ``ttp``, dealer). Returns the client's result (phases,
    tokens) and the wall time of the session."""
    port = random.randint(20000, 60000)
    rdv = f"tcp://{lab.addr('client')}:{port}"
    env = {**os.environ, "TORCH_CPP_LOG_LEVEL": "FATAL", "PYTHONWARNINGS": "ignore"}
    common = [sys.executable, "-m", "cli.main", "party", "-m", model, "-p", protocol, "-n", str(new_tokens),
              "--dealer", dealer, "--weights", weights, "--timeout", str(timeout_s), "--rendezvous", rdv,
              "--preprocess" if preprocess else "--no-preprocess"]
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        out = os.path.join(d, "client.json")
        psk = os.path.join(d, "psk")  # one fresh pre-shared key for the session's parties
        with open(os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(handshake.new_psk())
        common += ["--psk-file", psk]
        roles = [("client", ["--rank", "0", "--ids", ids, "--json", out]), ("server", ["--rank", "1"])]
        if dealer == "ttp":
            roles.append(("dealer", ["--rank", "2"]))
        t0 = time.monotonic()
        procs = [(name, lab.popen(name, common + extra, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)) for name, extra in roles]
        errs = {}
        try:
            for name, p in procs:
                _, err = p.communicate(timeout=timeout_s * 6 + 120)
                if p.returncode != 0:
                    errs[name] = (err.strip().splitlines() or ["?"])[-1]
        finally:
            for _, p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        wall = time.monotonic() - t0
        if errs:
            raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errs.items()))
        with open(out) as f:
            res = json.load(f)
    res["session_seconds"] = wall
    return res


def compare(base: dict, measured: dict, link: Link) -> dict:
    """Measured online time on ``link`` against the cost model: the no-delay run's compute time
    plus ``rounds * RTT + bytes / bandwidth`` (:meth:`pmpc.mpc.cost.Link.time`)."""
    row = {"link": link.name, "rtt_ms": link.rtt_s * 1e3, "mbit_s": link.bandwidth_bps / 1e6}
    for phase in ("prefill", "decode"):
        b, m = base["phases"][phase], measured["phases"][phase]
        n = max(m.get("tokens", 1), 1) if phase == "decode" else 1
        if phase == "decode" and not m.get("tokens"):
            continue
        pred = link.time(b["rounds"], b["bytes"], b["seconds"])
        row[phase] = {"rounds": b["rounds"] / n, "mb": b["bytes"] / 1e6 / n, "base_s": b["seconds"] / n,
                      "measured_s": m["seconds"] / n, "modelled_s": pred / n, "ratio": m["seconds"] / pred}
    off = measured["phases"].get("offline")
    if off:
        row["offline_s"] = off["prefill"]["seconds"] + off["decode"]["seconds"]
    plan = measured["phases"].get("plan")
    if plan:
        row["plan_s"] = plan["seconds"]
    return row


def measure(links, model="tiny-random-llama", protocol="exact", ids="1,2,3", new_tokens=1, dealer="local",
            weights="public", timeout_s=60.0, preprocess=True, log=None) -> dict:
    """Run the same generation with no emulated delay, then on each link; compare with the model."""
    names = ["client", "server"] + (["dealer"] if dealer == "ttp" else [])
    rows = []
    with Lab(names) as lab:
        lab.set_link(None)
        base = run_session(lab, model, protocol, ids, new_tokens, dealer, weights, timeout_s, preprocess)
        if log:
            log(f"no-delay run: online prefill {base['phases']['prefill']['seconds']:.2f} s, "
                f"{base['phases']['prefill']['rounds']} rounds")
        for link in links:
            lab.set_link(link)
            m = run_session(lab, model, protocol, ids, new_tokens, dealer, weights, timeout_s, preprocess)
            rows.append(compare(base, m, link))
            if log:
                log(format_row(rows[-1]))
    return {"model": model, "protocol": protocol, "dealer": dealer, "new_tokens": new_tokens, "preprocess": preprocess,
            "emulator": "pmpc.mpc.netlab TUN wire", "netem_available": netem_available(),
            "base": {p: base["phases"][p] for p in ("prefill", "decode")}, "rows": rows}


def format_row(r: dict) -> str:
    p = r["prefill"]
    s = (f"{r['link']} ({r['rtt_ms']:.1f} ms RTT, {r['mbit_s']:.0f} Mbit/s): prefill measured {p['measured_s']:.2f} s, "
         f"modelled {p['modelled_s']:.2f} s (x{p['ratio']:.2f})")
    if "decode" in r:
        d = r["decode"]
        s += f"; decode measured {d['measured_s']:.2f} s/token, modelled {d['modelled_s']:.2f} s/token (x{d['ratio']:.2f})"
    return s


def table(res: dict) -> str:
    rows = [[r["link"], f"{r['rtt_ms']:.1f}", f"{r['mbit_s']:.0f}", phase + (" /token" if phase == "decode" else ""),
             f"{r[phase]['rounds']:.0f}", f"{r[phase]['mb']:.2f}", f"{r[phase]['base_s']:.2f}",
             f"{r[phase]['measured_s']:.2f}", f"{r[phase]['modelled_s']:.2f}", f"{r[phase]['ratio']:.2f}"]
            for r in res["rows"] for phase in ("prefill", "decode") if phase in r]
    return "\n".join(md.table(["link", "RTT ms", "Mbit/s", "phase", "rounds", "MB", "no-delay s", "measured s",
                                "modelled s", "measured/modelled"], rows))
