#!/usr/bin/python3
"""Side-by-side figures: tandem against the bare critical path, supervisord, horust and tini.

Run it through bench/compare.sh, which installs what it needs, builds tandem, horust and the
images, then runs this with the paths. One table comes out; every figure is a median with
min and max over repeated runs, the contenders alternating within each round, on this
machine, in this run.

Contenders (as processes, each init PID 1 of its own PID namespace: unshare --pid --fork
--mount-proc; the same initialised PGDATA, app, ports and 1 ms health polling for all):
  bare         no supervisor: postgres started directly, psycopg connect tried every 1 ms,
               then the app; stop: SIGTERM the app, wait, SIGINT postgres, wait
               (bench/lifecycle.py's bare path, run by the harness itself)
  tandem       tandem -- APP
  supervisord  Debian's supervisor, the seed's way: programs postgres (stopsignal INT) and
               the app, the app behind `until pg_isready; do sleep 1; done`
  horust       horust from crates.io: postgres with a pg_isready health command (horust
               checks every second), the app `start-after` it; postgres `shutdown-after` it
  tini         Debian's tini -- images/compare/start.sh: the same pg_isready/sleep 1 loop
As containers the same five, images built by images/build.sh on the local base with the
example API (bare: images/compare/start.sh as PID 1 with no sleep in its loop).
"""

import argparse
import atexit
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lifecycle as lc  # noqa: E402  (Child, probes, cleanup, stats: one implementation)
import orphans  # noqa: E402

REPO = os.path.dirname(HERE)
PG_BIN = lc.PG_BIN
START_SH = os.path.join(REPO, "images", "compare", "start.sh")
OFFICIAL_INIT = os.path.join(REPO, "images", "supervisord", "entrypoint.sh")
NS = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]
NAMES = ["bare", "tandem", "supervisord", "horust", "tini"]
SUPERVISORS = NAMES[1:]
HEALTH = "/api/v1/health"
CONTAINER_PORT = 48886
TARGET_MS = 20.0
LOADS = []  # the 1-minute load average, sampled at every round: how busy the machine was


def sample_load():
    with open("/proc/loadavg") as f:
        LOADS.append(float(f.read().split()[0]))


def log(msg):
    lc.log(msg)


def now():
    return time.perf_counter()


def sh(argv, check=True, timeout=120):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout.strip()


def ns_init(unshare_pid, timeout=5.0):
    """The pid (in our namespace) of PID 1 of the namespace unshare made: unshare's child."""
    end = now() + timeout
    while now() < end:
        kids = orphans.children(unshare_pid)
        if kids:
            return kids[0]
        time.sleep(0.001)
    raise RuntimeError(f"unshare {unshare_pid} has no child")


def kids_of(pid):
    try:
        return orphans.children(pid)
    except OSError:
        return []


def vm(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return None


# ----------------------------------------------------------------------------------------------
# One slot: a PGDATA, its ports and sockets. The alternating runs share slot 0 (the Bench);
# the steady phase runs the four supervisors at once, each on a copy.
# ----------------------------------------------------------------------------------------------

class Slot:
    def __init__(self, bench, tag, pgdata=None, pg_port=None, app_port=None):
        self.b = bench
        self.tag = tag
        self.work = os.path.join(bench.work, f"slot-{tag}")
        os.makedirs(self.work, exist_ok=True)
        os.chmod(self.work, 0o755)
        self.pgdata = pgdata or os.path.join(self.work, "pgdata")
        self.sockdir = os.path.join(self.work, "pgsock")
        os.makedirs(self.sockdir, exist_ok=True)
        shutil.chown(self.sockdir, "postgres", "postgres")
        self.tsock = os.path.join(self.work, "tandem.sock")
        self.pg_port = pg_port or lc.free_port()
        self.app_port = app_port or lc.free_port(avoid=(self.pg_port,))
        self.url = f"http://127.0.0.1:{self.app_port}{HEALTH}"
        self.db_url = f"postgresql://{lc.PG_USER}:{lc.PASSWORD}@127.0.0.1:{self.pg_port}/{lc.PG_DB}"

    def app_argv(self):
        return ["/usr/bin/python3", "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                "--port", str(self.app_port)]

    def app_env(self):
        env = dict(lc.BASE_ENV)
        env.update({"DATABASE_URL": self.db_url, "PGHOST": "127.0.0.1", "PGPORT": str(self.pg_port),
                    "PGUSER": lc.PG_USER, "PGDATABASE": lc.PG_DB})
        return env

    def pg_cmd(self):
        return f"{PG_BIN}/postgres -D {self.pgdata} -p {self.pg_port} -k {self.sockdir}"

    def write(self, name, text, mode=0o644):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    # -- the contenders, as (argv, env, cwd) ---------------------------------------------------

    def tandem(self, probes=False):
        env = dict(lc.BASE_ENV)
        env.update({"PGDATA": self.pgdata, "PGPORT": str(self.pg_port), "POSTGRES_PASSWORD": lc.PASSWORD,
                    "TANDEM_PG_SOCKET_DIR": self.sockdir, "TANDEM_SOCKET": self.tsock})
        if probes:
            env.update({"TANDEM_APP_HEALTH_URL": self.url, "TANDEM_APP_HEALTH_INTERVAL": "1s",
                        "TANDEM_PG_HEALTH_INTERVAL": "1s"})
        return NS + [self.b.tandem, "--"] + self.app_argv(), env, self.b.app_cwd

    def supervisord(self, probes=False):
        app = " ".join(self.app_argv())
        wait = self.write("start-api.sh", f"""#!/bin/bash
# the seed's API program: wait for PostgreSQL, then the server
until {PG_BIN}/pg_isready -h 127.0.0.1 -p {self.pg_port} -q; do
    sleep 1
done
exec {app}
""", 0o755)
        conf = self.write("supervisord.conf", f"""[supervisord]
nodaemon=true
user=root
logfile=/dev/null
logfile_maxbytes=0
pidfile={self.work}/supervisord.pid

[program:postgres]
command={self.pg_cmd()}
user=postgres
priority=10
autorestart=true
stopsignal=INT
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true

[program:api]
command={wait}
directory={self.b.app_cwd}
priority=20
autorestart=true
stopasgroup=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true
""")
        return NS + [self.b.supervisord, "-n", "-c", conf], self.app_env(), self.b.app_cwd

    def horust(self, probes=False):
        services = os.path.join(self.work, "horust-services")
        os.makedirs(services, exist_ok=True)
        app_health = (f'\n[healthiness]\ncommand = "/usr/bin/curl -fsS -o /dev/null {self.url}"\n'
                      if probes else "")
        with open(os.path.join(services, "postgres.toml"), "w") as f:
            f.write(f"""command = "{self.pg_cmd()}"
user = "postgres"
shutdown-after = ["api.toml"]
stdout = "STDOUT"
stderr = "STDERR"

[healthiness]
command = "{PG_BIN}/pg_isready -h 127.0.0.1 -p {self.pg_port} -q"

[termination]
signal = "INT"
wait = "9s"

[environment]
keep-env = true
""")
        with open(os.path.join(services, "api.toml"), "w") as f:
            f.write(f"""command = "{' '.join(self.app_argv())}"
working-directory = "{self.b.app_cwd}"
start-after = ["postgres.toml"]
stdout = "STDOUT"
stderr = "STDERR"
{app_health}
[termination]
signal = "TERM"
wait = "9s"

[environment]
keep-env = true
""")
        argv = [self.b.horust, "--services-path", services, "--uds-folder-path",
                os.path.join(self.work, "horust-uds")]
        return NS + argv, self.app_env(), self.b.app_cwd

    def tini(self, probes=False):
        env = self.app_env()
        env.update({"PGDATA": self.pgdata, "PGPORT": str(self.pg_port), "PG_SOCKET_DIR": self.sockdir,
                    "PG_BINDIR": PG_BIN, "WAIT_SLEEP": "1"})
        return NS + ["/usr/bin/tini", "--", "/bin/sh", START_SH] + self.app_argv(), env, self.b.app_cwd


class Compare(lc.Bench):
    def __init__(self, args):
        super().__init__(args)
        self.supervisord = shutil.which("supervisord") or "/usr/bin/supervisord"
        self.horust = args.horust
        self.slot = Slot(self, "main", pgdata=self.pgdata, pg_port=self.pg_port, app_port=self.app_port)
        # lifecycle's bare path uses self.sockdir / tsock: the slot's
        self.sockdir = self.slot.sockdir
        self.tsock = self.slot.tsock

    def available(self, name):
        return name != "horust" or bool(self.horust)

    # -- one run of a supervisor in its namespace --------------------------------------------

    def spawn(self, name, slot, probes=False):
        argv, env, cwd = getattr(slot, name)(probes)
        for port in (slot.pg_port, slot.app_port):
            if not lc.port_free(port):
                raise RuntimeError(f"port {port} in use before a {name} run")
        t0 = now()
        ch = lc.Child(self.name(f"{name}-{slot.tag}"), argv, env, cwd, self.logdir)
        t_ok = lc.poll_until(lambda: lc.http_status(slot.app_port, HEALTH) == 200,
                             t0 + lc.START_TIMEOUT_S, ch, f"{name}: the app's health URL to answer 200")
        return ch, t_ok - t0

    def stop(self, name, ch):
        """SIGTERM to PID 1 of the namespace; unshare exits once every process in it has
        (the kernel empties a PID namespace before its init's exit is reported)."""
        pid1 = ns_init(ch.pid)
        s0 = now()
        os.kill(pid1, signal.SIGTERM)
        code = ch.wait(lc.STOP_TIMEOUT_S)
        dt = now() - s0
        ch.finish_output()
        return dt, code

    def run_one(self, name, settle):
        if name == "bare":
            r = self.run_bare(settle)
            r["clean"] = not r.get("problems")
            return r
        r = {"path": name}
        ch = None
        try:
            ch, r["start"] = self.spawn(name, self.slot)
            time.sleep(settle)
            r["stop"], code = self.stop(name, ch)
            r["code"] = code
        finally:
            if ch is not None and ch.alive():
                ch.signal(signal.SIGKILL)
                ch.wait(10)
        shut = ch.first_line(r"database system is shut down") if ch else None
        r["problems"] = self.check_clean(f"{name} run")
        if not shut:
            r["problems"].append("postgres did not log a clean shutdown")
        r["clean"] = not r["problems"]
        return r


# ----------------------------------------------------------------------------------------------
# The phases
# ----------------------------------------------------------------------------------------------

def rounds(names, runs, warmup, one, label, load=True):
    """Rounds of every contender in `names`, the order rotated by one each round; the
    first `warmup` rounds are not kept. one(name) returns a dict or raises. With `load`,
    the load average is sampled before each round."""
    out = {n: [] for n in names}
    failures = []
    for i in range(warmup + runs):
        k = i % len(names)
        order = names[k:] + names[:k]
        got = {}
        if load:
            sample_load()
        for n in order:
            try:
                got[n] = one(n)
                got[n]["round"] = i
            except Skip:
                continue
            except Exception as e:  # reported, never dropped silently
                failures.append(f"{label} round {i + 1} {n}: {e}")
                log(f"{label} round {i + 1} {n} FAILED: {e}")
                left = lc.sweep(quiet=True)
                if left:
                    log(f"{label}: killed and reaped {len(left)} processes left behind")
                continue
            if i >= warmup:
                out[n].append(got[n])
        tag = "warm-up" if i < warmup else f"round {i - warmup + 1}/{runs}"
        log(f"{label} {tag} (ms start/stop): " + ", ".join(
            f"{n} {fmt_ms(got[n].get('start'))}/{fmt_ms(got[n].get('stop'))}" for n in order if n in got))
    return out, failures


def fmt_ms(x):
    return "-" if x is None else f"{x * 1000:.0f}"


def phase_processes(b, args):
    names = [n for n in NAMES if b.available(n)]
    log(f"processes: {args.runs} rounds (+{args.warmup} warm-up) of {', '.join(names)}")
    return rounds(names, args.runs, args.warmup, lambda n: b.run_one(n, args.settle), "processes")


def image(name, tag):
    return {"bare": "tandem-bare-genie-example", "tandem": "tandem-genie-example",
            "supervisord": "tandem-supervisord-genie-example", "horust": "tandem-horust-genie-example",
            "tini": "tandem-tini-genie-example"}[name] + ":" + tag


class Containers:
    def __init__(self, args):
        self.tag = args.image_tag
        self.prefix = f"tandem-compare-{os.getpid()}"
        self.vol = self.prefix + "-data"
        self.names = [n for n in NAMES if self.have(n)]
        atexit.register(self.cleanup)

    def have(self, name):
        return subprocess.run(["docker", "image", "inspect", image(name, self.tag)],
                              capture_output=True).returncode == 0

    def cleanup(self):
        subprocess.run(["docker", "rm", "-f", "-v", self.prefix], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", self.vol], capture_output=True)

    def run(self, name, settle):
        cname = self.prefix
        subprocess.run(["docker", "rm", "-f", cname], capture_output=True)
        t0 = now()
        sh(["docker", "run", "-d", "--name", cname, "-e", "POSTGRES_PASSWORD=compare",
            "-v", f"{self.vol}:/var/lib/postgresql/data", image(name, self.tag)])
        ip = sh(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cname])
        deadline = t0 + 120
        n = 0
        while lc.http_status(CONTAINER_PORT, HEALTH, timeout=1.0, host=ip) != 200:
            n += 1
            if n % 200 == 0 and sh(["docker", "inspect", "-f", "{{.State.Running}}", cname]) != "true":
                p = subprocess.run(["docker", "logs", "--tail", "20", cname], capture_output=True, text=True)
                tail = (p.stdout + p.stderr).strip()
                raise RuntimeError(f"{name} container exited before its API answered: {tail[-600:]}")
            if now() > deadline:
                p = subprocess.run(["docker", "logs", "--tail", "12", cname], capture_output=True, text=True)
                tail = (p.stdout + p.stderr).strip()
                raise RuntimeError(f"{name} container: no 200 from {ip}:{CONTAINER_PORT} in 120 s; "
                                   f"its last lines: {tail[-900:]}")
            time.sleep(0.002)
        r = {"start": now() - t0}
        time.sleep(settle)
        s0 = now()
        sh(["docker", "stop", cname], timeout=60)
        r["stop"] = now() - s0
        r["code"] = sh(["docker", "inspect", "-f", "{{.State.ExitCode}}", cname])
        logs = subprocess.run(["docker", "logs", cname], capture_output=True, text=True)
        r["clean"] = "database system is shut down" in (logs.stdout + logs.stderr)
        sh(["docker", "rm", "-v", cname])
        return r

    def prepare(self):
        """One initialised volume for all: the tandem image's first start (initdb)."""
        self.cleanup()
        sh(["docker", "volume", "create", self.vol])
        log("containers: initialising the shared volume with the tandem image")
        r = self.run("tandem", 0)
        log(f"containers: volume ready (first start {fmt_ms(r['start'])} ms, clean stop: {r['clean']})")


def phase_containers(args):
    c = Containers(args)
    if not c.names:
        return None, ["containers: none of the images is there"], []
    c.prepare()
    log(f"containers: {args.runs} rounds (+{args.warmup} warm-up) of {', '.join(c.names)}")
    res, failures = rounds(c.names, args.runs, args.warmup, lambda n: c.run(n, args.settle), "containers")
    c.cleanup()
    sizes = {}
    for n in c.names:
        sizes[n] = int(sh(["docker", "image", "inspect", "--format", "{{.Size}}", image(n, c.tag)]))
    return res, failures, sizes


def phase_first_boot(b, args):
    """Empty PGDATA to the first login as genie into hive_genie over TCP: tandem (initdb,
    its temporary socket-only server, the user and database, the real start) against
    images/supervisord/entrypoint.sh, the official postgres entrypoint's steps by hand
    (initdb, a temporary socket-only server via pg_ctl, psql CREATE DATABASE, pg_ctl stop,
    then postgres), each PID 1 of its own namespace."""
    import psycopg
    slot = b.slot

    def one(name):
        d = os.path.join(b.work, "firstboot")
        shutil.rmtree(d, ignore_errors=True)
        env = dict(lc.BASE_ENV)
        env.update({"PGDATA": d, "PGPORT": str(slot.pg_port), "POSTGRES_PASSWORD": lc.PASSWORD,
                    "POSTGRES_USER": "genie", "POSTGRES_DB": "hive_genie"})
        if name == "tandem":
            env.update({"TANDEM_POSTGRES": "on", "TANDEM_PG_SOCKET_DIR": slot.sockdir,
                        "TANDEM_SOCKET": slot.tsock})
            argv = NS + [b.tandem]
            stop_sig = signal.SIGTERM
        else:
            env["PATH"] = f"{PG_BIN}:{env['PATH']}"
            argv = NS + ["/bin/bash", OFFICIAL_INIT, "setpriv", "--reuid=postgres", "--regid=postgres",
                         "--init-groups", f"{PG_BIN}/postgres", "-D", d, "-p", str(slot.pg_port),
                         "-k", slot.sockdir]
            stop_sig = signal.SIGINT

        def login():
            try:
                psycopg.connect(host="127.0.0.1", port=slot.pg_port, user="genie", password=lc.PASSWORD,
                                dbname="hive_genie", connect_timeout=2).close()
                return True
            except psycopg.Error:
                return False
        t0 = now()
        ch = lc.Child(b.name(f"firstboot-{name}"), argv, env, "/", b.logdir)
        try:
            t_ok = lc.poll_until(login, t0 + 120, ch, f"{name}: the first login after initdb")
            r = {"start": t_ok - t0}
            os.kill(ns_init(ch.pid), stop_sig)
            ch.wait(lc.STOP_TIMEOUT_S)
        finally:
            if ch.alive():
                ch.signal(signal.SIGKILL)
                ch.wait(10)
            ch.finish_output()
        shutil.rmtree(d, ignore_errors=True)
        r["problems"] = b.check_clean(f"first boot {name}")
        return r

    log(f"first boot: {args.runs} rounds of tandem and the official entrypoint's steps by hand")
    return rounds(["official", "tandem"], args.runs, 0, lambda n: one("tandem" if n == "tandem" else "official"),
                  "first boot")


def phase_steady(b, args):
    """The four supervisors at once, each on its own copy of PGDATA and ports, probing every
    second where they probe: VmRSS of the supervisor every second, its CPU over the
    whole duration."""
    names = [n for n in SUPERVISORS if b.available(n)]
    slots, chs, res = {}, {}, {}
    try:
        for n in names:
            s = Slot(b, f"steady-{n}")
            s.pgdata = os.path.join(s.work, "pgdata")
            subprocess.run(["cp", "-a", b.pgdata, s.pgdata], check=True)
            for f in ("postmaster.pid", "postmaster.opts"):
                try:
                    os.unlink(os.path.join(s.pgdata, f))
                except FileNotFoundError:
                    pass
            slots[n] = s
            chs[n], _ = b.spawn(n, s, probes=True)
        time.sleep(5)  # past the start-up work
        pids, t0 = {}, {}
        hz = os.sysconf("SC_CLK_TCK")
        for n in names:
            pid1 = ns_init(chs[n].pid)
            # tini's work is split with the shell that waits for the app: count both
            pids[n] = [pid1] + ([k for k in kids_of(pid1)] if n == "tini" else [])
            t0[n] = [lc.cpu_ticks(p) for p in pids[n]]
            res[n] = {"rss": [], "rss_pid1": [], "pids": pids[n]}
        log(f"steady: {', '.join(names)} running at once; sampling every 1 s for {args.duration:.0f} s")
        m0 = now()
        end = m0 + args.duration
        next_t = m0
        while now() < end:
            for n in names:
                if not chs[n].alive():
                    raise RuntimeError(f"{n} exited during the steady phase")
                res[n]["rss"].append(sum(vm(p) for p in pids[n]))
                res[n]["rss_pid1"].append(vm(pids[n][0]))
            if len(res[names[0]]["rss"]) % 60 == 1:
                sample_load()
            next_t += 1.0
            time.sleep(max(0.0, min(next_t, end) - now()))
        elapsed = now() - m0
        for n in names:
            t1 = [lc.cpu_ticks(p) for p in pids[n]]
            self_t = sum((z[0] - a[0]) + (z[1] - a[1]) for a, z in zip(t0[n], t1)) / hz
            kids_t = sum((z[2] - a[2]) + (z[3] - a[3]) for a, z in zip(t0[n], t1)) / hz
            res[n].update(elapsed=elapsed, cpu=self_t, cpu_children=kids_t,
                          pss=sum(pss(p) for p in pids[n]), hwm=sum(vm(p, "VmHWM") for p in pids[n]),
                          anon=sum(vm(p, "RssAnon") for p in pids[n]),
                          file=sum(vm(p, "RssFile") for p in pids[n]))
    finally:
        for n, ch in chs.items():
            if ch.alive():
                try:
                    b.stop(n, ch)
                except Exception as e:
                    log(f"steady: stopping {n}: {e}")
                    ch.signal(signal.SIGKILL)
        b.check_clean("steady phase")
    return res


def phase_healthcheck(b, args):
    ch, _ = b.spawn("tandem", b.slot, probes=True)
    try:
        time.sleep(2)
        hc = lc.healthchecks(b, args)
    finally:
        b.stop("tandem", ch)
        b.check_clean("healthcheck phase")
    return hc


def phase_orphans(b, args):
    work = os.path.join(b.work, "orphans")
    os.makedirs(work, exist_ok=True)
    sup_conf = os.path.join(work, "supervisord.conf")
    with open(sup_conf, "w") as f:
        f.write(f"""[supervisord]
nodaemon=true
user=root
logfile=/dev/null
logfile_maxbytes=0
pidfile={work}/supervisord.pid

[program:app]
command={orphans.TESTAPP}
stdout_logfile=/dev/null
redirect_stderr=true
""")
    services = os.path.join(work, "horust-services")
    os.makedirs(services, exist_ok=True)
    with open(os.path.join(services, "app.toml"), "w") as f:
        f.write(f'command = "{orphans.TESTAPP}"\n\n[environment]\nkeep-env = true\n')
    inits = {
        "tandem": None,
        "tini": lambda app, port: ["/usr/bin/tini", "--", app],
        "supervisord": lambda app, port: [b.supervisord, "-n", "-c", sup_conf],
        "horust": lambda app, port: [b.horust, "--services-path", services,
                                     "--uds-folder-path", os.path.join(work, "horust-uds")],
    }
    names = [n for n in ("tandem", "tini", "supervisord", "horust") if b.available(n)]
    given_up = {}

    def one(name):
        if name in given_up:
            raise Skip()
        try:
            ms, held = orphans.one_run(args.orphans, inits[name], timeout=args.orphan_timeout)
        except orphans.NotReaped as e:
            given_up[name] = e
            raise
        left = lc.sweep(quiet=True)
        if left:
            raise RuntimeError(f"{len(left)} processes left after the run: "
                               + ", ".join(f"{c}[{p}]({s})" for p, c, s in left[:5]))
        return {"start": ms / 1000, "held": held}

    log(f"orphans: {args.orphans} at once under {', '.join(names)}, {args.runs} rounds "
        f"(an init that leaves some after {args.orphan_timeout:g} s is not run again)")
    # Not sampled: 10 000 processes released at once count in the load average for a while.
    res, failures = rounds(names, args.runs, 0, one, "orphans", load=False)
    return res, failures, given_up


class Skip(Exception):
    pass


def sizes(b):
    out = {"tandem": os.stat(b.tandem).st_size}
    if b.horust:
        with tempfile.NamedTemporaryFile(dir=b.work, delete=False) as f:
            tmp = f.name
        shutil.copy2(b.horust, tmp)
        out["horust_installed"] = os.stat(tmp).st_size
        subprocess.run(["strip", tmp], check=True)
        out["horust"] = os.stat(tmp).st_size
    out["tini"] = os.stat("/usr/bin/tini").st_size
    pkgs = ["supervisor", "python3-pkg-resources", "python3", "python3-minimal", "python3.11",
            "python3.11-minimal", "libpython3-stdlib", "libpython3.11-stdlib", "libpython3.11-minimal"]
    kib = {}
    for p in pkgs:
        v = subprocess.run(["dpkg-query", "-W", "-f", "${Installed-Size}", p], capture_output=True, text=True)
        if v.returncode == 0 and v.stdout.strip().isdigit():
            kib[p] = int(v.stdout.strip())
    out["supervisor_pkg"] = kib.get("supervisor", 0) * 1024
    out["supervisor_python"] = sum(kib.values()) * 1024
    out["supervisor_pkgs"] = sorted(kib)
    return out


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

def st(values):
    v = [x for x in values if x is not None]
    return (statistics.median(v), min(v), max(v), len(v)) if v else None


def cell_ms(rs, key="start", scale=1000.0, d=0):
    s = st([r.get(key) for r in rs or []])
    if s is None:
        return "-"
    f = f"{{:.{d}f}}"
    return f"{f.format(s[0] * scale)} ({f.format(s[1] * scale)}-{f.format(s[2] * scale)})"


def mib(x, d=2):
    return f"{x / 1024 / 1024:.{d}f} MiB"


def render(b, args, proc, cont, first, steady, hc, orph, size, failures, started):
    W = 155
    cols = NAMES
    L = []
    horust_note = None if b.horust else f"not built: {args.horust_missing or 'no horust'}"

    def row(label, cells, target=""):
        vals = []
        for n in cols:
            v = cells.get(n, "-")
            if n == "horust" and horust_note and v == "-":
                v = "not built"
            vals.append(v)
        L.append(f"{label:<44}" + "".join(f"{v:>22}" for v in vals) + f"  {target}")

    host = platform.node()
    with open("/etc/debian_version") as f:
        deb = f.read().strip()
    L.append("=" * W)
    L.append(f"tandem side by side  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  "
             f"host {host}: {os.cpu_count()} cores, Debian {deb}, kernel {platform.release()}")
    L.append(f"command: {args.command}")
    L.append(f"tandem {b.tandem_src} (git {lc.git_desc()}); app {b.app_name}; PostgreSQL 15 "
             f"({PG_BIN}) for processes, 17 in the images")
    L.append(f"load: before {b.busy_before}; after {b.busy_after}")
    if LOADS:
        L.append(f"1-minute load average before each round and each minute of the steady phase "
                 f"(ours included): {min(LOADS):.1f}-{max(LOADS):.1f} "
                 f"(median {statistics.median(LOADS):.1f}) on {os.cpu_count()} cores"
                 + (": a busy machine, other work ran beside the bench" if max(LOADS) > 1.5 else ""))
    L.append(f"figures: median (min-max) of {args.runs} rounds (+{args.warmup} warm-up round not counted), "
             "the contenders' order rotated each round; ms unless marked")
    if horust_note:
        L.append(f"horust: {horust_note}")
    L.append("=" * W)
    L.append(f"{'figure':<44}" + "".join(f"{n:>22}" for n in cols) + "  target (tandem)")
    L.append("-" * W)

    def versus(res, key):
        """tandem - bare: the median of the differences within a round (the verdict), and
        fastest against fastest (the runs least disturbed by the machine's other load)."""
        if not res or not res.get("tandem") or not res.get("bare"):
            return ""
        bare = {r["round"]: r.get(key) for r in res["bare"]}
        pairs = [t[key] - bare[t["round"]] for t in res["tandem"]
                 if t.get(key) is not None and bare.get(t["round"]) is not None]
        if not pairs:
            return ""
        d = statistics.median(pairs) * 1000
        mm = (min(r[key] for r in res["tandem"]) - min(r[key] for r in res["bare"])) * 1000
        verdict = "met" if d <= TARGET_MS else f"MISSED by {d - TARGET_MS:.0f} ms"
        return f"bare + {TARGET_MS:.0f} ms: {d:+.0f} ms paired, {mm:+.0f} ms min-min; {verdict}"

    def clean(res):
        return {n: f"{sum(1 for r in rs if r.get('clean'))}/{len(rs)}" for n, rs in (res or {}).items()}

    if proc:
        row("start -> app healthy, processes", {n: cell_ms(rs) for n, rs in proc.items()},
            versus(proc, "start"))
        row("SIGTERM -> all exited, processes", {n: cell_ms(rs, "stop") for n, rs in proc.items()},
            versus(proc, "stop"))
        row("  clean stops (postgres shut down itself)", clean(proc))
    if cont:
        row("docker run -> API 200, containers", {n: cell_ms(rs) for n, rs in cont.items()},
            versus(cont, "start"))
        row("docker stop, containers", {n: cell_ms(rs, "stop") for n, rs in cont.items()},
            versus(cont, "stop"))
        row("  clean stops (postgres logged shut down)", clean(cont))
    if first:
        row("first boot with initdb -> first login", {"bare": cell_ms(first.get("official")),
                                                      "tandem": cell_ms(first.get("tandem"))},
            "bare column: the official entrypoint's steps by hand (sh)")
    if steady:
        dur = next(iter(steady.values()))["elapsed"]
        row(f"supervisor VmRSS, {dur:.0f} s, 1 s samples",
            {n: (lambda s: f"{s[0] / 1024:.2f} ({s[1] / 1024:.2f}-{s[2] / 1024:.2f})")(st(r["rss"]))
             for n, r in steady.items()},
            (lambda v: f"< 4 MiB: {v:.2f} MiB, " + ("met" if v < 4 else f"MISSED by {v - 4:.2f} MiB"))(
                statistics.median(steady["tandem"]["rss"]) / 1024) if "tandem" in steady else "")
        row("  Pss at the end (MiB)", {n: f"{r['pss'] / 1024:.2f}" for n, r in steady.items()})
        row("  RssAnon + RssFile at the end (MiB)",
            {n: f"{r['anon'] / 1024:.2f} + {r['file'] / 1024:.2f}" for n, r in steady.items()},
            "RssFile: pages of the binary and libc, shared")
        row(f"supervisor CPU over {dur:.0f} s (ms)",
            {n: f"{r['cpu'] * 1000:.0f} ({r['cpu'] / r['elapsed'] * 100:.3f}%)" for n, r in steady.items()})
        row("  + its reaped probe processes (ms)", {n: f"{r['cpu_children'] * 1000:.0f}" for n, r in steady.items()})
    if hc:
        cells = {}
        if hc.get("pair"):
            cells["supervisord"] = cell_ms([{"start": x} for x in hc["pair"]], d=1)
        tgt = ""
        if hc.get("tandem"):
            cells["tandem"] = cell_ms([{"start": x} for x in hc["tandem"]], d=1)
            tm = statistics.median(hc["tandem"]) * 1000
            tgt = f"< 5 ms: {tm:.1f} ms, " + ("met" if tm < 5 else f"MISSED by {tm - 5:.1f} ms")
        row(f"healthcheck, {args.hc_runs} each [supervisord: a]", cells, tgt)
        # What tandem's own answer says each probe took ("healthy: postgres ok 0.9ms, app ok 2.8ms").
        split = {}
        for line, count in (hc.get("lines_t") or {}).items():
            for svc, ms in re.findall(r"(\w+) ok ([0-9.]+)ms", line):
                split.setdefault(svc, []).extend([float(ms)] * count)
        if split:
            row("  of which tandem's probes (its answer)", {"tandem": ", ".join(
                f"{svc} {statistics.median(v):.1f}" for svc, v in split.items())})
    if orph:
        res, _, given_up = orph
        cells = {n: cell_ms(rs, d=1) for n, rs in res.items() if rs}
        rates = {}
        for n, e in given_up.items():
            cells[n] = f"{e.left} left at {e.seconds:g} s"
            rates[n] = f"{n}: {(args.orphans - e.left) / e.seconds:.0f}/s"
        tgt = ""
        if res.get("tandem"):
            tm = statistics.median([r["start"] for r in res["tandem"]]) * 1000
            tgt = f"< 1 s: {tm:.0f} ms, " + ("met" if tm < 1000 else f"MISSED by {tm - 1000:.0f} ms")
        row(f"{args.orphans} orphans: all reaped after release", cells, tgt)
        if rates:
            L.append(f"  (not done in {args.orphan_timeout:g} s, so not run again; reaped per second: "
                     f"{', '.join(rates.values())})")
    if size:
        cells = {"tandem": mib(size["tandem"]), "tini": mib(size["tini"], 3),
                 "supervisord": f"{mib(size['supervisor_python'], 1)}"}
        if "horust" in size:
            cells["horust"] = mib(size["horust"])
        row("binary size, stripped", cells, "supervisord: its package + the Python it runs on")
    if cont and len(cont_sizes := (args._image_sizes or {})) > 0 and "bare" in cont_sizes:
        base = cont_sizes["bare"]
        row("image size over the bare image", {n: (f"{(s - base) / 1e6:+.1f} MB" if n != "bare" else f"{s / 1e6:.0f} MB")
                                               for n, s in cont_sizes.items()},
            "bare column: the bare image itself")
    L.append("-" * W)
    if proc:
        L.append("processes: each init is PID 1 of its own PID namespace; the bare path is the harness itself "
                 "(postgres, psycopg tries every 1 ms, then the app). supervisord, tini: `until pg_isready; "
                 "do sleep 1; done` before the app.")
        L.append("  horust: postgres healthy by a pg_isready command (horust checks every 1 s), the app started "
                 "after it; as PID 1 horust waits 3 s after its services stop (SIGTERM to all, sleep 3, SIGKILL: "
                 "its code).")
    if cont:
        L.append("containers: docker run with one initialised volume (first made by the tandem image) to the API's "
                 "first 200 on the container's address, polled every 2 ms; docker stop to its return.")
    if steady:
        L.append("steady: the four supervisors ran AT THE SAME TIME (each its own PGDATA and ports) to save wall time; "
                 "tandem probes PostgreSQL and the app every 1 s, horust runs pg_isready and curl every 1 s, "
                 "supervisord and tini do not probe; tini's column is tini + its wait shell"
                 + (f" (tini alone: {statistics.median(steady['tini']['rss_pid1']) / 1024:.2f} MiB VmRSS)."
                    if "tini" in steady else "."))
    if hc:
        spawn = cell_ms([{"start": x} for x in hc["true"]], d=1)
        L.append(f"[a] the seed's HEALTHCHECK, sh -c '{PG_BIN}/pg_isready -h 127.0.0.1 -p PORT && curl -fsS URL', "
                 f"against the same running tandem; harness spawn cost (/bin/true) {spawn} ms, in both.")
    if size:
        L.append(f"sizes: tandem release build; horust stripped copy of cargo install's "
                 f"({mib(size.get('horust_installed', 0))} as installed); tini: Debian's /usr/bin/tini (dynamic); "
                 f"supervisord: dpkg Installed-Size of {', '.join(size['supervisor_pkgs'])} "
                 f"(supervisor alone {mib(size['supervisor_pkg'], 1)}).")
    L.append(f"failures: {'none' if not failures else ''}")
    for f in failures:
        L.append("  " + f)
    L.append(f"took {time.time() - started:.0f} s; logs in {b.logdir}")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--hc-runs", type=int, default=100)
    ap.add_argument("--orphans", type=int, default=10000)
    ap.add_argument("--orphan-timeout", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--only", default="processes,containers,firstboot,steady,healthcheck,orphans,sizes")
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--testapp", required=True)
    ap.add_argument("--horust", default="")
    ap.add_argument("--horust-missing", default="")
    ap.add_argument("--image-tag", default="compare")
    ap.add_argument("--command", default="bench/compare.sh")
    args = ap.parse_args()
    args.app = "hive"
    args._image_sizes = None
    only = set(args.only.split(","))
    if os.geteuid() != 0:
        sys.exit("compare.py must run as root")
    orphans.TESTAPP = args.testapp
    orphans.TANDEM = args.tandem
    started = time.time()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lc.on_signal)
    lc.set_subreaper()
    atexit.register(lc.cleanup)
    b = Compare(args)
    failures = []
    proc = cont = first = steady = hc = orph = size = None
    try:
        b.busy_before = lc.cpu_busy()
        log(f"machine: {b.busy_before}; work dir {b.work}")
        b.init_pgdata()
        if "processes" in only:
            proc, f = phase_processes(b, args)
            failures += f
        if "firstboot" in only:
            first, f = phase_first_boot(b, args)
            failures += f
        if "healthcheck" in only:
            hc = phase_healthcheck(b, args)
        if "containers" in only:
            cont, f, args._image_sizes = phase_containers(args)
            failures += f
        if "steady" in only:
            steady = phase_steady(b, args)
        # Last: its bursts of 10 000 processes would weigh on the load average of what follows.
        if "orphans" in only:
            orph = phase_orphans(b, args)
            failures += orph[1]
        if "sizes" in only:
            size = sizes(b)
        b.busy_after = lc.cpu_busy()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); cleaning up")
        lc.cleanup()
        return 130
    finally:
        lc.cleanup()
        shutil.rmtree(os.path.join(b.work, "firstboot"), ignore_errors=True)
        for d in os.listdir(b.work):
            if d.startswith("slot-steady-"):
                shutil.rmtree(os.path.join(b.work, d, "pgdata"), ignore_errors=True)
        shutil.rmtree(b.pgdata, ignore_errors=True)
    print(render(b, args, proc, cont, first, steady, hc, orph, size, failures, started))
    left = lc.descendants()
    print("processes left running: " + (", ".join(f"{c}[{p}]" for p, c, _ in left) if left else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
