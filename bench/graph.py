#!/usr/bin/python3
"""Service-graph figures: start of a 4-service graph under tandem against the same graph
started by hand, serially, and tandem's memory with 10 services.

    bench/graph.py [-n 10]          (as root; after `cargo build --release --examples`)

The graph: PostgreSQL (an initialised PGDATA) -> migrate (a oneshot: psql CREATE TABLE)
-> api (the test app; healthy when GET /health answers 200) -> worker (starts when api is
healthy and prints `worker-up`). Both paths poll every 1 ms where they wait, and are
timed from the first spawn to the arrival of `worker-up`; runs alternate. Then tandem
runs 10 services, each probed every second, and its VmRSS is read after 5 s.
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

try:
    import psycopg
except ImportError:
    sys.exit("graph.py: python3-psycopg is missing (apt-get install python3-psycopg)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TANDEM = os.path.join(REPO, "target/release/tandem")
TESTAPP = os.path.join(REPO, "target/release/examples/testapp")
PG_BIN = "/usr/lib/postgresql/15/bin"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc, needle, timeout=60):
    end = time.monotonic() + timeout
    for raw in proc.stdout:
        if needle in raw:
            return time.monotonic()
        if time.monotonic() > end:
            break
    raise RuntimeError(f"no line {needle!r}")


def poll(pred, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return time.monotonic()
        time.sleep(0.001)
    raise RuntimeError("timed out")


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def pg_up(sock, port):
    # What tandem's readiness ends with too: a real protocol round trip on the socket.
    try:
        psycopg.connect(host=sock, port=port, user="bench", dbname="postgres",
                        connect_timeout=1).close()
        return True
    except psycopg.OperationalError:
        return False


def as_postgres():
    pw = pwd.getpwnam("postgres")
    def demote():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return demote


class Bench:
    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="tandem-graph-bench-")
        os.chmod(self.work, 0o755)
        self.pgdata = os.path.join(self.work, "data")
        self.sock = os.path.join(self.work, "sock")
        os.mkdir(self.sock)
        shutil.chown(self.sock, "postgres", "postgres")
        self.pg_port = free_port()
        self.app_port = free_port()
        os.mkdir(self.pgdata, 0o700)
        shutil.chown(self.pgdata, "postgres", "postgres")
        subprocess.run([f"{PG_BIN}/initdb", "-D", self.pgdata, "-U", "bench", "--auth=trust",
                        "--no-sync", "-N"], check=True, stdout=subprocess.DEVNULL,
                       preexec_fn=as_postgres(), cwd="/")
        self.db_url = f"postgresql://bench@127.0.0.1:{self.pg_port}/postgres"
        self.migrate = ["sh", "-c", f"{PG_BIN}/psql -q -o /dev/null -h 127.0.0.1 -p {self.pg_port} -U bench "
                        "-d postgres -c 'SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS t (x int)'"]
        self.worker = ["sh", "-c", "echo worker-up; exec sleep 3600"]

    def config(self):
        path = os.path.join(self.work, "graph.toml")
        q = lambda argv: "[" + ", ".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in argv) + "]"
        with open(path, "w") as f:
            f.write(f"""[tandem]
socket = "{self.work}/tandem.sock"
[postgres]
data_dir = "{self.pgdata}"
port = {self.pg_port}
socket_dir = "{self.sock}"
user = "bench"
host_auth_method = "trust"
[service.migrate]
kind = "oneshot"
command = {q(self.migrate)}
depends_on = {{ postgres = "healthy" }}
[service.api]
command = {q([TESTAPP])}
env = {{ TESTAPP_PORT = "{self.app_port}", DATABASE_URL = "{self.db_url}" }}
depends_on = {{ migrate = "completed" }}
health = {{ http = "http://127.0.0.1:{self.app_port}/health" }}
[service.worker]
command = {q(self.worker)}
depends_on = {{ api = "healthy" }}
main = true
""")
        return path

    def tandem_run(self, cfg):
        t0 = time.monotonic()
        p = subprocess.Popen([TANDEM, "--config", cfg], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            t = wait_line(p, "worker | worker-up") - t0
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        return t

    def bare_run(self):
        t0 = time.monotonic()
        pg = subprocess.Popen([f"{PG_BIN}/postgres", "-D", self.pgdata, "-p", str(self.pg_port),
                               "-k", self.sock], preexec_fn=as_postgres(), cwd="/",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        app = worker = None
        try:
            poll(lambda: pg_up(self.sock, self.pg_port))
            subprocess.run(self.migrate, check=True, env=ENV)
            app = subprocess.Popen([TESTAPP], env={**ENV, "TESTAPP_PORT": str(self.app_port),
                                                   "DATABASE_URL": self.db_url},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            poll(lambda: http_ok(f"http://127.0.0.1:{self.app_port}/health"))
            worker = subprocess.Popen(self.worker, stdout=subprocess.PIPE, text=True)
            return wait_line(worker, "worker-up") - t0
        finally:
            for p in (worker, app):
                if p:
                    p.terminate()
                    p.wait(30)
            pg.send_signal(signal.SIGINT)
            pg.wait(30)

    def readiness(self, boot_s, burst=0):
        """An app that binds after `boot_s` (having printed `burst` lines first): how long
        after it answers tandem calls it ready, tandem's CPU time while it waited (probes
        from 10 ms apart), and the time from its start to ready."""
        port = free_port()
        path = os.path.join(self.work, "ready.toml")
        noise = f"seq 1 {burst}; " if burst else ""
        with open(path, "w") as f:
            f.write(f'[tandem]\nsocket = "{self.work}/ready.sock"\n'
                    f'[service.app]\ncommand = ["sh", "-c", "{noise}sleep {boot_s}; exec {TESTAPP}"]\n'
                    f'env = {{ TESTAPP_PORT = "{port}", DATABASE_URL = "{self.db_url}" }}\n'
                    f'health = {{ tcp = "127.0.0.1:{port}", start_period = "60s" }}\nmain = true\n')
        p = subprocess.Popen([TANDEM, "--config", path], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            started = wait_line(p, "app started")
            listening = wait_line(p, "testapp listening on", timeout=boot_s + 30)
            ready = wait_line(p, "app is ready after")
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return (ready - listening) * 1000, cpu * 1000, (ready - started) * 1000
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)

    def rss_with_ten(self):
        path = os.path.join(self.work, "ten.toml")
        with open(path, "w") as f:
            f.write(f'[tandem]\nsocket = "{self.work}/ten.sock"\n')
            for i in range(10):
                f.write(f'[service.s{i}]\ncommand = ["sleep", "3600"]\n'
                        f'health = {{ exec = ["true"], interval = "1s" }}\n')
        p = subprocess.Popen([TANDEM, "--config", path], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)
            with open(f"/proc/{p.pid}/status") as f:
                rss = [l for l in f if l.startswith("VmRSS")][0].split()[1]
            return int(rss) / 1024
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("graph.py: run as root")
    b = Bench()
    try:
        cfg = b.config()
        b.tandem_run(cfg)  # warm-up
        bare, tandem = [], []
        for i in range(args.n):
            order = [("bare", b.bare_run), ("tandem", lambda: b.tandem_run(cfg))]
            if i % 2:
                order.reverse()
            for name, run in order:
                (bare if name == "bare" else tandem).append(run() * 1000)
        diffs = [t - x for t, x in zip(tandem, bare)]
        fmt = lambda xs: f"{statistics.median(xs):7.1f} ({min(xs):.1f}-{max(xs):.1f})"
        print(f"4-service graph, spawn -> worker-up, ms (median (min-max) of {args.n}, alternating):")
        print(f"  by hand, serially   {fmt(bare)}")
        print(f"  tandem --config     {fmt(tandem)}")
        print(f"  paired difference   {statistics.median(diffs):+7.1f} ({min(diffs):+.1f}..{max(diffs):+.1f})   target: within 20 ms")
        print(f"tandem VmRSS with 10 services probed every 1 s: {b.rss_with_ten():.2f} MiB   target: < 5 MiB")
        noticed = [b.readiness(1) for _ in range(5)]
        lag = [n for n, _, _ in noticed]
        print(f"app answers -> tandem calls it ready (tcp probe, 5 runs): {fmt(lag)} ms   target: < 20 ms")
        _, cpu, _ = b.readiness(10)
        print(f"tandem CPU while an app boots for 10 s (probed from 10 ms apart): {cpu:.0f} ms")
        quiet = [b.readiness(0)[2] for _ in range(5)]
        loud = [b.readiness(0, burst=20000)[2] for _ in range(5)]
        print(f"app start -> ready, silent app: {fmt(quiet)} ms; after printing 20 000 lines: {fmt(loud)} ms")
        print(f"command: bench/graph.py -n {args.n}")
    finally:
        shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
