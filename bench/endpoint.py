#!/usr/bin/python3
"""Figures of tandem's HTTP endpoint (TANDEM_HTTP): `/readyz` and `/metrics` latency and the
metrics' size with 10 services, and tandem's resident memory with the endpoint on, for
PostgreSQL + the app (the all-in-one shape) and for 10 services.

    bench/endpoint.py [-n 2000]        (as root; after `cargo build --release --examples`)

Each request is one HTTP/1.1 GET on a fresh loopback connection (`Connection: close`, as the
kubelet's probes and Prometheus' scrapes are answered), timed from connect to the last byte
read; the figure includes the Python client's own cost, so tandem's share is lower. Requests
are sent one after another. Memory is VmRSS after the services are healthy and 1 000
requests have been answered.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import graph  # noqa: E402  (the PostgreSQL set-up and the paths of graph.py)


def get(port, path):
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    took = time.perf_counter() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body, took


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmRSS")][0].split()[1]) / 1024


def quantiles(xs):
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return f"p50 {at(0.5) * 1000:.3f} ms, p90 {at(0.9) * 1000:.3f} ms, p99 {at(0.99) * 1000:.3f} ms, max {xs[-1] * 1000:.3f} ms"


def wait_ready(port, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if get(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("tandem never answered /readyz 200")


def run(cfg_text, work, name):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(cfg_text)
    p = subprocess.Popen([graph.TANDEM, "--config", path], env=graph.ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000, help="requests per figure")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("endpoint.py: run as root")
    b = graph.Bench()
    try:
        # Ten services, each probed every second.
        port = graph.free_port()
        ten = f'[tandem]\nsocket = "{b.work}/ten.sock"\nhttp = "127.0.0.1:{port}"\n'
        for i in range(10):
            ten += (f'[service.s{i}]\ncommand = ["sleep", "3600"]\n'
                    f'health = {{ exec = ["true"], interval = "1s" }}\n')
        p = run(ten, b.work, "ten")
        try:
            wait_ready(port)
            for _ in range(200):
                get(port, "/readyz")
            readyz = [get(port, "/readyz")[2] for _ in range(args.n)]
            healthz = [get(port, "/healthz")[2] for _ in range(args.n)]
            metrics, size = [], 0
            for _ in range(max(args.n // 4, 100)):
                status, body, took = get(port, "/metrics")
                assert status == 200
                metrics.append(took)
                size = len(body)
            rss_ten = rss_mib(p.pid)
        finally:
            p.terminate()
            p.wait(30)

        # PostgreSQL and the app, as the all-in-one image runs them.
        port = graph.free_port()
        pair = f"""[tandem]
socket = "{b.work}/pair.sock"
http = "127.0.0.1:{port}"
[postgres]
data_dir = "{b.pgdata}"
port = {b.pg_port}
socket_dir = "{b.sock}"
user = "bench"
database = "postgres"
host_auth_method = "trust"
[service.app]
command = ["{graph.TESTAPP}"]
env = {{ TESTAPP_PORT = "{b.app_port}", DATABASE_URL = "{b.db_url}" }}
depends_on = {{ postgres = "healthy" }}
health = {{ http = "http://127.0.0.1:{b.app_port}/health", interval = "5s" }}
main = true
"""
        p = run(pair, b.work, "pair")
        try:
            wait_ready(port)
            for _ in range(1000):
                get(port, "/readyz")
            time.sleep(2)
            rss_pair = rss_mib(p.pid)
        finally:
            p.terminate()
            p.wait(30)

        print(f"tandem HTTP endpoint, {args.n} sequential requests each, fresh connection each:")
        print(f"  /readyz  (10 services)  {quantiles(readyz)}   target: p50 < 1 ms")
        print(f"  /healthz (10 services)  {quantiles(healthz)}")
        print(f"  /metrics (10 services)  {quantiles(metrics)}, {size} bytes")
        print(f"tandem VmRSS with the endpoint on: {rss_pair:.2f} MiB with PostgreSQL + app "
              f"(target: < 4 MiB), {rss_ten:.2f} MiB with 10 services, after 1 000+ requests")
        print(f"command: bench/endpoint.py -n {args.n}")
    finally:
        import shutil
        shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
