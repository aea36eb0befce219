#!/usr/bin/env python3
"""Revocation propagation driver for bench/revocation.sh (Python 3 standard library only).

Creates users on the issuer (admin API), logs sessions in (password logins, alternating
replicas), then logs sessions out one by one (alternating replicas) while pollers call a JWT
route on every gateway with that session's access token every --interval seconds; records,
per gateway, the time from the logout's answer (204 received) to the first 401 received.
Meanwhile control clients call every gateway with tokens of sessions that are never logged
out (other sessions of the same users, and a user who never logs out) and count every
answer that is not 200: a revocation must never make another session fail.

Writes the raw latencies (TSV: logout, replica, gateway, seconds or "none") to --raw and the
summary as KEY=VALUE lines to stdout (read by bench/revocation.sh).
"""

import argparse
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

PASSWORD = "bench correct horse battery staple"


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port, u.path.rstrip("/")


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects after any error."""

    def __init__(self, url, timeout=10.0):
        self.host, self.port, self.base = split_url(url)
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, headers=None, body=None):
        """Returns (status, body bytes); raises OSError / HTTPException after a reconnect."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, self.base + path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                # A keep-alive connection the server closed meanwhile: retry once, fresh.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def post_json(client, path, obj, headers=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    status, data = client.request("POST", path, h, json.dumps(obj).encode())
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


class Job:
    """One logout under observation: what each gateway answered for its access token."""

    def __init__(self, token, n_gateways):
        self.token = token
        self.lock = threading.Lock()
        self.ok_before = [0] * n_gateways  # 200s before the first 401
        self.first_401 = [None] * n_gateways  # monotonic time the first 401 was received
        self.logout_sent = None  # monotonic time the logout request was sent
        self.ok_after_401 = [0] * n_gateways  # a 200 after a 401: must never happen
        self.early_401 = [0] * n_gateways  # a 401 received before the logout was sent
        self.other = [0] * n_gateways  # other statuses and transport errors

    def observe(self, g, status, t):
        with self.lock:
            if status == 200:
                if self.first_401[g] is None:
                    self.ok_before[g] += 1
                else:
                    self.ok_after_401[g] += 1
            elif status == 401:
                if self.logout_sent is None or t < self.logout_sent:
                    self.early_401[g] += 1
                elif self.first_401[g] is None:
                    self.first_401[g] = t
            else:
                self.other[g] += 1


class Poller(threading.Thread):
    """Calls one gateway with the current job's token every `interval` seconds."""

    def __init__(self, g, url, path, interval, stop):
        super().__init__(daemon=True)
        self.g, self.path, self.interval, self.stop = g, path, interval, stop
        self.client = Client(url, timeout=5.0)
        self.job = None
        self.requests = 0

    def run(self):
        while not self.stop.is_set():
            job = self.job
            if job is None:
                time.sleep(0.001)
                continue
            try:
                status, _ = self.client.request(
                    "GET", self.path, {"Authorization": "Bearer " + job.token})
            except (OSError, http.client.HTTPException):
                status = 0
            self.requests += 1
            job.observe(self.g, status, time.monotonic())
            time.sleep(self.interval)


class Control(threading.Thread):
    """Calls every gateway in turn with tokens that stay valid; counts non-200 answers."""

    def __init__(self, urls, path, tokens, interval, stop):
        super().__init__(daemon=True)
        self.clients = [Client(u, timeout=5.0) for u in urls]
        self.path, self.tokens, self.interval, self.stop = path, tokens, interval, stop
        self.requests = 0
        self.failures = {}

    def run(self):
        i = 0
        while not self.stop.is_set():
            client = self.clients[i % len(self.clients)]
            token = self.tokens[(i // len(self.clients)) % len(self.tokens)]
            i += 1
            try:
                status, _ = client.request("GET", self.path, {"Authorization": "Bearer " + token})
            except (OSError, http.client.HTTPException) as e:
                status = "error: %s" % type(e).__name__
            self.requests += 1
            if status != 200:
                key = "%s:%s" % (client.port, status)
                self.failures[key] = self.failures.get(key, 0) + 1
            time.sleep(self.interval)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", required=True, help="issuer public URLs, comma-separated")
    ap.add_argument("--admin", required=True, help="an issuer admin URL")
    ap.add_argument("--admin-token-file", required=True)
    ap.add_argument("--gateways", required=True, help="gateway URLs, comma-separated")
    ap.add_argument("--path", default="/api/healthz", help="the JWT route")
    ap.add_argument("--logouts", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="logouts observed at once")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.003, help="poller pause between calls")
    ap.add_argument("--control-clients", type=int, default=3)
    ap.add_argument("--control-interval", type=float, default=0.005)
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="give up waiting for a gateway's 401 after this many seconds")
    ap.add_argument("--raw", required=True, help="TSV of every latency")
    args = ap.parse_args()

    replicas = args.replicas.split(",")
    gateways = args.gateways.split(",")
    with open(args.admin_token_file) as f:
        admin_token = f.read().strip()
    log = lambda msg: print("[driver %s] %s" % (time.strftime("%H:%M:%S"), msg),
                            file=sys.stderr, flush=True)

    # Users: `users` who log sessions out, plus one bystander who never does.
    admin = Client(args.admin, timeout=30.0)
    emails = ["rev%d@example.com" % i for i in range(args.users + 1)]
    for e in emails:
        status, body = post_json(admin, "/admin/users",
                                 {"email": e, "password": PASSWORD, "roles": ["user"]},
                                 {"Authorization": "Bearer " + admin_token})
        if status != 201:
            sys.exit("creating %s: %s %s" % (e, status, body))

    # Sessions: one per logout, plus one control session per user (bystander included).
    # Password logins, alternating replicas; at most 4 at once (the issuer's argon2 bound).
    wanted = [(emails[i % args.users], i % len(replicas)) for i in range(args.logouts)]
    control_wanted = [(e, i % len(replicas)) for i, e in enumerate(emails)]
    local = threading.local()

    def login(item):
        email, r = item
        if not hasattr(local, "clients"):
            local.clients = [Client(u, timeout=60.0) for u in replicas]
        status, body = post_json(local.clients[r], "/v1/auth/password",
                                 {"email": email, "password": PASSWORD})
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            raise RuntimeError("login %s at replica %d: %s %s" % (email, r, status, body))
        return body["access_token"]

    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        tokens = list(pool.map(login, wanted))
        control_tokens = list(pool.map(login, control_wanted))
    log("%d password logins in %.1f s" % (len(wanted) + len(control_wanted),
                                          time.monotonic() - t))

    stop = threading.Event()
    controls = [Control(gateways, args.path, control_tokens[k::args.control_clients] or
                        control_tokens, args.control_interval, stop)
                for k in range(args.control_clients)]
    for c in controls:
        c.start()

    results = [None] * args.logouts  # per logout: list of latencies (None: never refused)
    problems = []
    plock = threading.Lock()
    counters = {"early_401": 0, "ok_after_401": 0, "other": 0, "before_answer": 0}

    def worker(w):
        pollers = [Poller(g, u, args.path, args.interval, stop) for g, u in enumerate(gateways)]
        for p in pollers:
            p.start()
        issuers = [Client(u, timeout=30.0) for u in replicas]
        for i in range(w, args.logouts, args.workers):
            job = Job(tokens[i], len(gateways))
            for p in pollers:
                p.job = job
            # The token passes every gateway before its logout.
            deadline = time.monotonic() + 10
            while min(job.ok_before) < 2:
                if time.monotonic() > deadline:
                    with plock:
                        problems.append("logout %d: not accepted before the logout: 200s %s, "
                                        "401s %s, other %s" % (i, job.ok_before, job.early_401,
                                                               job.other))
                    break
                time.sleep(0.001)
            r = i % len(replicas)
            with job.lock:
                job.logout_sent = time.monotonic()
            try:
                status, body = issuers[r].request(
                    "POST", "/v1/auth/logout", {"Authorization": "Bearer " + tokens[i]})
            except (OSError, http.client.HTTPException) as e:
                status, body = 0, str(e)
            answered = time.monotonic()
            if status != 204:
                with plock:
                    problems.append("logout %d at replica %d: %s %s" % (i, r, status, body))
            while time.monotonic() < answered + args.timeout:
                with job.lock:
                    if all(x is not None for x in job.first_401):
                        break
                time.sleep(0.001)
            for p in pollers:
                p.job = None
            with job.lock:
                lat = []
                for g in range(len(gateways)):
                    f = job.first_401[g]
                    if f is None:
                        lat.append(None)
                    else:
                        if f < answered:
                            counters["before_answer"] += 1
                        # Refused before the 204 arrived (the feed beat the answer): 0.
                        lat.append(max(0.0, f - answered))
                results[i] = (r, lat)
                with plock:
                    counters["early_401"] += sum(job.early_401)
                    counters["ok_after_401"] += sum(job.ok_after_401)
                    counters["other"] += sum(job.other)
        for p in pollers:
            p.job = None
        return sum(p.requests for p in pollers)

    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        poll_requests = sum(pool.map(worker, range(args.workers)))
    run_seconds = time.monotonic() - t
    log("%d logouts observed in %.1f s" % (args.logouts, run_seconds))

    # Afterwards every logged-out token is still refused everywhere (no flapping back).
    still_ok = 0
    finals = [Client(u) for u in gateways]
    for tok in tokens:
        for c in finals:
            status, _ = c.request("GET", args.path, {"Authorization": "Bearer " + tok})
            if status != 401:
                still_ok += 1
    stop.set()
    for c in controls:
        c.join()

    with open(args.raw, "w") as f:
        f.write("logout\treplica\tgateway\tseconds\n")
        for i, (r, lat) in enumerate(results):
            for g, v in enumerate(lat):
                f.write("%d\t%d\t%d\t%s\n" % (i, r, g, "none" if v is None else "%.6f" % v))

    out = {
        "logouts": args.logouts,
        "gateways": len(gateways),
        "run_seconds": "%.1f" % run_seconds,
        "poll_requests": poll_requests,
        "control_requests": sum(c.requests for c in controls),
        "control_failures": sum(sum(c.failures.values()) for c in controls),
        "control_failure_detail": " ".join("%s=%d" % kv for c in controls
                                           for kv in sorted(c.failures.items())) or "-",
        "never_refused": sum(1 for _, lat in results for v in lat if v is None),
        "refused_before_answer": counters["before_answer"],
        "refused_before_logout": counters["early_401"],
        "accepted_after_refusal": counters["ok_after_401"],
        "other_statuses": counters["other"],
        "accepted_at_the_end": still_ok,
        "problems": len(problems),
    }
    every = []
    for g in range(len(gateways)):
        vals = sorted(lat[g] for _, lat in results if lat[g] is not None)
        every += vals
        for name, p in (("p50", 50), ("p99", 99)):
            v = percentile(vals, p)
            out["gw%d_%s_ms" % (g + 1, name)] = "-" if v is None else "%.1f" % (v * 1000)
        out["gw%d_max_ms" % (g + 1)] = "-" if not vals else "%.1f" % (vals[-1] * 1000)
        out["gw%d_refused" % (g + 1)] = len(vals)
    every.sort()
    for name, p in (("p50", 50), ("p99", 99)):
        v = percentile(every, p)
        out["all_%s_ms" % name] = "-" if v is None else "%.1f" % (v * 1000)
    out["all_max_ms"] = "-" if not every else "%.1f" % (every[-1] * 1000)
    out["all_refused"] = len(every)
    for k, v in out.items():
        print("%s=%s" % (k, v))
    for p in problems[:20]:
        log("problem: " + p)


if __name__ == "__main__":
    main()
