#!/usr/bin/python3
"""How fast tandem, as PID 1, reaps a burst of orphans.

The Rust test app starts N background processes that stay blocked on a pipe, then its `sh`
exits: all N are re-parented to tandem. They are released at once; the figure is the time
from the release to the moment tandem has no child left but the app (a zombie is still a
child until it is reaped). Runs tandem in its own PID namespace (unshare), no PostgreSQL.
bench/compare.sh runs one_run() with other inits as PID 1 (tini, supervisord, horust).

    bench/orphans.py [N] [RUNS]      defaults: 10000, 5
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TANDEM = os.path.join(ROOT, "target/release/tandem")
TESTAPP = os.path.join(ROOT, "target/debug/examples/testapp")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    """Direct children of pid (zombies included), from every thread's children file."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(p) for p in f.read().split())
    return out


def post(port, path, timeout=120):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


class NotReaped(RuntimeError):
    """The init left `left` of the orphans unreaped for `seconds` after their release."""

    def __init__(self, left, seconds):
        super().__init__(f"{left} children left after {seconds:g} s")
        self.left = left
        self.seconds = seconds


def one_run(n, init=None, env_extra=None, timeout=30.0):
    """One burst of n orphans under `init` (argv of PID 1, given the test app's argv and port;
    default tandem), timed from their release until PID 1 has one child left (the app).
    Returns (ms, held); raises NotReaped when some are still there after `timeout` s."""
    port = free_port()
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "TANDEM_POSTGRES": "off",
        "TANDEM_SOCKET": f"/tmp/tandem-orphans-{os.getpid()}.sock",
        "TESTAPP_PORT": str(port),
    }
    env.update(env_extra or {})
    argv = init(TESTAPP, port) if init else [TANDEM, "--", TESTAPP]
    unshare = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"] + argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tandem = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tandem is None:
            kids = children(unshare.pid)
            tandem = kids[0] if kids else None
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=1)
                break
            except OSError:
                time.sleep(0.01)
        post(port, f"/orphans?n={n}&hold=1")
        held = len(children(tandem)) - 1
        if held < n:
            raise RuntimeError(f"only {held} of {n} orphans are PID 1's children")
        post(port, "/orphans/release")
        released = time.monotonic()
        while len(children(tandem)) > 1:
            if time.monotonic() - released > timeout:
                raise NotReaped(len(children(tandem)) - 1, timeout)
        return (time.monotonic() - released) * 1000, held
    finally:
        try:
            os.unlink(env["TANDEM_SOCKET"])
        except FileNotFoundError:
            pass
        # SIGTERM to PID 1 itself, which stops the app and exits, and unshare after it. (A
        # SIGTERM to unshare would kill it at once and leave PID 1, SIGKILLed, a zombie
        # for whoever is our subreaper.)
        if tandem is not None:
            try:
                os.kill(tandem, signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            unshare.send_signal(signal.SIGTERM)
        try:
            unshare.wait(timeout=10)
        except subprocess.TimeoutExpired:
            unshare.kill()
            unshare.wait()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for path in (TANDEM, TESTAPP):
        if not os.path.exists(path):
            sys.exit(f"orphans: {path} is missing (cargo build --release && cargo build --examples)")
    times = []
    for i in range(runs):
        ms, held = one_run(n)
        times.append(ms)
        print(f"run {i + 1}: {held} orphans held by tandem, all reaped {ms:.1f} ms after release")
    print(json.dumps({
        "orphans": n,
        "reaped_after_release_ms": {
            "median": round(statistics.median(times), 1),
            "min": round(min(times), 1),
            "max": round(max(times), 1),
        },
        "zombies_left": 0,
    }))


if __name__ == "__main__":
    main()
