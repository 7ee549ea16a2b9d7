#!/usr/bin/env python3
"""An emulated WAN link for scripts/bench-wan.sh: a delay line between two TUN devices, each in
its own network namespace, for kernels without `tc netem` (sch_netem). Standard library only.

  wan-link.py NS_A TUN_A NS_B TUN_B RATE_MBIT RTT_MS LOSS_PCT [QUEUE_PACKETS]

The TUN devices exist already (`ip -n NS tuntap add dev TUN mode tun`, addressed and up); this
process attaches to both (entering each namespace in turn to do so), then forwards every IP
packet from one to the other, each way independently as a serial line: a packet waits for the
ones before it to be sent at RATE_MBIT, then travels RTT_MS / 2, and is lost with probability
LOSS_PCT / 100 before it is queued; a packet that would wait longer than QUEUE_PACKETS
full-sized packets take to send (default 1000, a router's buffer) is dropped. On SIGTERM it
prints, per direction, the packets and bytes it forwarded and dropped, and exits.
"""
import collections
import ctypes
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def attach(libc, ns, name):
    """The file descriptor of TUN device `name` of network namespace `ns`."""
    nsfd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(nsfd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ns_a, tun_a, ns_b, tun_b = sys.argv[1:5]
    rate = float(sys.argv[5]) * 1e6 / 8  # bytes per second
    half_rtt = float(sys.argv[6]) / 2000
    loss = float(sys.argv[7]) / 100
    queue_s = (int(sys.argv[8]) if len(sys.argv) > 8 else 1000) * 1500 / rate
    libc = ctypes.CDLL(None, use_errno=True)
    fa = attach(libc, ns_a, tun_a)
    fb = attach(libc, ns_b, tun_b)
    rng = random.Random(1)
    # Per direction (by the fd packets come from): where they go, the packets in flight
    # (time due, bytes), when the line is free again, and counters.
    dirs = {
        fa: {"to": fb, "q": collections.deque(), "free": 0.0, "name": f"{ns_a}->{ns_b}"},
        fb: {"to": fa, "q": collections.deque(), "free": 0.0, "name": f"{ns_b}->{ns_a}"},
    }
    for d in dirs.values():
        d.update(packets=0, bytes=0, lost=0, dropped=0)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    poller = select.poll()
    poller.register(fa, select.POLLIN)
    poller.register(fb, select.POLLIN)
    while not stop:
        now = time.monotonic()
        due = [d["q"][0][0] for d in dirs.values() if d["q"]]
        timeout = max(0.0, min(due) - now) * 1000 if due else 200
        try:
            ready = poller.poll(timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in ready:
            d = dirs[fd]
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if rng.random() < loss:
                    d["lost"] += 1
                    continue
                start = max(now, d["free"])
                if start - now > queue_s:
                    d["dropped"] += 1
                    continue
                d["free"] = start + len(pkt) / rate
                d["q"].append((d["free"] + half_rtt, pkt))
        now = time.monotonic()
        for d in dirs.values():
            q = d["q"]
            while q and q[0][0] <= now:
                _, pkt = q.popleft()
                try:
                    os.write(d["to"], pkt)
                    d["packets"] += 1
                    d["bytes"] += len(pkt)
                except BlockingIOError:
                    d["dropped"] += 1
    for d in dirs.values():
        print(
            f"{d['name']}: {d['packets']} packets, {d['bytes']} bytes forwarded, "
            f"{d['lost']} lost, {d['dropped']} dropped (queue full)"
        )


if __name__ == "__main__":
    main()
