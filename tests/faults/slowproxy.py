#!/usr/bin/python3
"""slowproxy.py — a delaying TCP proxy for the fault suite's `slow_link`
case (this machine's kernel has no netem qdisc, so a slow link is made in
user space): it listens on 127.0.0.1:PORT and forwards every connection to
one 127.0.0.1 target, holding each chunk it reads for a random delay in
[lo, hi] ms, in each direction, before writing it on.

Promises:
- bytes arrive unchanged and in order: a chunk is released no earlier than
  the one read before it (release = max(read time + delay, previous
  release)), so a random delay never reorders a stream;
- bounded: at most MAX_CONNS connections at once (more are closed at
  accept), at most QUEUE_CHUNKS chunks of CHUNK bytes held per direction
  (a full queue stops reading that side: TCP backpressure, not memory);
- loopback only: it binds 127.0.0.1 and connects only to 127.0.0.1;
- the delay can be changed while it runs (set_delay), 0/0 passes through;
- stop() closes the listener and every connection; threads are daemons.
Counters (bytes, chunks, chunks delayed) say whether traffic crossed it.

Standalone: /usr/bin/python3 slowproxy.py LISTEN_PORT TARGET_PORT LO_MS HI_MS
"""
import queue
import random
import socket
import sys
import threading
import time

CHUNK = 65536
QUEUE_CHUNKS = 256
MAX_CONNS = 64


class DelayProxy:
    def __init__(self, target_port, lo_ms=0.0, hi_ms=0.0, port=0, seed=17):
        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.mu = threading.Lock()
        self.rng = random.Random(seed)
        self.lo, self.hi = lo_ms / 1000.0, hi_ms / 1000.0
        self.conns = set()
        self.stopped = False
        self.stats = dict(conns=0, refused=0, bytes_up=0, bytes_down=0, chunks=0, delayed=0)
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def set_delay(self, lo_ms, hi_ms):
        with self.mu:
            self.lo, self.hi = lo_ms / 1000.0, hi_ms / 1000.0

    def delay(self):
        with self.mu:
            return self.lo + (self.hi - self.lo) * self.rng.random() if self.hi > 0 else 0.0

    def accept_loop(self):
        while not self.stopped:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.mu:
                full = len(self.conns) >= MAX_CONNS
                if full:
                    self.stats["refused"] += 1
            if full:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.mu:
                self.conns.add((c, u))
                self.stats["conns"] += 1
            pair = (c, u)
            done = [0]
            for src, dst, key in ((c, u, "bytes_up"), (u, c, "bytes_down")):
                q = queue.Queue(QUEUE_CHUNKS)
                threading.Thread(target=self.reader, args=(src, q, key), daemon=True).start()
                threading.Thread(target=self.writer, args=(dst, q, pair, done), daemon=True).start()

    def reader(self, src, q, key):
        last = 0.0
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                q.put(None)
                return
            d = self.delay()
            # never before the chunk read earlier: a random delay must not reorder
            last = max(time.monotonic() + d, last)
            with self.mu:
                self.stats[key] += len(data)
                self.stats["chunks"] += 1
                self.stats["delayed"] += d > 0
            q.put((last, data))  # blocks when full: backpressure on src

    def writer(self, dst, q, pair, done):
        while True:
            item = q.get()
            if item is None:
                break
            t, data = item
            wait = t - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        # this direction ended (EOF or error): pass the half-close on; when
        # both directions have ended, close the pair
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.mu:
            done[0] += 1
            last = done[0] == 2
            if last:
                self.conns.discard(pair)
        if last:
            for s in pair:
                s.close()

    def snapshot(self):
        with self.mu:
            return dict(self.stats)

    def stop(self):
        self.stopped = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.mu:
            conns = list(self.conns)
            self.conns.clear()
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__)
        sys.exit(2)
    p = DelayProxy(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), port=int(sys.argv[1]))
    print("proxy 127.0.0.1:%d -> 127.0.0.1:%s" % (p.port, sys.argv[2]), flush=True)
    try:
        while True:
            time.sleep(5)
            print(p.snapshot(), flush=True)
    except KeyboardInterrupt:
        p.stop()
