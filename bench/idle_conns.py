#!/usr/bin/env python3
"""Idle keep-alive connections for bench/edge.sh (Python 3 standard library only).

Opens N plain HTTP/1.1 connections to HOST:PORT; on each one sends one complete request
(GET PATH, keep-alive) and reads the whole answer (Content-Length or chunked), then leaves the
connection open and idle. At most --in-flight connections are being set up at once (the listen
backlogs stay small). When every connection has its answer, prints one line

    READY open=N ok=N failed=N statuses=200:N

on stdout (flushed) and holds the connections until SIGTERM (or --hold-max seconds),
checking meanwhile whether the server closes any (reported on stderr as `CLOSED n` when it
exits). Exit status 0 when every connection got a 2xx answer, 1 otherwise.
"""
import argparse
import errno
import selectors
import signal
import socket
import sys
import time


class Conn:
    __slots__ = ("sock", "state", "buf", "status", "need")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connect"
        self.buf = b""
        self.status = 0
        self.need = None


def complete(c):
    """True when c.buf holds one whole answer (sets c.status)."""
    head_end = c.buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = c.buf[:head_end].decode("latin-1")
    lines = head.split("\r\n")
    try:
        c.status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ValueError("bad status line %r" % lines[0])
    body = c.buf[head_end + 4:]
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        return body.endswith(b"0\r\n\r\n")
    if length is None:
        length = 0
    return len(body) >= length


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--hold-max", type=float, default=600.0)
    a = ap.parse_args()

    request = (
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: bench-idle\r\n\r\n"
        % (a.path, a.host, a.port)
    ).encode()
    sel = selectors.DefaultSelector()
    conns = []
    started = 0
    pending = 0
    ok = 0
    failed = 0
    statuses = {}
    errors = {}
    deadline = time.monotonic() + a.timeout

    def fail(c, why):
        nonlocal failed, pending
        errors[why] = errors.get(why, 0) + 1
        failed += 1
        pending -= 1
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.state = "failed"

    while (started < a.count or pending > 0) and time.monotonic() < deadline:
        while started < a.count and pending < a.in_flight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            c = Conn(s)
            conns.append(c)
            started += 1
            pending += 1
            rc = s.connect_ex((a.host, a.port))
            if rc not in (0, errno.EINPROGRESS):
                fail(c, "connect:" + errno.errorcode.get(rc, str(rc)))
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            if c.state == "connect":
                rc = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc != 0:
                    fail(c, "connect:" + errno.errorcode.get(rc, str(rc)))
                    continue
                try:
                    c.sock.sendall(request)
                except OSError as e:
                    fail(c, "send:" + errno.errorcode.get(e.errno, str(e.errno)))
                    continue
                c.state = "read"
                sel.modify(c.sock, selectors.EVENT_READ, c)
            elif c.state == "read":
                try:
                    data = c.sock.recv(65536)
                except OSError as e:
                    fail(c, "recv:" + errno.errorcode.get(e.errno, str(e.errno)))
                    continue
                if not data:
                    fail(c, "closed before the answer")
                    continue
                c.buf += data
                try:
                    done = complete(c)
                except ValueError:
                    fail(c, "bad answer")
                    continue
                if done:
                    statuses[c.status] = statuses.get(c.status, 0) + 1
                    pending -= 1
                    c.buf = b""
                    if 200 <= c.status < 300:
                        ok += 1
                        c.state = "idle"
                        # Watched from now on: readable = the server closed it.
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    else:
                        fail(c, "status %d" % c.status)
                        pending += 1  # fail() counted it once more
            elif c.state == "idle":
                pass
    if pending > 0:
        errors["timeout"] = pending
        failed += pending
    open_now = sum(1 for c in conns if c.state == "idle")
    print(
        "READY open=%d ok=%d failed=%d statuses=%s errors=%s"
        % (
            open_now,
            ok,
            failed,
            ",".join("%d:%d" % kv for kv in sorted(statuses.items())) or "-",
            ",".join("%s:%d" % kv for kv in sorted(errors.items())) or "-",
        ),
        flush=True,
    )

    stop = False

    def on_term(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    closed = 0
    hold_until = time.monotonic() + a.hold_max
    while not stop and time.monotonic() < hold_until:
        for key, _ in sel.select(timeout=0.5):
            c = key.data
            if c.state != "idle":
                continue
            try:
                data = c.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed += 1
                sel.unregister(c.sock)
                c.sock.close()
                c.state = "closed"
    print("CLOSED %d" % closed, file=sys.stderr, flush=True)
    for c in conns:
        if c.state == "idle":
            c.sock.close()
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
