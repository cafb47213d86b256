#!/usr/bin/python3
"""tandem lifecycle benchmark: the figures of issues 2 and 3, measured side by side in one run.

Run it through bench/run.sh (it installs the packages and builds the release binary first).

What it measures, all on this machine, in one run:

1. start -> app healthy
   bare:   postgres -D PGDATA -p PORT -k SOCKDIR started directly as the `postgres` user,
           psycopg connect attempts over the Unix socket every ~1 ms until one succeeds, then
           the app started and its health URL polled every ~1 ms until it answers 200.
   tandem: `tandem -- APP...`, the same health URL polled the same way.
   The same initialised PGDATA (initdb is not measured), the same app, the same ports,
   bare and tandem runs alternating (pair i runs bare first when i is even, tandem first
   when odd).
2. SIGTERM -> exit
   bare:   SIGTERM the app, wait; SIGINT postgres (fast shutdown), wait.
   tandem: SIGTERM tandem, wait for it.
3. tandem's memory while idle (VmRSS, Pss from /proc/PID/smaps_rollup) and the binary size.
4. `tandem healthcheck` wall time (median of --hc-runs) against
   `pg_isready -h 127.0.0.1 -p PORT && curl -fsS URL` on the same running services.
5. with --idle-cpu SECONDS: tandem's CPU time (utime+stime) over SECONDS of 1 s probes.

Every process the benchmark starts is stopped on the way out, also on Ctrl-C, SIGTERM or an
error: the benchmark makes itself a child subreaper, so anything orphaned comes back to it,
and the last step kills and reaps whatever descends from it.
"""

import argparse
import atexit
import ctypes
import datetime
import os
import platform
import pwd
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

try:
    import psycopg
except ImportError:  # run.sh installs it; say so instead of a traceback
    sys.exit("lifecycle.py: python3-psycopg is missing (bench/run.sh installs it)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_BIN = "/usr/lib/postgresql/15/bin"
PASSWORD = "bench"
PG_USER = "postgres"
PG_DB = "postgres"
# Between two readiness attempts: "a tight loop, ~1 ms between tries", same for both paths.
POLL_S = 0.001
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# A clean environment, the same for the bare path and tandem (so no pyenv, no user PYTHON*).
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


def now():
    return time.perf_counter()


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Processes: every child is registered, its output timestamped line by line, and cleaned up.
# ----------------------------------------------------------------------------------------------

class Child:
    """A started process whose stdout+stderr lines are read by a thread and timestamped on
    arrival (perf_counter), so a run's timeline can be rebuilt afterwards."""

    def __init__(self, name, argv, env, cwd, logdir, user=None):
        self.name = name
        self.lines = []  # (perf_counter at arrival, text)
        self._log = open(os.path.join(logdir, f"{name}.log"), "a", encoding="utf-8")
        kwargs = {}
        if user is not None:
            pw = pwd.getpwnam(user)
            groups = os.getgrouplist(user, pw.pw_gid)
            # Popen switches uid/gid in the child without an extra exec (setpriv/runuser would
            # add one): the cheapest possible bare path.
            kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups)
        self.t_spawn = now()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        self.t_spawned = now()
        self.pid = self.proc.pid
        REGISTRY.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            t = now()
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append((t, text))
            self._log.write(f"{t:.6f} {text}\n")
        self._log.flush()

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Returns the exit status the moment the process exits. (Popen.wait(timeout) polls
        with a backoff of up to 50 ms, which would blur a stop measured in milliseconds;
        a pidfd becomes readable exactly when the process exits.)"""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:  # already reaped by a sweep
            return self.proc.wait(timeout=timeout)
        try:
            ready = select.poll()
            ready.register(fd, select.POLLIN)
            if not ready.poll(timeout * 1000):
                raise subprocess.TimeoutExpired(self.name, timeout)
        finally:
            os.close(fd)
        return self.proc.wait()

    def finish_output(self, timeout=5.0):
        self._reader.join(timeout)
        self._log.flush()

    def first_line(self, pattern, after=0.0):
        """Arrival time of the first line matching `pattern` (a regex), or None."""
        rx = re.compile(pattern)
        for t, text in list(self.lines):
            if t >= after and rx.search(text):
                return t, text
        return None


REGISTRY = []


def set_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log("warning: cannot become a child subreaper; orphans would escape the final sweep")


def proc_table():
    """{pid: (ppid, state, comm)} for every process now."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        close = data.rfind(")")
        comm = data[data.find("(") + 1:close]
        fields = data[close + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0], comm)
    return table


def descendants(root=None):
    """Pids (and comm, state) of every live process below `root` (default: this process)."""
    root = os.getpid() if root is None else root
    table = proc_table()
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        out.append((pid, table[pid][2], table[pid][1]))
        todo.extend(kids.get(pid, []))
    return out


def reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def sweep(quiet=False):
    """Kill and reap everything below us. Returns what was found (empty when clean)."""
    found = []
    deadline = now() + 10
    while now() < deadline:
        left = descendants()
        if not left:
            break
        for pid, comm, state in left:
            if (pid, comm) not in [(p, c) for p, c, _ in found]:
                found.append((pid, comm, state))
            if state != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ch in REGISTRY:
            if ch.proc.returncode is None:
                try:
                    ch.proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        for pid, _, _ in left:
            reap(pid)
        time.sleep(0.02)
    if found and not quiet:
        log("swept leftovers: " + ", ".join(f"{c}[{p}]({s})" for p, c, s in found))
    return found


def cleanup():
    """Stop every child gently (tandem: SIGTERM, postgres: SIGINT, app: SIGTERM), then kill
    and reap whatever is left below us."""
    live = [ch for ch in REGISTRY if ch.alive()]
    for ch in live:
        sig = signal.SIGINT if "postgres" in ch.name else signal.SIGTERM
        try:
            ch.signal(sig)
        except ProcessLookupError:
            pass
    deadline = now() + 15
    for ch in live:
        try:
            ch.wait(max(0.1, deadline - now()))
        except subprocess.TimeoutExpired:
            pass
    sweep()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------------------------
# Probing, the same code for both paths.
# ----------------------------------------------------------------------------------------------

def pg_connects(sockdir, port):
    try:
        conn = psycopg.connect(host=sockdir, port=port, user=PG_USER, dbname=PG_DB,
                               connect_timeout=2, autocommit=True)
    except psycopg.Error:
        return False
    conn.close()
    return True


def http_status(port, path, timeout=2.0, host="127.0.0.1"):
    """Status code of GET path, or None when nothing answers."""
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        return int(parts[1]) if len(parts) >= 2 else None
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def poll_until(pred, deadline, watch=None, what="condition"):
    """Calls pred every POLL_S until it is true; returns the perf_counter when it was.
    Raises if `watch` (a Child) exits first or the deadline passes."""
    while True:
        if pred():
            return now()
        if watch is not None and not watch.alive():
            raise RuntimeError(f"{watch.name} exited with {watch.proc.returncode} before {what}")
        if now() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def port_free(port):
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port(avoid=()):
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in avoid and port_free(port):
            return port


# ----------------------------------------------------------------------------------------------
# The setup shared by all measurements.
# ----------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="tandem-bench-")
        os.chmod(self.work, 0o755)  # postgres must traverse it
        # A private copy: others may rebuild target/release/tandem while the bench runs, and
        # `tandem healthcheck` must be the same build as the tandem it talks to.
        self.tandem_src = args.tandem
        self.tandem = os.path.join(self.work, "tandem")
        shutil.copy2(args.tandem, self.tandem)
        self.logdir = os.path.join(self.work, "logs")
        os.mkdir(self.logdir)
        self.pgdata = os.path.join(self.work, "pgdata")
        self.sockdir = os.path.join(self.work, "pgsock")
        self.tsock = os.path.join(self.work, "tandem.sock")
        self.pg_port = free_port()
        self.app_port = free_port(avoid=(self.pg_port,))
        self.db_url = f"postgresql://{PG_USER}:{PASSWORD}@127.0.0.1:{self.pg_port}/{PG_DB}"
        self.choose_app()
        self.seq = 0

    def choose_app(self):
        hive = os.path.join(REPO, "examples", "hive")
        testapp = os.path.join(REPO, "target", "debug", "examples", "testapp")
        if self.args.app in ("auto", "hive") and os.path.isfile(os.path.join(hive, "app", "main.py")):
            self.app_name = "examples/hive (FastAPI under uvicorn, /usr/bin/python3)"
            self.app_argv = ["/usr/bin/python3", "-m", "uvicorn", "app.main:app",
                             "--host", "127.0.0.1", "--port", str(self.app_port)]
            self.app_cwd = hive
            self.health_path = "/api/v1/health"
            self.app_env = {}
        elif self.args.app in ("auto", "testapp") and os.access(testapp, os.X_OK):
            self.app_name = "target/debug/examples/testapp (Rust test app)"
            self.app_argv = [testapp]
            self.app_cwd = REPO
            self.health_path = "/health"
            self.app_env = {"TESTAPP_PORT": str(self.app_port)}
        else:
            raise SystemExit("no app to run: neither examples/hive nor target/debug/examples/testapp")
        self.health_url = f"http://127.0.0.1:{self.app_port}{self.health_path}"

    def tandem_env(self, extra=None):
        env = dict(BASE_ENV)
        env.update(self.app_env)
        env.update({
            "PGDATA": self.pgdata,
            "PGPORT": str(self.pg_port),
            "POSTGRES_PASSWORD": PASSWORD,
            "TANDEM_PG_SOCKET_DIR": self.sockdir,
            "TANDEM_SOCKET": self.tsock,
        })
        env.update(extra or {})
        return env

    def bare_app_env(self):
        # What tandem gives the app: its own environment plus DATABASE_URL and PG*.
        env = self.tandem_env()
        env.update({"DATABASE_URL": self.db_url, "PGHOST": "127.0.0.1",
                    "PGPORT": str(self.pg_port), "PGUSER": PG_USER, "PGDATABASE": PG_DB})
        return env

    def name(self, what):
        self.seq += 1
        return f"{self.seq:03d}-{what}"

    def ensure_ports(self):
        if not port_free(self.pg_port) or not port_free(self.app_port):
            raise RuntimeError(f"port {self.pg_port} or {self.app_port} still in use before a run")

    def check_clean(self, label):
        """After a run nothing may be left below us and no postmaster.pid in PGDATA."""
        problems = []
        left = sweep(quiet=True)
        if left:
            problems.append("left running: " + ", ".join(f"{c}[{p}]" for p, c, _ in left))
        if os.path.exists(os.path.join(self.pgdata, "postmaster.pid")):
            problems.append("postmaster.pid still present")
        if problems:
            log(f"{label}: " + "; ".join(problems))
        return problems

    # -- PGDATA, initialised once ---------------------------------------------------------

    def init_pgdata(self):
        log(f"initialising PGDATA once with tandem ({self.pgdata})")
        t = Child(self.name("tandem-init"), [self.tandem, "--", "/bin/sleep", "3600"],
                  self.tandem_env(), self.work, self.logdir)
        try:
            # Not the first connection: that may be the temporary socket-only server of the
            # first start; the app starting means the real server is up and init is complete.
            poll_until(lambda: t.first_line(r"^\s*tandem \| app started") is not None, now() + 120, t,
                       "the first start to complete (tandem's 'app started')")
        finally:
            t.signal(signal.SIGTERM)
            t.wait(STOP_TIMEOUT_S)
            t.finish_output()
        problems = self.check_clean("init")
        if problems:
            raise RuntimeError("initialisation run did not stop cleanly: " + "; ".join(problems))
        done = t.first_line(r"init process complete|initdb done")
        log("PGDATA initialised" + (f" ({done[1].strip()})" if done else ""))

    # -- one bare run ----------------------------------------------------------------------

    def run_bare(self, settle):
        self.ensure_ports()
        r = {"path": "bare"}
        wall0 = time.time()
        t0 = now()
        pg = Child(self.name("bare-postgres"),
                   [f"{PG_BIN}/postgres", "-D", self.pgdata, "-p", str(self.pg_port),
                    "-k", self.sockdir], BASE_ENV, "/", self.logdir, user="postgres")
        app = None
        try:
            t_pg = poll_until(lambda: pg_connects(self.sockdir, self.pg_port),
                              t0 + START_TIMEOUT_S, pg, "PostgreSQL to accept a connection")
            app = Child(self.name("bare-app"), self.app_argv, self.bare_app_env(),
                        self.app_cwd, self.logdir)
            t_ok = poll_until(lambda: http_status(self.app_port, self.health_path) == 200,
                              t0 + START_TIMEOUT_S, app, "the app's health URL to answer 200")
            r["start"] = t_ok - t0
            r["pg_ready"] = t_pg - t0
            r["pg_self_ready"] = pg_log_time(pg, wall0)
            r["pg_self_start"] = pg_log_time(pg, wall0, "starting PostgreSQL")
            first = app.first_line(r".")
            r["app_first_line"] = first[0] - app.t_spawn if first else None
            r["app_spawn"] = app.t_spawned - t0
            r["app_up"] = t_ok - app.t_spawn
            time.sleep(settle)
            s0 = now()
            app.signal(signal.SIGTERM)
            r["app_code"] = app.wait(STOP_TIMEOUT_S)
            s1 = now()
            pg.signal(signal.SIGINT)
            r["pg_code"] = pg.wait(STOP_TIMEOUT_S)
            s2 = now()
            r["stop"] = s2 - s0
            r["stop_app"] = s1 - s0
            r["stop_pg"] = s2 - s1
            r["code"] = f"app {r['app_code']}, postgres {r['pg_code']}"
        finally:
            for ch in (app, pg):
                if ch is not None and ch.alive():
                    ch.signal(signal.SIGKILL if ch is app else signal.SIGQUIT)
                    try:
                        ch.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
                if ch is not None:
                    ch.finish_output()
        derive(r)
        r["problems"] = self.check_clean("bare run")
        return r

    # -- one tandem run --------------------------------------------------------------------

    def start_tandem(self, label, extra_env=None):
        wall0 = time.time()
        t0 = now()
        t = Child(self.name(label), [self.tandem, "--"] + self.app_argv,
                  self.tandem_env(extra_env), self.app_cwd, self.logdir)
        t_ok = poll_until(lambda: http_status(self.app_port, self.health_path) == 200,
                          t0 + START_TIMEOUT_S, t, "the app's health URL to answer 200")
        return t, t0, wall0, t_ok

    def stop_tandem(self, t):
        s0 = now()
        t.signal(signal.SIGTERM)
        code = t.wait(STOP_TIMEOUT_S)
        return s0, now(), code

    def run_tandem(self, settle):
        self.ensure_ports()
        r = {"path": "tandem"}
        t = None
        try:
            t, t0, wall0, t_ok = self.start_tandem("tandem")
            r["start"] = t_ok - t0
            ready = t.first_line(r"^\s*tandem \| postgres is ready")
            spawned = t.first_line(r"^\s*tandem \| app started")
            r["pg_ready"] = ready[0] - t0 if ready else None
            r["pg_self_ready"] = pg_log_time(t, wall0)
            r["pg_self_start"] = pg_log_time(t, wall0, "starting PostgreSQL")
            first = t.first_line(r"^\s*app \| ")
            r["app_first_line"] = first[0] - spawned[0] if first and spawned else None
            r["cpu_at_healthy"] = cpu_ns(t.pid)
            r["timeline"] = [(tm - t0, text) for tm, text in list(t.lines) if tm <= t_ok]
            pg_started = t.first_line(r"^\s*tandem \| postgres started")
            r["pg_spawn"] = pg_started[0] - t0 if pg_started else None
            r["app_spawn"] = spawned[0] - t0 if spawned else None
            r["app_up"] = t_ok - spawned[0] if spawned else None
            time.sleep(settle)
            s0, s1, code = self.stop_tandem(t)
            t.finish_output()
            r["stop"] = s1 - s0
            r["code"] = f"tandem {code}"
            r["stop_timeline"] = [(tm - s0, text) for tm, text in list(t.lines) if tm >= s0]
            app_gone = t.first_line(r"^\s*tandem \| app .*after stopping", after=s0)
            pg_sigint = t.first_line(r"^\s*tandem \| stopping postgres", after=s0)
            r["stop_app"] = app_gone[0] - s0 if app_gone else None
            r["stop_pg"] = s1 - pg_sigint[0] if pg_sigint else None
        finally:
            if t is not None:
                if t.alive():
                    t.signal(signal.SIGTERM)
                    try:
                        t.wait(STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        pass
                t.finish_output()
        derive(r)
        r["problems"] = self.check_clean("tandem run")
        return r


def derive(r):
    """How long after PostgreSQL logged "ready" the supervisor (the bare poller, tandem) knew."""
    if r.get("pg_ready") is not None and r.get("pg_self_ready") is not None:
        r["detect"] = r["pg_ready"] - r["pg_self_ready"]


PG_TS = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[\d+\] LOG:  "


def pg_log_time(child, wall0, what="database system is ready"):
    """When PostgreSQL itself logged `what` ("database system is ready to accept
    connections", "starting PostgreSQL"), by its own log timestamp (ms resolution, wall
    clock), relative to the run's start (wall0)."""
    rx = re.compile(PG_TS + what)
    for _, text in list(child.lines):
        m = rx.search(text)
        if m:
            ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            epoch = ts.replace(tzinfo=datetime.timezone.utc).timestamp()
            return epoch - wall0
    return None


# ----------------------------------------------------------------------------------------------
# Memory, healthcheck, idle CPU
# ----------------------------------------------------------------------------------------------

def memory(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k.strip()] = int(v.split()[0])
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def cpu_busy(seconds=1.0):
    """Share of all CPUs busy over `seconds` (from /proc/stat), and the load average: how
    much else this machine is doing, since everything here competes for the same cores."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v), idle
    a = sample()
    time.sleep(seconds)
    z = sample()
    total = z[0] - a[0]
    busy = 1 - (z[1] - a[1]) / total if total else 0.0
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return f"{busy * 100:.0f}% of {os.cpu_count()} CPUs busy, load average {load}"


def cpu_ns(pid):
    """CPU time of pid's live threads in seconds, ns resolution (/proc/PID/task/*/schedstat;
    threads that already exited are not counted, unlike cpu_ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rfind(")") + 2:].split()
    # fields[0] is field 3 (state); utime/stime/cutime/cstime are fields 14-17
    return tuple(int(x) for x in fields[11:15])


def tandem_has_healthcheck(tandem):
    out = subprocess.run([tandem, "--help"], capture_output=True, text=True).stdout
    in_cmds = False
    for line in out.splitlines():
        if line.startswith("Commands:"):
            in_cmds = True
        elif in_cmds and not line.startswith(" "):
            in_cmds = False
        elif in_cmds and line.split()[:1] == ["healthcheck"]:
            return True
    return False


def timed(argv, env):
    """Wall time of one command from spawn to reaped, its exit code and first output line.
    Absolute path, close_fds=False: subprocess takes its posix_spawn path, the cheapest."""
    t0 = now()
    p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, close_fds=False)
    dt = now() - t0
    first = p.stdout.decode("utf-8", "replace").strip().splitlines()
    return dt, p.returncode, (first[0] if first else "")


def stats(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return statistics.median(v), min(v), max(v), len(v)


def ms(x, digits=1):
    return "-" if x is None else f"{x * 1000:.{digits}f}"


def fmt_stats(values, digits=1):
    s = stats(values)
    if s is None:
        return "n/a"
    med, lo, hi, _ = s
    return f"{ms(med, digits)} ({ms(lo, digits)}-{ms(hi, digits)})"


def paired_diffs(pairs, key):
    return [(t[key] - b[key]) if (b and t and b.get(key) is not None and t.get(key) is not None)
            else None for b, t in pairs]


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=10, help="bare/tandem pairs (default 10)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="pairs run first and shown, but not in the statistics (default 1)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between healthy and SIGTERM in each run (default 1)")
    ap.add_argument("--idle", type=float, default=5.0,
                    help="seconds tandem idles after healthy before its memory is read (default 5)")
    ap.add_argument("--hc-runs", type=int, default=100, help="healthcheck invocations (default 100)")
    ap.add_argument("--idle-cpu", type=float, metavar="SECONDS", default=0,
                    help="also measure tandem's CPU time over SECONDS of 1 s probes (issue: 600)")
    ap.add_argument("--app", choices=("auto", "hive", "testapp"), default="auto")
    ap.add_argument("--tandem", default=os.path.join(REPO, "target", "release", "tandem"))
    ap.add_argument("--keep", action="store_true", help="keep PGDATA (logs are always kept)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("lifecycle.py must run as root (PostgreSQL is started as the postgres user)")

    started = time.time()
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python would keep it so.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    set_subreaper()
    atexit.register(cleanup)
    b = Bench(args)
    try:
        report = measure(b, args)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); cleaning up")
        cleanup()
        return 130
    finally:
        cleanup()
        if not args.keep:
            shutil.rmtree(b.pgdata, ignore_errors=True)
    print(report)
    print(f"\nbench took {time.time() - started:.0f} s; logs (every line, timestamped on arrival) "
          f"in {b.logdir}")
    left = descendants()
    print("processes left running by the bench: " + (", ".join(f"{c}[{p}]" for p, c, _ in left)
                                                     if left else "none"))
    return 0


def measure(b, args):
    log(f"app: {b.app_name}; ports: postgres {b.pg_port}, app {b.app_port}; work dir {b.work}")
    b.busy_before = cpu_busy()
    log(f"machine before the runs: {b.busy_before}")
    b.init_pgdata()

    # 1 + 2: alternating pairs ----------------------------------------------------------------
    pairs, warm, failures = [], [], []
    total = args.warmup + args.runs
    for i in range(total):
        order = ("bare", "tandem") if i % 2 == 0 else ("tandem", "bare")
        res = {}
        for path in order:
            try:
                res[path] = b.run_bare(args.settle) if path == "bare" else b.run_tandem(args.settle)
            except Exception as e:  # a failed run is reported, never dropped silently
                res[path] = None
                failures.append(f"pair {i + 1} {path}: {e}")
                log(f"pair {i + 1} {path} FAILED: {e}")
                sweep()
        tag = "warm-up" if i < args.warmup else f"pair {i - args.warmup + 1}"
        (warm if i < args.warmup else pairs).append((tag, order, res.get("bare"), res.get("tandem")))
        log(f"{tag} ({' then '.join(order)}): start bare {ms(res['bare'] and res['bare']['start'])} "
            f"tandem {ms(res['tandem'] and res['tandem']['start'])} ms; stop bare "
            f"{ms(res['bare'] and res['bare'].get('stop'))} tandem "
            f"{ms(res['tandem'] and res['tandem'].get('stop'))} ms")

    # 3 + 4: one long-running tandem --------------------------------------------------------
    b.ensure_ports()
    extra = {"TANDEM_APP_HEALTH_URL": b.health_url}
    t, _, _, _ = b.start_tandem("tandem-idle", extra)
    mem = {}
    hc = None
    try:
        log(f"tandem healthy; idling {args.idle:.0f} s before reading its memory")
        time.sleep(args.idle)
        mem["idle"] = memory(t.pid)
        hc = healthchecks(b, args)
        if hc.get("tandem"):
            mem["after"] = memory(t.pid)
        s0, s1, code = b.stop_tandem(t)
    finally:
        if t.alive():
            t.signal(signal.SIGTERM)
            t.wait(STOP_TIMEOUT_S)
        t.finish_output()
    b.check_clean("memory/healthcheck run")

    # 5: idle CPU -------------------------------------------------------------------------------
    cpu = None
    if args.idle_cpu > 0:
        cpu = idle_cpu(b, args)

    b.busy_after = cpu_busy()
    return render(b, args, pairs, warm, failures, mem, hc, cpu)


def healthchecks(b, args):
    out = {"available": tandem_has_healthcheck(b.tandem)}
    env = dict(BASE_ENV, TANDEM_SOCKET=b.tsock)
    pair = ["/bin/sh", "-c", f"{PG_BIN}/pg_isready -h 127.0.0.1 -p {b.pg_port} && "
                             f"/usr/bin/curl -fsS {b.health_url}"]
    hcmd = [b.tandem, "healthcheck"]
    log(f"timing {args.hc_runs} x healthcheck (tandem available: {out['available']})")
    # A few unrecorded calls first so both sides start with warm page cache; their count is
    # printed in the report.
    for _ in range(3):
        timed(["/bin/true"], env)
        timed(pair, env)
        if out["available"]:
            timed(hcmd, env)
    tt, pp, tr = [], [], []
    codes_t, codes_p, lines_t = {}, {}, {}
    for i in range(args.hc_runs):
        seq = ("t", "p") if i % 2 == 0 else ("p", "t")
        for which in seq:
            if which == "t" and out["available"]:
                dt, code, line = timed(hcmd, env)
                tt.append(dt)
                codes_t[code] = codes_t.get(code, 0) + 1
                lines_t[line] = lines_t.get(line, 0) + 1
            elif which == "p":
                dt, code, _ = timed(pair, env)
                pp.append(dt)
                codes_p[code] = codes_p.get(code, 0) + 1
        tr.append(timed(["/bin/true"], env)[0])
    out.update(tandem=tt, pair=pp, true=tr, codes_t=codes_t, codes_p=codes_p, lines_t=lines_t)
    return out


def idle_cpu(b, args):
    b.ensure_ports()
    extra = {"TANDEM_APP_HEALTH_URL": b.health_url, "TANDEM_APP_HEALTH_INTERVAL": "1s",
             "TANDEM_PG_HEALTH_INTERVAL": "1s"}
    log(f"idle CPU: tandem with 1 s probes for {args.idle_cpu:.0f} s")
    t, _, _, _ = b.start_tandem("tandem-idlecpu", extra)
    try:
        time.sleep(2)  # past the start-up work
        sessions0 = pg_sessions(b)
        a = cpu_ticks(t.pid)
        a_ns = cpu_ns(t.pid)
        m0 = now()
        end = m0 + args.idle_cpu
        while now() < end:
            time.sleep(min(1.0, end - now()))
            if not t.alive():
                raise RuntimeError(f"tandem exited with {t.proc.returncode} during the idle CPU run")
        z = cpu_ticks(t.pid)
        z_ns = cpu_ns(t.pid)
        elapsed = now() - m0
        sessions1 = pg_sessions(b)
        mem_end = memory(t.pid)
        b.stop_tandem(t)
        t.finish_output()
        # The app may buffer its access log: count every health GET it logged over its life
        # (SECONDS + ~2 s), less the bench's own first successful poll.
        app_probes = sum(1 for _, text in list(t.lines) if "GET " + b.health_path in text) - 1
    finally:
        if t.alive():
            t.signal(signal.SIGTERM)
            t.wait(STOP_TIMEOUT_S)
        t.finish_output()
    b.check_clean("idle CPU run")
    hz = os.sysconf("SC_CLK_TCK")
    return {"elapsed": elapsed, "self": (z[0] - a[0] + z[1] - a[1]) / hz,
            "utime": (z[0] - a[0]) / hz, "stime": (z[1] - a[1]) / hz,
            "children": (z[2] - a[2] + z[3] - a[3]) / hz, "ns": z_ns - a_ns,
            "app_probes": app_probes,
            "sessions": (sessions1 - sessions0) if None not in (sessions0, sessions1) else None,
            "mem_end": mem_end}


def pg_sessions(b):
    """Connections PostgreSQL has accepted (pg_stat_database.sessions, all databases)."""
    try:
        with psycopg.connect(host=b.sockdir, port=b.pg_port, user=PG_USER, dbname=PG_DB,
                             autocommit=True) as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            return conn.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()[0]
    except psycopg.Error:
        return None


# ----------------------------------------------------------------------------------------------

def git_desc():
    try:
        head = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes in src/" if dirty else "")
    except OSError:
        return "?"


KEY_CHILD_LINES = re.compile(r"^\s*(tandem \| |postgres \| .*(starting PostgreSQL|ready to accept|"
                             r"fast shutdown|is shut down)|app \| .*(Started server|startup complete|"
                             r"Uvicorn running|Shutting down|Finished server))")


def timeline(runs, key, title):
    """Median arrival time of each kind of line over the runs: where tandem spends its time."""
    seen = {}
    for r in runs:
        kinds = set()
        for t, text in r.get(key) or []:
            if not KEY_CHILD_LINES.search(text):
                continue
            # One kind per message: numbers, timestamps and pids vary from run to run.
            kind = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ UTC \[\d+\] ", "", text)
            kind = re.sub(r"/tmp/tandem-bench-\w+", "WORK", kind)
            kind = re.sub(r"\d+", "N", kind.strip())[:88]
            if kind in kinds:
                continue
            kinds.add(kind)
            seen.setdefault(kind, []).append(t)
    if not seen:
        return f"{title}: no lines"
    rows = sorted(seen.items(), key=lambda kv: statistics.median(kv[1]))
    out = [f"{title}:"]
    for kind, ts in rows:
        out.append(f"  {statistics.median(ts) * 1000:8.1f}  {kind}" + (f"  [{len(ts)} runs]" if len(ts) != len(runs) else ""))
    return "\n".join(out) + "\n"


def render(b, args, pairs, warm, failures, mem, hc, cpu):
    L = []
    W = 120
    host = platform.node()
    L.append("=" * W)
    L.append(f"tandem lifecycle benchmark  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
             f"  host {host}, {os.cpu_count()} CPUs, kernel {platform.release()}")
    st = os.stat(b.tandem)
    L.append(f"tandem: {b.tandem_src} (copied before the runs; {st.st_size / 1024 / 1024:.2f} MiB, built "
             f"{datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc):%H:%M UTC}; "
             f"git {git_desc()})")
    pgv = subprocess.run([f"{PG_BIN}/postgres", "--version"], capture_output=True, text=True).stdout.strip()
    L.append(f"app: {b.app_name}; health {b.health_url}")
    L.append(f"PostgreSQL: {pgv}; PGDATA initialised once before timing; poll interval {POLL_S * 1000:.0f} ms")
    L.append(f"runs: N={args.runs} bare/tandem pairs, order alternating, +{args.warmup} warm-up pair(s) "
             f"shown below but not in the statistics; {args.settle:g} s idle between healthy and SIGTERM")
    L.append(f"machine (other users' load competes for the same cores): before {b.busy_before}; "
             f"after {b.busy_after}")
    L.append("figures in ms: median (min-max); difference = median over pairs of (tandem - bare), "
             "(min..max) of those paired differences")
    L.append("=" * W)

    ok = [(b_, t_) for _, _, b_, t_ in pairs]
    bares = [x for x, _ in ok if x]
    tands = [y for _, y in ok if y]
    def col(rs, key, d=1):
        return fmt_stats([r.get(key) for r in rs], d)
    def diff(key):
        d = stats(paired_diffs(ok, key))
        return "n/a" if d is None else f"{d[0] * 1000:+.1f} ({d[1] * 1000:+.1f}..{d[2] * 1000:+.1f})"
    def verdict(key, limit_s):
        d = stats(paired_diffs(ok, key))
        return "n/a" if d is None else ("MET" if d[0] < limit_s else "MISSED")

    hdr = f"{'figure':<40}{'bare path':>22}{'tandem':>22}   {'difference':<24}{'target':<12}"
    L.append(hdr)
    L.append("-" * W)
    L.append(f"{'1. start -> app healthy':<40}{col(bares, 'start'):>22}{col(tands, 'start'):>22}   "
             f"{diff('start'):<24}{'< +20 ms':<10}{verdict('start', 0.020)}")
    L.append(f"{'   postgres logged starting (its log)':<40}{col(bares, 'pg_self_start'):>22}"
             f"{col(tands, 'pg_self_start'):>22}   {diff('pg_self_start'):<24}")
    L.append(f"{'   postgres logged ready (its log)':<40}{col(bares, 'pg_self_ready'):>22}"
             f"{col(tands, 'pg_self_ready'):>22}   {diff('pg_self_ready'):<24}")
    L.append(f"{'   postgres logged ready -> [a]':<40}{col(bares, 'detect'):>22}"
             f"{col(tands, 'detect'):>22}   {diff('detect'):<24}")
    L.append(f"{'   supervisor knew postgres ready [a]':<40}{col(bares, 'pg_ready'):>22}"
             f"{col(tands, 'pg_ready'):>22}   {diff('pg_ready'):<24}")
    L.append(f"{'   app spawned [b]':<40}{col(bares, 'app_spawn'):>22}{col(tands, 'app_spawn'):>22}   "
             f"{diff('app_spawn'):<24}")
    L.append(f"{'   app spawned -> health 200':<40}{col(bares, 'app_up'):>22}{col(tands, 'app_up'):>22}   "
             f"{diff('app_up'):<24}")
    L.append(f"{'   app spawned -> its first log line':<40}{col(bares, 'app_first_line'):>22}"
             f"{col(tands, 'app_first_line'):>22}   {diff('app_first_line'):<24}")
    L.append(f"{'   tandem: postgres spawned [b]':<40}{'-':>22}{col(tands, 'pg_spawn'):>22}")
    L.append(f"{'   tandem: its CPU time until healthy':<40}{'-':>22}{col(tands, 'cpu_at_healthy'):>22}")
    L.append(f"{'   => tandem-only delay before the app':<40}{'':>22}{'':>22}   {diff('app_spawn'):<24}"
             "(app spawned; the rest is the app's own time)")
    L.append(f"{'2. SIGTERM -> exit':<40}{col(bares, 'stop'):>22}{col(tands, 'stop'):>22}   "
             f"{diff('stop'):<24}{'< +20 ms':<10}{verdict('stop', 0.020)}")
    L.append(f"{'   app stopped [c]':<40}{col(bares, 'stop_app'):>22}{col(tands, 'stop_app'):>22}   "
             f"{diff('stop_app'):<24}")
    L.append(f"{'   postgres SIGINT -> exit [c]':<40}{col(bares, 'stop_pg'):>22}{col(tands, 'stop_pg'):>22}   "
             f"{diff('stop_pg'):<24}")
    codes = sorted({r.get("code") for r in bares + tands if r.get("code")})
    L.append(f"{'   exit codes seen':<40}{', '.join(codes)}")

    def kib(k, which="idle"):
        v = mem.get(which, {}).get(k)
        return "-" if v is None else f"{v / 1024:.2f} MiB"
    vm = mem.get("idle", {}).get("VmRSS")
    L.append(f"{'3. tandem RSS idle (VmRSS)':<40}{'-':>22}{kib('VmRSS'):>22}   {'':<24}{'< 4 MiB':<10}"
             + ("n/a" if vm is None else ("MET" if vm < 4096 else "MISSED")))
    L.append(f"{'   Pss / Private (smaps_rollup)':<40}{'-':>22}{kib('Pss'):>22}   "
             f"{'private ' + str(round((mem.get('idle', {}).get('Private_Clean', 0) + mem.get('idle', {}).get('Private_Dirty', 0)) / 1024, 2)) + ' MiB':<24}")
    L.append(f"{'   VmHWM (peak) / threads':<40}{'-':>22}{kib('VmHWM'):>22}   "
             f"{str(mem.get('idle', {}).get('Threads', '-')) + ' threads':<24}")
    if "after" in mem:
        L.append(f"{'   VmRSS / Pss after the healthchecks':<40}{'-':>22}{kib('VmRSS', 'after'):>22}   "
                 f"{'Pss ' + kib('Pss', 'after'):<24}")
    L.append(f"{'   binary size (release, stripped)':<40}{'-':>22}"
             f"{os.stat(b.tandem).st_size / 1024 / 1024:>18.2f} MiB")

    pair_lbl = "pg_isready && curl"
    if hc and hc["pair"]:
        pmed = statistics.median(hc["pair"])
        if hc["available"] and hc["tandem"]:
            tmed = statistics.median(hc["tandem"])
            ratio = pmed / tmed
            met = tmed < 0.005 and ratio >= 3
            L.append(f"{'4. healthcheck wall time (' + str(args.hc_runs) + ' each)':<40}"
                     f"{fmt_stats(hc['pair'], 2):>22}{fmt_stats(hc['tandem'], 2):>22}   "
                     f"{f'{ratio:.1f}x faster':<24}{'<5ms, >=3x':<12}{'MET' if met else 'MISSED'}")
            L.append(f"{'   exit codes':<40}{str(hc['codes_p']):>22}{str(hc['codes_t']):>22}")
            for line, n in sorted(hc["lines_t"].items(), key=lambda x: -x[1])[:3]:
                L.append(f"{'   tandem healthcheck said':<40}{n:>4} x {line[:60]}")
        else:
            L.append(f"{'4. healthcheck wall time (' + str(args.hc_runs) + ' each)':<40}"
                     f"{fmt_stats(hc['pair'], 2):>22}{'skipped':>22}   skipped: tandem healthcheck not available")
            L.append(f"{'   exit codes':<40}{str(hc['codes_p']):>22}")
        L.append(f"{'   left column is':<40}  sh -c '{pair_lbl}' (C pg_isready from {PG_BIN})")
        L.append(f"{'   harness spawn cost (/bin/true)':<40}{fmt_stats(hc['true'], 2):>22}"
                 "   included in both columns")

    if cpu:
        L.append(f"{'5. tandem CPU over ' + format(cpu['elapsed'], '.0f') + ' s of 1 s probes':<40}{'-':>22}"
                 f"{cpu['self'] * 1000:>19.0f} ms   "
                 f"{format(cpu['self'] / cpu['elapsed'] * 100, '.3f') + '% of a core':<24}")
        L.append(f"{'   utime / stime / reaped children':<40}{'-':>22}"
                 f"{cpu['utime'] * 1000:>11.0f}/{cpu['stime'] * 1000:.0f}/{cpu['children'] * 1000:.0f} ms"
                 f"   (clock ticks of {1000 // os.sysconf('SC_CLK_TCK')} ms)")
        L.append(f"{'   live threads, schedstat (ns)':<40}{'-':>22}{cpu['ns'] * 1000:>19.1f} ms")
        L.append(f"{'   probes seen':<40}health GETs in the app's log (whole life): {cpu['app_probes']}; "
                 f"postgres sessions opened (pg_stat_database, approx.): {cpu['sessions']}")
        L.append(f"{'   VmRSS / Pss at the end':<40}{'-':>22}{cpu['mem_end']['VmRSS'] / 1024:>18.2f} MiB"
                 f"   Pss {cpu['mem_end']['Pss'] / 1024:.2f} MiB")
    else:
        L.append(f"{'5. idle CPU':<40}not measured (use --idle-cpu 600)")
    L.append("-" * W)
    def minmin(key):
        bs, ts = stats([r.get(key) for r in bares]), stats([r.get(key) for r in tands])
        return "n/a" if not bs or not ts else f"{(ts[1] - bs[1]) * 1000:+.1f} ms"
    L.append(f"fastest tandem run - fastest bare run (least disturbed by other load): start {minmin('start')}, "
             f"stop {minmin('stop')}")
    L.append("")
    L.append(timeline(tands, "timeline", "tandem start, median arrival of each line since spawn "
                                         "(tandem's own lines and the key child lines)"))
    L.append(timeline(tands, "stop_timeline", "tandem stop, median arrival of each line since SIGTERM"))
    L.append("[a] bare: first successful psycopg connect over the Unix socket; tandem: arrival of its "
             "'postgres is ready' line")
    L.append("[b] bare: Popen returned; tandem: arrival of its 'app started' / 'postgres started' line")
    L.append("[c] bare: app SIGTERM -> reaped, then postgres SIGINT -> reaped; tandem: SIGTERM -> arrival "
             "of 'app ... after stopping', 'stopping postgres' line -> tandem exit")
    L.append("")
    L.append("every run (ms; start | pg ready [a] | app spawned | stop | exit codes | problems):")
    for tag, order, br, tr in warm + pairs:
        for path, r in (("bare", br), ("tandem", tr)):
            if r is None:
                L.append(f"  {tag:<9} {path:<7} FAILED (see below)")
                continue
            prob = "; ".join(r.get("problems") or []) or "-"
            L.append(f"  {tag:<9} {path:<7} {ms(r.get('start')):>7} | {ms(r.get('pg_ready')):>7} | "
                     f"{ms(r.get('app_spawn')):>7} | {ms(r.get('stop')):>7} | {r.get('code', '-'):<24} | {prob}"
                     + ("   (ran first)" if order[0] == path else ""))
    L.append("failed runs: " + ("none" if not failures else ""))
    for f in failures:
        L.append("  " + f)
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
