#!/usr/bin/env python3
"""consent-sync benchmark harness (issue 7). Run it through scripts/bench/run.sh.

Needs: a PostgreSQL reachable through PG* (scripts/with-postgres.sh sets them, and
CONSENT_SYNC_TEST_PGDATA for CPU accounting), the consent-sync binary (BENCH_BINARY or
--binary), nginx, pgbench, psql; optionally wrk, gnuplot, perf, valgrind. Python standard
library only.

Scenarios (each checks itself: every change reached every subscriber exactly once, and per
subject each receiver saw the changes in change-id order; a failure makes the exit status 1):
  nginx     the receiver alone under wrk: it must not be the bottleneck
  sender    the sender alone: curl-floor.c (libcurl, the daemon's request shape, no database);
            its CPU per request is a floor for the daemon's per delivery
  pgfloor   PostgreSQL alone: pg-floor.sql (pgbench, no daemon) replays a drain's writes with
            1 client (one backend, as the relay's one connection) and 2 (both cores)
  drain     N changes committed while the daemon is stopped, K subscribers; start it; time to deliver all
  live      producer (pgbench --rate) at R changes/s for D s; commit-to-receipt latency, backlog
  maxlive   producer as fast as it can (several connections); both rates and the latency
  scaling   drain rate with K = 1, 3, 10, 30 (same number of deliveries each);
            and a backlog of 10,000 vs 1,000,000 pending deliveries (the big one with --big-backlog)
  producer  pgbench upserts with and without the capture trigger at 1, 4, 16 clients
  plot      gnuplot PNG of the live run's latency percentiles per second
  profile   (--profile) perf cpu-clock samples of the whole box during a drain, pg_stat_statements,
            and callgrind of the daemon on a small drain
"""

import argparse
import base64
import csv
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PURPOSES = ["marketing_email", "marketing_sms", "ad_personalisation", "analytics", "profiling"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_SCENARIOS = ["nginx", "sender", "pgfloor", "drain", "live", "maxlive", "scaling", "producer", "plot"]

# ----------------------------------------------------------------------------------------------
# small helpers


class BenchError(Exception):
    """A scenario could not run (as opposed to a failed self-check)."""


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def free_ports(count):
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def proc_cpu_seconds(pid, children=False):
    """utime+stime (and cutime+cstime with children=True) of a process, in seconds; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    # fields[0] is field 3 (state): utime is field 14 -> index 11
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def children_of(ppid):
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == ppid:
                found.append(int(name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return found


def box_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


class Stopwatch:
    """CPU of the daemon, PostgreSQL, nginx and the whole box between two points."""

    def __init__(self, bench, daemon=None, nginx=None):
        self.bench, self.daemon, self.nginx = bench, daemon, nginx

    def sample(self):
        busy, total = box_cpu()
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "harness": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
            "load1": os.getloadavg()[0],
            "wall": time.time(),
            "daemon": self.daemon.cpu() if self.daemon else 0.0,
            "pg": self.bench.pg.cpu_seconds(),
            "nginx": self.nginx.cpu() if self.nginx else 0.0,
            "box_busy": busy,
            "box_total": total,
        }

    @staticmethod
    def delta(a, b):
        total = max(1, b["box_total"] - a["box_total"])
        ncpu = os.cpu_count() or 1
        busy_s = (b["box_busy"] - a["box_busy"]) / CLK_TCK
        ours = ((b["daemon"] or 0) - (a["daemon"] or 0)) + (b["pg"] - a["pg"]) + ((b["nginx"] or 0) - (a["nginx"] or 0)) \
            + (b["harness"] - a["harness"])
        return {
            # CPU of processes that are not part of the benchmark (other work on a shared machine)
            "foreign_cpu_pct": max(0.0, 100.0 * (busy_s - ours) / max(1e-9, (b["wall"] - a["wall"]) * ncpu)),
            "load1": b["load1"],
            "wall": b["wall"] - a["wall"],
            "daemon": (b["daemon"] or 0) - (a["daemon"] or 0),
            "pg": b["pg"] - a["pg"],
            "nginx": (b["nginx"] or 0) - (a["nginx"] or 0),
            "box_busy_pct": 100.0 * (b["box_busy"] - a["box_busy"]) / total,
        }


# ----------------------------------------------------------------------------------------------
# processes: a registry so that everything started is stopped, also on failure and Ctrl-C

RUNNING = []


def start_process(argv, **kwargs):
    kwargs.setdefault("start_new_session", True)
    proc = subprocess.Popen(argv, **kwargs)
    RUNNING.append(proc)
    return proc


def stop_process(proc, sig=signal.SIGTERM, timeout=20.0):
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} did not stop within {timeout:.0f}s after signal {int(sig)}; killing it")
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        except ProcessLookupError:
            pass
    if proc in RUNNING:
        RUNNING.remove(proc)
    return proc.returncode


def stop_everything():
    for proc in reversed(list(RUNNING)):
        stop_process(proc, timeout=10.0)


def on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    def __init__(self):
        for var in ("PGHOST", "PGPORT", "PGUSER"):
            if not os.environ.get(var):
                raise BenchError(f"{var} is not set: run through scripts/bench/run.sh (scripts/with-postgres.sh)")
        self.host, self.port, self.user = os.environ["PGHOST"], os.environ["PGPORT"], os.environ["PGUSER"]
        self.pgdata = os.environ.get("CONSENT_SYNC_TEST_PGDATA")
        self.pgbin = os.environ.get("CONSENT_SYNC_TEST_PGBIN")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise BenchError(f"PGHOST={self.host}: the benchmark only runs against a local throwaway PostgreSQL")
        self.tool = {}
        for name in ("psql", "pgbench", "pg_ctl"):
            path = os.path.join(self.pgbin, name) if self.pgbin else None
            self.tool[name] = path if path and os.path.exists(path) else shutil.which(name)
        if not self.tool["psql"] or not self.tool["pgbench"]:
            raise BenchError("psql/pgbench not found (Debian: postgresql-client, postgresql-contrib)")

    def url(self, db):
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}"

    def env(self, db="postgres"):
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=self.port, PGUSER=self.user, PGDATABASE=db, PGAPPNAME="consent-sync-bench")
        return env

    def psql(self, sql, db="postgres", timeout=600):
        result = subprocess.run(
            [self.tool["psql"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=sql, capture_output=True, text=True, env=self.env(db), timeout=timeout,
        )
        if result.returncode != 0:
            raise BenchError(f"psql failed on {db}: {result.stderr.strip()}\nSQL: {sql[:400]}")
        return result.stdout.strip()

    def value(self, sql, db="postgres"):
        out = self.psql(sql, db)
        return out.splitlines()[0] if out else ""

    def rows(self, query, db, timeout=600):
        """Rows of a query, as lists of strings (COPY ... CSV)."""
        result = subprocess.run(
            [self.tool["psql"], "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"],
            capture_output=True, text=True, env=self.env(db), timeout=timeout,
        )
        if result.returncode != 0:
            raise BenchError(f"COPY failed on {db}: {result.stderr.strip()}")
        return list(csv.reader(result.stdout.splitlines()))

    def create_db(self, name):
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {name}")

    def drop_db(self, name):
        try:
            # a replication slot (logical capture) would refuse the drop
            self.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}'")
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception as error:  # best effort
            log(f"could not drop {name}: {error}")

    def postmaster_pid(self):
        if not self.pgdata:
            return None
        try:
            with open(os.path.join(self.pgdata, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def cpu_seconds(self):
        """CPU of the postmaster, its exited children (cutime/cstime) and its live children."""
        pid = self.postmaster_pid()
        if pid is None:
            return 0.0
        total = proc_cpu_seconds(pid, children=True) or 0.0
        for child in children_of(pid):
            total += proc_cpu_seconds(child) or 0.0
        return total

    def version(self):
        return self.value("SHOW server_version")

    def settings(self, extra=()):
        """The settings that shape the figures, as SHOW prints them (e.g. 128MB), and `extra`
        (names already checked by setting_name())."""
        names = ["shared_buffers", "fsync", "synchronous_commit", "full_page_writes", "max_wal_size", "checkpoint_timeout",
                 "max_connections", "shared_preload_libraries"] + list(extra)
        out = self.psql("SELECT name, current_setting(name) FROM pg_settings WHERE name IN (%s) ORDER BY name"
                        % ",".join(f"'{n}'" for n in names))
        return {line.split("|")[0]: line.split("|")[1] for line in out.splitlines()}

    def restart(self):
        """Restart with the same options (postmaster.opts); used to load pg_stat_statements."""
        if not self.pgdata or not self.tool["pg_ctl"]:
            raise BenchError("cannot restart PostgreSQL: CONSENT_SYNC_TEST_PGDATA or pg_ctl missing")
        argv = [self.tool["pg_ctl"], "-D", self.pgdata, "-w", "-t", "60", "-m", "fast", "restart"]
        owner = os.stat(self.pgdata).st_uid
        if owner != os.getuid():
            import pwd
            argv = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--"] + argv
        log_path = os.path.join(os.path.dirname(self.pgdata), "server.log")
        run = subprocess.run(argv + ["-l", log_path], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            tail = open(log_path, errors="replace").read()[-600:] if os.path.exists(log_path) else ""
            raise BenchError(f"pg_ctl restart failed: {run.stderr.strip()} {tail}")


# ----------------------------------------------------------------------------------------------
# nginx receivers: one nginx, K servers on 127.0.0.1, each with its own access log of
# "$msec $http_webhook_id"; answers 204 to everything.


class Nginx:
    def __init__(self, workdir, count, workers):
        self.workdir = workdir
        self.ports = free_ports(count)
        self.workers = workers
        self.proc = None
        self.offsets = {}
        self.counts = {}
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    def log_path(self, port):
        return os.path.join(self.workdir, f"access-{port}.log")

    def start(self):
        os.makedirs(os.path.join(self.workdir, "tmp"), exist_ok=True)
        os.chmod(os.path.join(self.workdir, "tmp"), 0o777)
        servers = "\n".join(
            f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {self.log_path(port)} bench;
        location / {{ return 204; }}
    }}""" for port in self.ports)
        user = "user nobody nogroup;" if os.getuid() == 0 else ""
        conf = f"""{user}
worker_processes {self.workers};
daemon off;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    log_format bench '$msec $http_webhook_id';
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    client_body_temp_path {self.workdir}/tmp/body;
    proxy_temp_path {self.workdir}/tmp/proxy;
    fastcgi_temp_path {self.workdir}/tmp/fastcgi;
    uwsgi_temp_path {self.workdir}/tmp/uwsgi;
    scgi_temp_path {self.workdir}/tmp/scgi;
{servers}
}}
"""
        path = os.path.join(self.workdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        out = open(os.path.join(self.workdir, "nginx.out"), "w")
        self.proc = start_process([self.binary, "-p", self.workdir, "-e", f"{self.workdir}/error.log", "-c", path],
                                  stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        pending = set(self.ports)
        while pending and time.time() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"nginx exited: {open(os.path.join(self.workdir, 'error.log')).read()[-2000:]}")
            for port in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    pending.discard(port)
                except OSError:
                    pass
            if pending:
                time.sleep(0.05)
        if pending:
            raise BenchError(f"nginx did not listen on {sorted(pending)} within 15 s")
        for port in self.ports:
            self.offsets[port], self.counts[port] = 0, 0

    def cpu(self):
        if not self.proc or self.proc.poll() is not None:
            return 0.0
        total = proc_cpu_seconds(self.proc.pid, children=True) or 0.0
        for child in children_of(self.proc.pid):
            total += proc_cpu_seconds(child) or 0.0
        return total

    def received(self):
        """Lines logged so far over all receivers (reads only what is new)."""
        for port in self.ports:
            try:
                with open(self.log_path(port), "rb") as f:
                    f.seek(self.offsets[port])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            cut = chunk.rfind(b"\n") + 1
            self.counts[port] += chunk.count(b"\n", 0, cut)
            self.offsets[port] += cut
        return sum(self.counts.values())

    def stop(self):
        # QUIT: graceful, flushes the access logs.
        stop_process(self.proc, sig=signal.SIGQUIT, timeout=15.0)

    def read_log(self, port):
        """[(receipt_time_s, webhook_id)] in file order."""
        entries = []
        with open(self.log_path(port)) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    entries.append((float(parts[0]), parts[1]))
                elif parts:
                    entries.append((float(parts[0]), "-"))
        return entries


# ----------------------------------------------------------------------------------------------
# the daemon


class Daemon:
    def __init__(self, bench, db, logfile, wrapper=None):
        self.bench, self.db, self.logfile = bench, db, logfile
        self.wrapper = wrapper or []
        self.proc = None
        self.peak_rss_kib = 0

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CONSENT_SYNC_") and not k.startswith("PG") and k != "DATABASE_URL"}
        env.update({
            "CONSENT_SYNC_DATABASE_URL": self.bench.pg.url(self.db),
            "CONSENT_SYNC_LOG_LEVEL": self.bench.args.daemon_log_level,
            "CONSENT_SYNC_OPS_ENABLED": "false",
            "CONSENT_SYNC_RELAY_MAX_IN_FLIGHT": str(self.bench.args.relay_max_in_flight),
        })
        env.update(self.bench.optional_settings)
        for item in self.bench.args.daemon_env:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def command(self, *args, timeout=120):
        result = subprocess.run([self.bench.binary, *args, "--config", self.bench.config_file], env=self.env(),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise BenchError(f"consent-sync {' '.join(args)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def start(self):
        out = open(self.logfile, "a")
        self.proc = start_process([*self.wrapper, self.bench.binary, "run", "--config", self.bench.config_file],
                                  env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        return time.time()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def check_alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"consent-sync run exited with {self.proc.returncode}; log tail:\n{self.tail()}")

    def tail(self, lines=30):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cpu(self):
        return proc_cpu_seconds(self.proc.pid) if self.proc and self.proc.poll() is None else None

    def rss(self):
        hwm = proc_status_kib(self.proc.pid, "VmHWM") if self.proc else None
        if hwm:
            self.peak_rss_kib = max(self.peak_rss_kib, hwm)
        return proc_status_kib(self.proc.pid, "VmRSS") if self.proc else None

    def stop(self, timeout=40.0):
        if self.proc and self.proc.poll() is None:
            self.rss()
        code = stop_process(self.proc, sig=signal.SIGTERM, timeout=timeout)
        if code not in (0, None, -signal.SIGTERM):
            log(f"consent-sync run exited with {code} after SIGTERM; log tail:\n{self.tail(10)}")
        return code


class Daemons:
    """Several `consent-sync run` processes on one database (several instances at once, as in
    production): started and stopped together; CPU summed, RSS the largest of them."""

    def __init__(self, bench, db, logfile, count, wrapper=None):
        stem, ext = os.path.splitext(logfile)
        self.members = [Daemon(bench, db, logfile if i == 0 else f"{stem}-{i + 1}{ext}", wrapper=wrapper)
                        for i in range(count)]

    def start(self):
        started = self.members[0].start()
        for member in self.members[1:]:
            member.start()
        return started

    @property
    def pid(self):
        return self.members[0].pid

    @property
    def peak_rss_kib(self):
        return max(member.peak_rss_kib for member in self.members)

    def check_alive(self):
        for member in self.members:
            member.check_alive()

    def tail(self, lines=30):
        return self.members[0].tail(lines)

    def cpu(self):
        values = [member.cpu() for member in self.members]
        return None if any(v is None for v in values) else sum(values)

    def rss(self):
        values = [member.rss() for member in self.members]
        return max((v for v in values if v is not None), default=None)

    def stop(self, timeout=40.0):
        codes = [member.stop(timeout=timeout) for member in self.members]
        return next((c for c in codes if c not in (0, None, -signal.SIGTERM)), codes[0])


# ----------------------------------------------------------------------------------------------
# the producer: real transactions on consent_sync.consents (INSERT ... ON CONFLICT DO UPDATE of
# status), many subjects and purposes; every upsert changes the status (granted -> denied ->
# withdrawn -> granted), so every transaction is one captured change.

UPSERT_TAIL = """ON CONFLICT (subject_id, purpose) DO UPDATE SET
    status = CASE t.status WHEN 'granted' THEN 'denied' WHEN 'denied' THEN 'withdrawn' ELSE 'granted' END,
    updated_at = now()"""


def purposes_array():
    return "ARRAY[" + ",".join(f"'{p}'" for p in PURPOSES) + "]"


# changes captured but not yet fanned out: the capture queue (schema 7) and outbox rows written directly
UNFANNED = "SELECT (SELECT count(*) FROM consent_sync.changes WHERE NOT fanned_out) + (SELECT count(*) FROM consent_sync.captured)"


def median(values):
    """The median of `values`, or None when there are none."""
    return statistics.median(values) if values else None


def capture_triggers(action):
    """ENABLE or DISABLE the capture triggers of the default table (one before schema 7, two since)."""
    return (f"ALTER TABLE consent_sync.consents {action} TRIGGER consent_sync_capture; "
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'consent_sync_capture_update') THEN "
            f"ALTER TABLE consent_sync.consents {action} TRIGGER consent_sync_capture_update; END IF; END $$")


def pgbench_script(path, keys, source):
    with open(path, "w") as f:
        f.write(f"""\\set k random(0, {keys - 1})
\\set s :k / {len(PURPOSES)}
\\set p :k % {len(PURPOSES)} + 1
INSERT INTO consent_sync.consents AS t (subject_id, purpose, status, source)
VALUES ('cust-' || :s::text, ({purposes_array()})[:p::int], 'granted', '{source}')
{UPSERT_TAIL};
""")
    return path


def parse_pgbench(output):
    result = {}
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if m:
        result["tps"] = float(m.group(1))
    m = re.search(r"latency average = ([\d.]+) ms", output)
    if m:
        result["latency_avg_ms"] = float(m.group(1))
    m = re.search(r"latency stddev = ([\d.]+) ms", output)
    if m:
        result["latency_stddev_ms"] = float(m.group(1))
    m = re.search(r"number of transactions actually processed: (\d+)", output)
    if m:
        result["transactions"] = int(m.group(1))
    m = re.search(r"number of failed transactions: (\d+)", output)
    if m:
        result["failed"] = int(m.group(1))
    return result


# ----------------------------------------------------------------------------------------------
# the harness


class Bench:
    def __init__(self, args):
        self.args = args
        self.binary = args.binary
        self.pg = Postgres()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = os.path.abspath(args.output or os.path.join(ROOT, "bench-results", stamp))
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="consent-sync-bench.")
        os.chmod(self.work, 0o755)
        self.config_file = os.path.join(self.work, "bench.yaml")
        with open(self.config_file, "w") as f:
            f.write("# consent-sync benchmark: defaults; overrides come from CONSENT_SYNC_* variables\n"
                    f"log:\n  level: {args.daemon_log_level}\n")
        self.results = []
        self.failures = []
        self.db_counter = 0
        self.live_series = None
        self.fill_offsets = {}
        self.keys = args.subjects * len(PURPOSES)
        self.optional_settings = self.probe_optional_settings()

    def probe_optional_settings(self):
        """Settings newer binaries need and older ones do not know (an unknown CONSENT_SYNC_*
        variable stops the daemon): http on loopback for the receivers (http.allowed_schemes,
        http.allow_networks) and a master key for the subscribers' secrets (secrets.master_key_file).
        Each is kept only if `check-config` accepts it."""
        key_file = os.path.join(self.work, "master.key")
        with open(key_file, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        os.chmod(key_file, 0o600)
        wanted = {
            "CONSENT_SYNC_HTTP_ALLOWED_SCHEMES": "https, http",
            "CONSENT_SYNC_HTTP_ALLOW_NETWORKS": "127.0.0.0/8",
            "CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": key_file,
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_SYNC_")}
        for _ in range(len(wanted) + 1):
            probe = subprocess.run([self.binary, "check-config", "--config", self.config_file], env=base | wanted,
                                   capture_output=True, text=True, timeout=60)
            text = probe.stdout + probe.stderr
            if probe.returncode == 0:
                break
            unknown = [name for name in wanted
                       if any(name in line and "unknown" in line for line in text.splitlines())]
            if not unknown:
                log(f"check-config with the benchmark's settings failed ({probe.returncode}): {text.strip()[:500]}")
                break
            for name in unknown:
                wanted.pop(name)
        return wanted

    # -- building blocks ------------------------------------------------------------------------

    def new_db(self, label):
        self.db_counter += 1
        name = f"bench_{self.db_counter}_{re.sub(r'[^a-z0-9]', '_', label.lower())}"[:60]
        self.pg.create_db(name)
        Daemon(self, name, os.path.join(self.out, "daemon.log")).command("migrate")
        if self.args.after_migrate_sql:
            self.pg.psql(self.args.after_migrate_sql, name)
        if self.args.capture == "logical" and not label.startswith("producer"):
            Daemon(self, name, os.path.join(self.out, "daemon.log")).command("capture", "logical")
        self.fill_offsets[name] = 0
        return name

    def add_subscribers(self, db, nginx):
        helper = Daemon(self, db, os.path.join(self.out, "daemon.log"))
        for i, port in enumerate(nginx.ports):
            helper.command("subscriber", "add", f"bench-{i + 1:02d}", "--url", f"http://127.0.0.1:{port}/hook",
                           "--max-in-flight", str(self.args.sub_max_in_flight))
        rows = self.pg.rows("SELECT id, url FROM consent_sync.subscribers", db)
        return {int(r[0]): int(re.search(r":(\d+)/", r[1]).group(1)) for r in rows}

    def fill(self, db, count, label="bench-fill"):
        """Commit `count` changes, in transactions of up to --fill-batch rows, each row changed once per statement."""
        if count <= 0:
            return
        prime = 1000003 if self.keys < 1000003 else 2147483647
        start = self.fill_offsets[db]
        end = start + count
        statements = []
        j = start
        while j < end:
            round_end = (j // self.keys + 1) * self.keys
            hi = min(end, round_end, j + self.args.fill_batch)
            statements.append(f"""INSERT INTO consent_sync.consents AS t (subject_id, purpose, status, source)
SELECT 'cust-' || ((j * {prime}) % {self.keys} / {len(PURPOSES)}), ({purposes_array()})[(j * {prime}) % {self.keys} % {len(PURPOSES)} + 1],
       'granted', '{label}'
FROM generate_series({j}::bigint, {hi - 1}::bigint) AS j ORDER BY j
{UPSERT_TAIL};""")
            j = hi
        self.pg.psql("\n".join(statements), db, timeout=max(600, count / 500))
        self.fill_offsets[db] = end

    def read_slot(self, db, timeout=600):
        """Logical capture, no daemon running: read the slot into the queue up to now, with the
        SQL reader (it only sees flushed WAL, so it goes on until a message of ours written
        after the last change has been read)."""
        mark = self.pg.value("SELECT pg_logical_emit_message(true, 'consent_sync.mark', '')", db)
        deadline = time.time() + timeout
        while self.pg.value(f"SELECT position >= '{mark}'::pg_lsn FROM consent_sync.capture_state", db) != "t":
            if time.time() > deadline:
                raise BenchError(f"the replication slot was not read up to {mark} within {timeout} s")
            self.pg.psql("SELECT * FROM consent_sync.capture_from_wal(50000)", db, timeout=timeout)

    def wait_slot_read(self, db, timeout=300):
        """Logical capture: wait until the running daemon has read the slot up to now (a message
        of ours marks the point; the position passes it once its transaction is read)."""
        mark = self.pg.value("SELECT pg_logical_emit_message(true, 'consent_sync.mark', '')", db)
        deadline = time.time() + timeout
        while self.pg.value(f"SELECT position >= '{mark}'::pg_lsn FROM consent_sync.capture_state", db) != "t":
            if time.time() > deadline:
                raise BenchError(f"the daemon did not read the replication slot up to {mark} within {timeout} s")
            time.sleep(0.05)

    def changes(self, db):
        return int(self.pg.value("SELECT (SELECT count(*) FROM consent_sync.changes) + (SELECT count(*) FROM consent_sync.captured)", db))

    def installation_prefix(self, db):
        return self.pg.value("SELECT value FROM consent_sync.meta WHERE key = 'installation_id'", db)[:8]

    def set_subscribers_paused(self, db, paused):
        has_state = self.pg.value("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'consent_sync' "
                                  "AND table_name = 'subscribers' AND column_name = 'state'", db) == "1"
        if has_state:
            self.pg.psql(f"UPDATE consent_sync.subscribers SET state = '{'paused' if paused else 'enabled'}'", db)
        else:
            self.pg.psql(f"UPDATE consent_sync.subscribers SET enabled = {'false' if paused else 'true'}", db)

    def wait_delivered(self, db, nginx, daemon, expected, what, stall_seconds=None, limit_seconds=None):
        """Waits until nginx has logged `expected` requests and the database shows nothing
        pending or in flight. Bounded: fails when nothing arrives for `stall_seconds`, or
        after `limit_seconds`. Returns the time the last request was seen (wall clock)."""
        limit_seconds = limit_seconds or max(300.0, expected / 300.0)
        stall_seconds = stall_seconds or self.args.stall_seconds
        started = last_progress = time.time()
        seen = -1
        while True:
            daemon.check_alive()
            daemon.rss()
            count = nginx.received()
            now = time.time()
            if count != seen:
                seen, last_progress = count, now
            if count >= expected:
                break
            if now - last_progress > stall_seconds:
                raise BenchError(f"{what}: stalled at {count}/{expected} requests for {stall_seconds:.0f} s; "
                                 f"deliveries by subscriber and state: {self.delivery_states(db)}; daemon log tail:\n{daemon.tail()}")
            if now - started > limit_seconds:
                raise BenchError(f"{what}: only {count}/{expected} requests after {limit_seconds:.0f} s")
            time.sleep(0.02 if expected - count < 2000 else 0.1)
        seen_at = time.time()
        # the results are written back after the answers: wait for the database to agree
        deadline = time.time() + 60
        while time.time() < deadline:
            open_ = int(self.pg.value("SELECT (SELECT count(*) FROM consent_sync.deliveries WHERE state IN ('pending', 'in_flight'))"
                                      " + (SELECT count(*) FROM consent_sync.changes WHERE NOT fanned_out) + (SELECT count(*) FROM consent_sync.captured)", db))
            if open_ == 0:
                break
            time.sleep(0.05)
        return seen_at

    def wait_some(self, nginx, daemon, expected, deadline):
        """Waits until `expected` requests arrived (True) or the deadline passed (False)."""
        while time.time() < deadline:
            daemon.check_alive()
            daemon.rss()
            if nginx.received() >= expected:
                return True
            time.sleep(0.1)
        return nginx.received() >= expected

    def delivery_states(self, db):
        rows = self.pg.rows("SELECT s.name, d.state, count(*) FROM consent_sync.deliveries d JOIN consent_sync.subscribers s "
                            "ON s.id = d.subscriber_id GROUP BY 1, 2 ORDER BY 1, 2", db)
        return ", ".join(f"{r[0]} {r[1]} {r[2]}" for r in rows)

    # -- the self-check -----------------------------------------------------------------------

    def self_check(self, db, nginx, subscriber_ports, scenario, complete=True):
        """Every change reached every subscriber exactly once; per subject, each receiver saw the
        changes in change-id order; no failed attempt. Returns (ok, details, per_delivery) where
        per_delivery maps delivery id -> (subscriber id, change id, changed_at epoch, receipt epoch)."""
        problems = []
        prefix = self.installation_prefix(db)
        subscribers = sorted(subscriber_ports)
        k = len(subscribers)
        changes = self.pg.rows("SELECT id, subject, extract(epoch FROM changed_at)::float8 FROM consent_sync.changes ORDER BY id", db)
        change_subject = {int(c[0]): c[1] for c in changes}
        change_time = {int(c[0]): float(c[2]) for c in changes}
        deliveries = self.pg.rows("SELECT id, subscriber_id, change_id, state FROM consent_sync.deliveries", db)
        by_id = {}
        pairs = set()
        not_delivered = 0
        for d in deliveries:
            did, sid, cid = int(d[0]), int(d[1]), int(d[2])
            by_id[did] = (sid, cid)
            pairs.add((cid, sid))
            if d[3] != "delivered":
                not_delivered += 1
        missing_pairs = len(change_subject) * k - len(pairs)
        delivered_state = {int(d[0]) for d in deliveries if d[3] == "delivered"}
        if not complete:
            not_delivered = 0  # a time-boxed run: checked below against what was received instead
        if missing_pairs:
            problems.append(f"{missing_pairs} (change, subscriber) pairs have no delivery")
        if not_delivered:
            problems.append(f"{not_delivered} deliveries are not 'delivered'")
        unfanned = int(self.pg.value(UNFANNED, db))
        if unfanned:
            problems.append(f"{unfanned} changes were never fanned out")
        failed_attempts = int(self.pg.value("SELECT count(*) FROM consent_sync.attempts WHERE status IS DISTINCT FROM 204", db))
        attempts = int(self.pg.value("SELECT count(*) FROM consent_sync.attempts", db))
        if failed_attempts:
            problems.append(f"{failed_attempts} attempts did not get 204 (retries in a no-fault run)")

        received = {}
        duplicates = unknown = wrong_receiver = foreign = order_violations = 0
        examples = []
        for sid in subscribers:
            port = subscriber_ports[sid]
            last_by_subject = {}
            for receipt, webhook_id in nginx.read_log(port):
                if not webhook_id.startswith(f"msg_{prefix}_"):
                    foreign += 1
                    if len(examples) < 5:
                        examples.append(f"port {port}: unexpected webhook-id {webhook_id!r}")
                    continue
                did = int(webhook_id.rsplit("_", 1)[1])
                if did not in by_id:
                    unknown += 1
                    continue
                dsid, cid = by_id[did]
                if dsid != sid:
                    wrong_receiver += 1
                    continue
                if did in received:
                    duplicates += 1
                    if len(examples) < 5:
                        examples.append(f"port {port}: duplicate {webhook_id} (change {cid})")
                    continue
                received[did] = receipt
                subject = change_subject.get(cid)
                previous = last_by_subject.get(subject)
                if previous is not None and previous > cid:
                    order_violations += 1
                    if len(examples) < 5:
                        examples.append(f"port {port}: subject {subject}: change {cid} arrived after change {previous}")
                last_by_subject[subject] = max(cid, previous or 0)
        missing = len(by_id) - len(received)
        if not complete:
            # every delivery recorded as delivered was received, and nothing else was
            missing = len(delivered_state - set(received))
            extra = len(set(received) - delivered_state)
            if extra:
                problems.append(f"{extra} received deliveries are not recorded as delivered")
        for count, label in ((duplicates, "duplicate webhook-ids"), (unknown, "webhook-ids of no delivery"),
                             (wrong_receiver, "requests at the wrong receiver"), (foreign, "requests without a valid webhook-id"),
                             (missing, "deliveries never received" if complete else "deliveries recorded as delivered but never received"),
                             (order_violations, "per-subject order violations")):
            if count:
                problems.append(f"{count} {label}")
        details = {
            "changes": len(change_subject), "subscribers": k, "deliveries": len(by_id), "received": len(received),
            "attempts": attempts, "duplicates": duplicates, "missing": missing, "order_violations": order_violations,
            "subjects": len(set(change_subject.values())), "problems": problems, "examples": examples, "complete": complete,
        }
        ok = not problems
        if ok:
            if complete:
                log(f"{scenario}: self-check OK: {len(change_subject)} changes x {k} subscribers = {len(received)} deliveries, "
                    f"each received once, per-subject order kept ({details['subjects']} subjects)")
            else:
                log(f"{scenario}: self-check OK (partial run): the {len(received)} deliveries recorded as delivered were each "
                    f"received once, nothing else was, per-subject order kept")
        else:
            message = f"SELF-CHECK FAILED in {scenario}: " + "; ".join(problems) + ("\n  " + "\n  ".join(examples) if examples else "")
            log(message)
            self.failures.append(message)
        per_delivery = {did: (sid, cid, change_time[cid], received.get(did)) for did, (sid, cid) in by_id.items()}
        return ok, details, per_delivery

    # -- scenarios ----------------------------------------------------------------------------

    def record(self, result):
        self.results.append(result)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.meta() | {"results": self.results, "failures": self.failures}, f, indent=2, default=str)

    def scenario_nginx(self):
        """The receiver alone: wrk (or a Python client) against one nginx server."""
        workdir = os.path.join(self.work, "nginx-alone")
        os.makedirs(workdir)
        nginx = Nginx(workdir, 1, self.args.nginx_workers)
        nginx.start()
        url = f"http://127.0.0.1:{nginx.ports[0]}/hook"
        body = json.dumps({"specversion": "1.0", "id": "0d5c6e8a-5f5e-4a0e-9a47-3f3b1e8f4a10", "type": "consent.granted",
                           "subject": "cust-1", "data": {"x": "y" * 600}})
        seconds = self.args.nginx_seconds
        result = {"scenario": "nginx-alone", "tool": None}
        try:
            if shutil.which("wrk"):
                script = os.path.join(workdir, "post.lua")
                with open(script, "w") as f:
                    f.write("wrk.method = 'POST'\n"
                            f"wrk.body = {json.dumps(body)}\n"
                            "wrk.headers['content-type'] = 'application/cloudevents+json'\n"
                            "counter = 0\n"
                            "request = function()\n  counter = counter + 1\n"
                            "  return wrk.format(nil, nil, {['webhook-id'] = 'msg_wrk_' .. counter})\nend\n")
                out = subprocess.run(["wrk", "-t", "1", "-c", "64", "-d", f"{seconds}s", "-s", script, url],
                                     capture_output=True, text=True, timeout=seconds + 30).stdout
                m = re.search(r"Requests/sec:\s+([\d.]+)", out)
                result.update(tool="wrk -t1 -c64", requests_per_s=float(m.group(1)) if m else None)
                m = re.search(r"Latency\s+([\d.]+)(\w+)", out)
                if m:
                    result["latency_avg"] = m.group(1) + m.group(2)
            else:
                result.update(tool="python asyncio (16 connections)", requests_per_s=python_load(nginx.ports[0], body, seconds))
        finally:
            nginx.stop()
        log(f"nginx alone ({self.args.nginx_workers} worker): {result.get('requests_per_s')} requests/s with {result['tool']}")
        self.record(result)

    def scenario_sender(self):
        """The sender alone: what libcurl and the kernel cost per request, with no daemon.

        `curl-floor.c` (built here with the C compiler) sends requests shaped like the daemon's
        (the same headers, a body of the same size) to K nginx receivers, `--sub-max-in-flight`
        open per receiver on kept-alive connections, through one curl multi handle: once with
        each easy handle configured once, once resetting and configuring it per request as the
        daemon does. Its own CPU per request is a floor for the daemon's per delivery."""
        workdir = os.path.join(self.work, "sender-alone")
        os.makedirs(workdir)
        compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
        if compiler is None:
            raise BenchError("no C compiler (cc, gcc or clang) to build scripts/bench/curl-floor.c")
        tool = os.path.join(workdir, "curl-floor")
        built = subprocess.run([compiler, "-O2", "-o", tool, os.path.join(HERE, "curl-floor.c"), "-lcurl"],
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise BenchError(f"building curl-floor.c failed: {built.stderr.strip()[-1000:]}")
        k = self.args.drain_k
        nginx = Nginx(workdir, k, self.args.nginx_workers)
        nginx.start()
        urls = [f"http://127.0.0.1:{port}/hook" for port in nginx.ports]
        try:
            for mode in ("reuse", "reset"):
                before = nginx.cpu()
                run = subprocess.run([tool, "--requests", str(self.args.sender_requests), "--in-flight", str(self.args.sub_max_in_flight),
                                      "--mode", mode, "--body-bytes", "600", *urls], capture_output=True, text=True, timeout=600)
                if run.returncode != 0:
                    raise BenchError(f"curl-floor --mode {mode} failed: {(run.stderr or run.stdout).strip()[-1000:]}")
                figures = json.loads(run.stdout.strip().splitlines()[-1])
                result = {"scenario": "sender-alone", "k": k} | figures
                result["nginx_cpu_us_per_request"] = round(1e6 * (nginx.cpu() - before) / figures["requests"], 1)
                log(f"sender alone (libcurl, {mode}): {figures['requests_per_s']:,.0f} requests/s, "
                    f"{figures['cpu_us_per_request']} us CPU per request (nginx {result['nginx_cpu_us_per_request']} us)")
                self.record(result)
        finally:
            nginx.stop()

    def scenario_pgfloor(self):
        """PostgreSQL alone: what the database's share of a drain costs with no daemon.

        `pg-floor.sql` replays the rows a drain of short chains writes (per run: 100 outbox rows
        and their 300 deliveries to three subscribers, a claim of 300 and a write-back of 300
        with their attempt rows), in the daemon's batch sizes but without its per-subject order
        checks, hand-overs or capture queue. With one pgbench client its deliveries/s bound
        what one connection (one backend, as the relay's) can do; with two, both cores. Its
        PostgreSQL CPU per delivery is a floor for the drain's."""
        k = 3
        script = os.path.join(HERE, "pg-floor.sql")
        for clients in (1, 2):
            db = self.new_db(f"pgfloor_{clients}")
            try:
                helper = Daemon(self, db, os.path.join(self.out, "daemon.log"))
                for i in range(k):
                    # never sent to: no daemon runs in this scenario
                    helper.command("subscriber", "add", f"floor-{i + 1:02d}", "--url", "http://127.0.0.1:9/hook")
                ids = sorted(int(r[0]) for r in self.pg.rows("SELECT id FROM consent_sync.subscribers", db))
                if ids != list(range(1, k + 1)):
                    raise BenchError(f"pg-floor.sql expects subscribers 1 to {k}; the database has {ids}")
                self.pg.psql("CHECKPOINT", db)
                argv = [self.pg.tool["pgbench"], "-n", "-M", "prepared", "-f", script, "-c", str(clients), "-j", str(clients),
                        "-T", str(self.args.pgfloor_seconds)]
                watch = Stopwatch(self)
                before = watch.sample()
                # The relay's session settings (DeliveryStore.prepareSession): index scans and
                # generic plans whatever the statistics of a table that grows from empty.
                env = self.pg.env(db) | {"PGOPTIONS": "-c jit=off -c enable_seqscan=off -c enable_bitmapscan=off "
                                                      "-c plan_cache_mode=force_generic_plan"}
                started = time.time()
                run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=self.args.pgfloor_seconds + 120)
                wall = time.time() - started
                # pgbench's backends count once the postmaster has reaped them: wait for that.
                deadline = time.time() + 10
                while time.time() < deadline and int(self.pg.value(
                        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")) > 0:
                    time.sleep(0.05)
                time.sleep(0.2)
                after = watch.sample()
                if run.returncode != 0:
                    raise BenchError(f"pgbench -f pg-floor.sql failed: {run.stderr[-2000:]}")
                figures = parse_pgbench(run.stdout)
                # Every run leaves its write-back's rows delivered: count them, not pgbench's runs.
                delivered = int(self.pg.value("SELECT count(*) FROM consent_sync.deliveries WHERE state = 'delivered'", db))
                attempts = int(self.pg.value("SELECT count(*) FROM consent_sync.attempts", db))
                if not delivered or attempts != delivered:
                    raise BenchError(f"pg-floor.sql with {clients} clients: {delivered} deliveries delivered, {attempts} attempts logged")
                cpu = Stopwatch.delta(before, after)
                result = {"scenario": "pg-floor", "k": k, "clients": clients, "seconds": round(wall, 1),
                          "runs_per_s": figures.get("tps"), "deliveries": delivered,
                          "deliveries_per_s": round(delivered / wall, 1),
                          "pg_cpu_us_per_delivery": round(1e6 * cpu["pg"] / delivered, 1),
                          "box_busy_pct": round(cpu["box_busy_pct"], 1), "cpus": os.cpu_count()}
                log(f"PostgreSQL alone (pg-floor.sql, {clients} client{'s' if clients > 1 else ''}): "
                    f"{result['deliveries_per_s']:,.0f} deliveries/s, {result['pg_cpu_us_per_delivery']} us PostgreSQL CPU "
                    f"per delivery, box {result['box_busy_pct']} % busy")
                self.record(result)
            finally:
                if not self.args.keep_databases:
                    self.pg.drop_db(db)

    def drain(self, label, changes, k, paused_backlog=False, wrapper=None, perf=None, statements=False, time_box=None):
        """Commit `changes` with the daemon stopped, start it, measure until all is delivered.
        With paused_backlog, the deliveries are created first (subscribers paused) so that the
        measured run starts from `changes * k` pending deliveries. With time_box (seconds), the
        daemon is stopped after that long even if not everything is delivered: the figures cover
        what was delivered, and the self-check what was received."""
        db = self.new_db(label)
        workdir = os.path.join(self.work, db)
        os.makedirs(workdir)
        nginx = Nginx(workdir, k, self.args.nginx_workers)
        nginx.start()
        daemon = None
        try:
            ports = self.add_subscribers(db, nginx)
            history = self.args.drain_history if not paused_backlog else 0
            if history:
                # a database that has been in use: earlier changes delivered, statistics gathered
                warm = Daemon(self, db, os.path.join(self.out, f"daemon-{db}-history.log"))
                warm.start()
                self.fill(db, history, "bench-history")
                self.wait_delivered(db, nginx, warm, history * k, f"{label} history")
                warm.stop()
                self.pg.psql("VACUUM ANALYZE consent_sync.changes; VACUUM ANALYZE consent_sync.deliveries;", db)
                nginx.received()
                log(f"{label}: {history} earlier changes delivered and analysed first")
            received_before = nginx.received()
            t = time.time()
            self.fill(db, changes)
            fill_seconds = time.time() - t
            # logical capture: the changes wait in the slot until the daemon reads it
            total = changes if self.args.capture == "logical" else self.changes(db) - history
            expected = total * k + received_before
            log(f"{label}: {total} changes committed in {fill_seconds:.1f} s; {expected} deliveries to make")
            if paused_backlog:
                self.set_subscribers_paused(db, True)
                pre = Daemon(self, db, os.path.join(self.out, f"daemon-{db}-fanout.log"))
                pre.start()
                deadline = time.time() + max(300, total / 200)
                while int(self.pg.value(UNFANNED, db)) > 0:
                    pre.check_alive()
                    if time.time() > deadline:
                        raise BenchError(f"{label}: fan-out of the backlog did not finish")
                    time.sleep(0.5)
                pre.stop()
                pending = int(self.pg.value("SELECT count(*) FROM consent_sync.deliveries WHERE state = 'pending'", db))
                if pending != expected:
                    raise BenchError(f"{label}: {pending} pending deliveries after fan-out, expected {expected}")
                self.set_subscribers_paused(db, False)
                log(f"{label}: {pending} deliveries pending")
            # The capture queue too (schema 7 and later): a back-log fanned out beforehand leaves
            # its index full of dead entries, which every fan-out walks until autovacuum gets to
            # it (0.82 against 0.07 ms per round at 1,000,000); the measured drain starts clean.
            queue = " VACUUM ANALYZE consent_sync.captured;" if self.pg.value(
                "SELECT to_regclass('consent_sync.captured') IS NOT NULL", db) == "t" else ""
            self.pg.psql(f"VACUUM ANALYZE consent_sync.changes; VACUUM ANALYZE consent_sync.deliveries;{queue} CHECKPOINT;", db)
            sizes = self.pg.value(
                "SELECT string_agg(format('%s %s MiB (%s MiB indexes)', c.relname, pg_total_relation_size(c.oid) >> 20, "
                "pg_indexes_size(c.oid) >> 20), ', ' ORDER BY c.relname) FROM pg_class c "
                "WHERE c.relnamespace = 'consent_sync'::regnamespace AND c.relkind = 'r' AND c.relname IN ('changes', 'deliveries', 'attempts')", db)
            log(f"{label}: {sizes}; shared_buffers {self.pg.value('SHOW shared_buffers')}")
            if statements:
                self.reset_statement_statistics(db)
            xact0 = int(self.pg.value(f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"))
            wal0 = self.pg.value("SELECT pg_current_wal_insert_lsn()")
            daemon = Daemons(self, db, os.path.join(self.out, f"daemon-{db}.log"), self.args.instances, wrapper=wrapper)
            watch = Stopwatch(self, daemon, nginx)
            before = watch.sample()
            before["daemon"] = 0.0
            perf_proc = perf(daemon) if perf else None
            started = daemon.start()
            before["wall"] = started
            complete = True
            if time_box:
                complete = self.wait_some(nginx, daemon, expected, started + time_box)
                if not complete:
                    log(f"{label}: time box of {time_box} s reached at {nginx.received()}/{expected} requests; stopping the daemon")
            if complete:
                self.wait_delivered(db, nginx, daemon, expected, label,
                                    stall_seconds=600 if wrapper else None,
                                    limit_seconds=(expected / 5 + 600) if wrapper else None)
            after = watch.sample()
            daemon.rss()
            if perf_proc:
                stop_process(perf_proc, sig=signal.SIGINT, timeout=120)
            xact1 = int(self.pg.value(f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"))
            wal_bytes = int(self.pg.value(f"SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{wal0}')::bigint"))
            stmt_rows = self.statement_rows(db) if statements else None
            pids = {"daemon_pid": daemon.pid, "pg_pids": [p for p in [self.pg.postmaster_pid()] if p] + children_of(self.pg.postmaster_pid() or -1)}
            daemon.stop(timeout=300 if wrapper else 40)
            daemon = None
            nginx.stop()
            ok, check, per = self.self_check(db, nginx, ports, label, complete=complete)
            history_max = int(self.pg.value("SELECT coalesce(max(id), 0) FROM consent_sync.changes WHERE source = 'bench-history'", db)) if history else 0
            receipts = sorted(r[3] for r in per.values() if r[3] is not None and r[1] > history_max)
            cpu = Stopwatch.delta(before, after)
            timeline = rate_timeline(receipts, started, 10)
            with open(os.path.join(self.out, f"{label}-rate.csv"), "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["seconds_since_start", "deliveries_per_s", "delivered_so_far"])
                writer.writerows(timeline)
            n = len(receipts)
            elapsed = (max(receipts) - started) if receipts else None
            middle = None
            if n >= 100:
                lo, hi = receipts[int(n * 0.1)], receipts[int(n * 0.9)]
                middle = (int(n * 0.9) - int(n * 0.1)) / (hi - lo) if hi > lo else None
            result = {
                "scenario": label, "k": k, "instances": self.args.instances, "changes": total, "deliveries": n, "fill_seconds": round(fill_seconds, 2),
                "history_changes": history, "complete": complete,
                "seconds": round(elapsed, 3) if elapsed else None,
                "deliveries_per_s": round(n / elapsed, 1) if elapsed else None,
                "deliveries_per_s_10_90pct": round(middle, 1) if middle else None,
                "first_receipt_after_s": round(receipts[0] - started, 3) if receipts else None,
                "daemon_cpu_s": round(cpu["daemon"], 2),
                "daemon_cpu_s_per_1000": round(1000 * cpu["daemon"] / n, 4) if n else None,
                "daemon_cpu_us_per_delivery": round(1e6 * cpu["daemon"] / n, 1) if n else None,
                "pg_cpu_s": round(cpu["pg"], 2),
                "pg_cpu_us_per_delivery": round(1e6 * cpu["pg"] / n, 1) if n else None,
                "nginx_cpu_us_per_delivery": round(1e6 * cpu["nginx"] / n, 1) if n else None,
                "box_cpu_busy_pct": round(cpu["box_busy_pct"], 1),
                "foreign_cpu_pct": round(cpu["foreign_cpu_pct"], 1), "load1": round(cpu["load1"], 2),
                "peak_rss_mib": round(daemon_peak(watch) / 1024, 1),
                "pg_transactions_per_delivery": round((xact1 - xact0) / n, 3) if n else None,
                "pg_wal_bytes_per_delivery": round(wal_bytes / n, 1) if n else None,
                "rate_by_10s": [row[1] for row in timeline],
                "self_check": "ok" if ok else "FAILED", "check": check,
            }
            result.update(pids)
            if stmt_rows:
                result["pg_stat_statements"] = stmt_rows
                for q in stmt_rows[:3]:
                    log(f"{label}: {q['calls']} x {(q['exec_ms'] + q['plan_ms']) / max(1, q['calls']):.2f} ms "
                        f"({1000 * (q['exec_ms'] + q['plan_ms']) / max(1, n):.1f} us, {q['buffers'] / max(1, n):.1f} buffers "
                        f"per delivery): {q['query'][:60]}")
            log(f"{label}: {n} deliveries in {elapsed or 0:.2f} s = {result['deliveries_per_s']}/s; daemon "
                f"{result['daemon_cpu_us_per_delivery']} us, PostgreSQL {result['pg_cpu_us_per_delivery']} us per delivery "
                f"({result['pg_wal_bytes_per_delivery']} bytes of WAL); peak RSS {result['peak_rss_mib']} MiB")
            return result
        finally:
            if daemon:
                daemon.stop()
            nginx.stop()
            if not self.args.keep_databases:
                self.pg.drop_db(db)

    def reset_statement_statistics(self, db):
        """pg_stat_statements from zero, for the run about to start in `db`; read by statement_rows()."""
        self.pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();", db)

    def statement_rows(self, db):
        """The most expensive statements of `db` since pg_stat_statements_reset(), with planning time."""
        rows = self.pg.rows(
            "SELECT calls, round(total_exec_time::numeric, 1), round(total_plan_time::numeric, 1), rows, "
            "shared_blks_hit + shared_blks_read, wal_records, wal_bytes, regexp_replace(left(query, 160), '\\s+', ' ', 'g') "
            "FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time + total_plan_time DESC LIMIT 20", db)
        return [{"calls": int(r[0]), "exec_ms": float(r[1]), "plan_ms": float(r[2]), "rows": int(r[3]), "buffers": int(r[4]),
                 "wal_records": int(r[5]), "wal_bytes": int(r[6]), "query": r[7]} for r in rows]

    def attempt(self, label, run):
        """Runs one measurement; a failure is recorded and the next one still runs."""
        try:
            return run()
        except BenchError as error:
            message = f"{label} could not complete: {error}"
            log(message)
            self.failures.append(message)
            return None

    def scenario_drain(self):
        for run in range(self.args.repeat):
            result = self.attempt("drain", lambda: self.drain("drain", self.args.drain_changes, self.args.drain_k))
            if result:
                result["run"] = run + 1
                self.record(result)

    def scenario_scaling(self):
        for k in self.args.scaling_ks:
            changes = max(1, self.args.scaling_deliveries // k)
            result = self.attempt(f"scaling-k{k}", lambda: self.drain(f"scaling-k{k}", changes, k))
            if result:
                self.record(result)
        # The small backlog drains in about a second, so its rate varies by a quarter from run to
        # run: it runs --backlog-small-runs times, and the big one is compared with their median.
        k = self.args.drain_k
        # With --backlog-statements: each backlog drain reports its statements' cost per call, to
        # show whether claiming (or anything else) costs more at the big backlog.
        statements = self.args.backlog_statements and self.load_statement_statistics("backlog")
        small_rates = []
        for run in range(self.args.backlog_small_runs):
            backlog = self.args.backlog_small
            result = self.attempt(f"backlog-{backlog}",
                                  lambda: self.drain(f"backlog-{backlog}", math.ceil(backlog / k), k, paused_backlog=True,
                                                     statements=statements))
            if result:
                result["run"] = run + 1
                small_rates.append(result["deliveries_per_s"])
                self.record(result)
        if self.args.big_backlog:
            backlog = self.args.backlog_big
            result = self.attempt(f"backlog-{backlog}",
                                  lambda: self.drain(f"backlog-{backlog}", math.ceil(backlog / k), k, paused_backlog=True,
                                                     time_box=self.args.backlog_big_seconds, statements=statements))
            if result:
                if small_rates and result.get("deliveries_per_s"):
                    small = median(small_rates)
                    result["small_backlog_median_per_s"] = small
                    result["vs_small_backlog_pct"] = round(100.0 * result["deliveries_per_s"] / small, 1)
                    log(f"backlog: {backlog} pending drain at {result['vs_small_backlog_pct']} % of the {self.args.backlog_small} "
                        f"one's rate (median of {len(small_rates)} runs: {', '.join(str(r) for r in small_rates)} per s)")
                self.record(result)

    def live(self, label, rate, seconds, clients, transactions=None, perf=None, statements=False):
        """Daemon running; pgbench writes (paced at `rate`/s, or as fast as it can when rate is 0)."""
        k = self.args.live_k
        db = self.new_db(label)
        workdir = os.path.join(self.work, db)
        os.makedirs(workdir)
        nginx = Nginx(workdir, k, self.args.nginx_workers)
        nginx.start()
        daemon = None
        try:
            ports = self.add_subscribers(db, nginx)
            daemon = Daemon(self, db, os.path.join(self.out, f"daemon-{db}.log"))
            daemon.start()
            time.sleep(1.0)
            # warm-up: connections, LISTEN, curl keep-alive; excluded from the figures
            self.fill(db, 30, "bench-warmup")
            self.wait_delivered(db, nginx, daemon, 30 * k, f"{label} warm-up")
            warm_max = int(self.pg.value("SELECT coalesce(max(id), 0) FROM consent_sync.changes", db))
            script = pgbench_script(os.path.join(workdir, "upsert.sql"), self.keys, "bench-live")
            argv = [self.pg.tool["pgbench"], "-n", "-M", "prepared", "-f", script, "-c", str(clients), "-j", str(min(clients, 2))]
            argv += ["-t", str(transactions)] if transactions else ["-T", str(seconds)]
            if rate:
                argv += ["--rate", str(rate)]
            if statements:
                self.reset_statement_statistics(db)
            perf_proc = perf(daemon) if perf else None
            watch = Stopwatch(self, daemon, nginx)
            before = watch.sample()
            xact_sql = f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"
            xact0 = int(self.pg.value(xact_sql))
            log(f"{label}: {' '.join(argv[1:])}")
            producer = subprocess.run(argv, capture_output=True, text=True, env=self.pg.env(db), timeout=seconds + 120)
            if producer.returncode != 0:
                raise BenchError(f"pgbench failed: {producer.stderr[-2000:]}")
            produced_by_pgbench = parse_pgbench(producer.stdout)
            if self.args.capture == "logical":
                self.wait_slot_read(db)
            total = self.changes(db)
            expected = total * k
            self.wait_delivered(db, nginx, daemon, expected, label)
            after = watch.sample()
            if perf_proc:
                stop_process(perf_proc, sig=signal.SIGINT, timeout=120)
            # the producer's own transactions (one per pgbench transaction) are not the relay's
            relay_xacts = int(self.pg.value(xact_sql)) - xact0 - total
            stmt_rows = self.statement_rows(db) if statements else None
            pids = {"daemon_pid": daemon.pid, "pg_pids": [p for p in [self.pg.postmaster_pid()] if p] + children_of(self.pg.postmaster_pid() or -1)}
            daemon.rss()
            daemon.stop()
            daemon = None
            nginx.stop()
            ok, check, per = self.self_check(db, nginx, ports, label)
            cpu = Stopwatch.delta(before, after)
            measured = [(r[2], r[3]) for r in per.values() if r[1] > warm_max and r[3] is not None]
            result = self.latency_figures(label, k, rate, seconds, clients, measured, cpu, produced_by_pgbench)
            result["latency_breakdown_ms"] = self.latency_breakdown(label, db, per, warm_max)
            result.update(self_check="ok" if ok else "FAILED", check=check,
                          peak_rss_mib=round(daemon_peak(watch) / 1024, 1),
                          relay_transactions_per_delivery=round(relay_xacts / max(1, len(measured)), 3))
            result.update(pids)
            if stmt_rows:
                result["pg_stat_statements"] = stmt_rows
            return result
        finally:
            if daemon:
                daemon.stop()
            nginx.stop()
            if not self.args.keep_databases:
                self.pg.drop_db(db)

    def latency_breakdown(self, label, db, per, warm_max):
        """Where a change's latency goes, per delivery: commit -> fanned out (the relay's round
        that inserted the delivery began: `deliveries.created_at`, its transaction's now()),
        fanned out -> request started (the first attempt's `started_at`, taken by the relay as
        it starts the request), started -> received (nginx's `$msec`, truncated to the ms)."""
        rows = self.pg.rows("""SELECT d.id, extract(epoch FROM d.created_at)::float8, extract(epoch FROM min(a.started_at))::float8
                               FROM consent_sync.deliveries d JOIN consent_sync.attempts a ON a.delivery_id = d.id
                               GROUP BY d.id""", db)
        parts = {"commit_to_fanned_out": [], "fanned_out_to_request": [], "request_to_receipt": []}
        for did, created, started in rows:
            sid, cid, changed, receipt = per.get(int(did), (None, 0, None, None))
            if cid <= warm_max or receipt is None:
                continue
            created, started = float(created), float(started)
            parts["commit_to_fanned_out"].append(1000.0 * (created - changed))
            parts["fanned_out_to_request"].append(1000.0 * (started - created))
            parts["request_to_receipt"].append(1000.0 * (receipt - started))
        breakdown = {}
        for name, values in parts.items():
            values.sort()
            if values:
                breakdown[name] = {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2)}
        if breakdown:
            log(f"{label}: latency by step, ms p50/p99: " + ", ".join(
                f"{name.replace('_', ' ')} {v['p50']}/{v['p99']}" for name, v in breakdown.items()))
        return breakdown

    def latency_figures(self, label, k, rate, seconds, clients, measured, cpu, pgbench):
        """measured: [(changed_at, receipt)] of every delivery of the producer's changes."""
        if not measured:
            raise BenchError(f"{label}: no delivery of the producer's changes was received")
        latencies = sorted(1000.0 * (r - c) for c, r in measured)
        receipts = sorted(r for _, r in measured)
        n = len(latencies)
        changes = round(n / k)  # every change reached all k subscribers (the self-check holds it)
        t0, t_last_commit = min(c for c, _ in measured), max(c for c, _ in measured)
        window = max(1e-9, t_last_commit - t0)
        # backlog over time (deliveries committed but not yet received), from the timestamps alone
        step = 0.1
        span = max(window, receipts[-1] - t0)
        buckets = int(span / step) + 1
        window_buckets = int(window / step) + 1
        made = [0] * (buckets + 1)
        got = [0] * (buckets + 1)
        # Counted per delivery: changes committed in the same microsecond are one commit time,
        # and counting k per distinct time drove the backlog below zero. A receipt is truncated
        # to the millisecond, so it can read earlier than its commit: counted no earlier.
        for c, r in measured:
            made[min(buckets, int((c - t0) / step))] += 1
            got[min(buckets, int((max(r, c) - t0) / step))] += 1
        backlog, level = [], 0
        for i in range(buckets + 1):
            level += made[i] - got[i]
            backlog.append(level)
        # least-squares slope of the backlog, over the production window after its first 10 %
        xs = [i * step for i in range(int(window_buckets * 0.1), window_buckets)]
        ys = [backlog[i] for i in range(int(window_buckets * 0.1), window_buckets)]
        slope = 0.0
        if len(xs) > 2:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
        growth = slope * window
        tail = receipts[-1] - t_last_commit
        flat = growth <= max(0.01 * n, 10 * k) and tail <= 1.0
        # per-second percentiles for the plot
        series = {}
        for c, r in measured:
            series.setdefault(int(r - t0), []).append(1000.0 * (r - c))
        timeline = []
        for second in sorted(series):
            values = sorted(series[second])
            backlog_at = backlog[min(len(backlog) - 1, max(0, int((second + 1) / step) - 1))]
            timeline.append({"second": second, "deliveries": len(values), "p50_ms": percentile(values, 50),
                             "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99), "max_ms": values[-1],
                             "backlog": backlog_at})
        result = {
            "scenario": label, "k": k, "target_rate": rate or "max", "seconds": round(window, 2), "producer_clients": clients,
            "changes": changes, "deliveries": n,
            "produced_per_s": round(changes / window, 1),
            "pgbench_tps": pgbench.get("tps"), "pgbench_latency_avg_ms": pgbench.get("latency_avg_ms"),
            "deliveries_per_s": round(n / max(1e-9, receipts[-1] - t0), 1),
            "latency_p50_ms": round(percentile(latencies, 50), 2), "latency_p95_ms": round(percentile(latencies, 95), 2),
            "latency_p99_ms": round(percentile(latencies, 99), 2), "latency_max_ms": round(latencies[-1], 2),
            "latency_mean_ms": round(sum(latencies) / n, 2),
            "backlog_max": max(backlog[:window_buckets + 1]), "backlog_growth_over_run": round(growth, 1), "drain_tail_s": round(tail, 3),
            "backlog_flat": flat,
            "daemon_cpu_us_per_delivery": round(1e6 * cpu["daemon"] / n, 1),
            "daemon_cpu_s_per_1000": round(1000 * cpu["daemon"] / n, 4),
            "pg_cpu_us_per_delivery_incl_producer": round(1e6 * cpu["pg"] / n, 1),
            "nginx_cpu_us_per_delivery": round(1e6 * cpu["nginx"] / n, 1),
            "box_cpu_busy_pct": round(cpu["box_busy_pct"], 1),
            "foreign_cpu_pct": round(cpu["foreign_cpu_pct"], 1), "load1": round(cpu["load1"], 2),
            "timeline": timeline,
        }
        log(f"{label}: produced {result['produced_per_s']}/s, delivered {result['deliveries_per_s']}/s; latency ms p50 "
            f"{result['latency_p50_ms']} p95 {result['latency_p95_ms']} p99 {result['latency_p99_ms']} max {result['latency_max_ms']}; "
            f"backlog {'flat' if flat else 'NOT flat'} (max {max(backlog[:window_buckets + 1])}, growth {growth:.0f}, tail {tail:.3f} s)")
        return result

    def scenario_live(self):
        for run in range(self.args.repeat):
            result = self.attempt("live", lambda: self.live("live", self.args.live_rate, self.args.live_seconds, self.args.live_clients))
            if not result:
                continue
            result["run"] = run + 1
            self.live_series = result
            self.write_timeline(result, f"live-timeline-{run + 1}.csv")
            self.record(result)

    def scenario_maxlive(self):
        for run in range(self.args.repeat):
            result = self.attempt("maxlive", lambda: self.live("maxlive", 0, self.args.maxlive_seconds, self.args.maxlive_clients,
                                                               transactions=self.args.maxlive_transactions))
            if not result:
                continue
            result["run"] = run + 1
            self.write_timeline(result, f"maxlive-timeline-{run + 1}.csv")
            self.record(result)

    def write_timeline(self, result, name):
        with open(os.path.join(self.out, name), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["second", "deliveries", "p50_ms", "p95_ms", "p99_ms", "max_ms", "backlog"])
            writer.writeheader()
            for row in result["timeline"]:
                writer.writerow({key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()})

    def scenario_producer(self):
        """pgbench upserts on consent_sync.consents with and without the capture trigger, per capture mode."""
        for mode in self.args.producer_capture:
            self.producer_runs(mode)

    def producer_runs(self, mode):
        db = self.new_db(f"producer_{mode}")
        workdir = os.path.join(self.work, db)
        os.makedirs(workdir)
        try:
            if mode == "logical":
                if self.pg.value("SHOW wal_level") != "logical":
                    raise BenchError("producer: capture mode logical needs wal_level = logical (scripts/with-postgres.sh sets it)")
                Daemon(self, db, os.path.join(self.out, "daemon.log")).command("capture", "logical")
            # every key exists already (written without the trigger), so the runs are updates
            self.pg.psql(capture_triggers("DISABLE"), db)
            self.fill(db, self.keys, "bench-preload")
            self.pg.psql("VACUUM ANALYZE consent_sync.consents; CHECKPOINT", db)
            script = pgbench_script(os.path.join(workdir, "upsert.sql"), self.keys, "bench-producer")
            # on and off alternate, `--producer-runs` times per client count; the table shows medians
            for clients, run_index, trigger in [(c, i, t) for c in self.args.producer_clients
                                                for i in range(self.args.producer_runs) for t in (True, False)]:
                self.pg.psql(capture_triggers("ENABLE" if trigger else "DISABLE"), db)
                argv = [self.pg.tool["pgbench"], "-n", "-M", "prepared", "-f", script, "-c", str(clients),
                        "-j", str(min(clients, 2)), "-T", str(self.args.producer_seconds)]
                changes0 = self.changes(db)
                run = subprocess.run(argv, capture_output=True, text=True, env=self.pg.env(db), timeout=self.args.producer_seconds + 120)
                if run.returncode != 0:
                    raise BenchError(f"pgbench failed: {run.stderr[-2000:]}")
                figures = parse_pgbench(run.stdout)
                if mode == "logical":
                    # no daemon runs meanwhile: read the slot into the queue now, to count
                    self.read_slot(db)
                captured = self.changes(db) - changes0
                if trigger and figures.get("transactions") and captured != figures["transactions"]:
                    message = f"producer ({mode}): {figures['transactions']} transactions but {captured} captured changes"
                    log("SELF-CHECK FAILED: " + message)
                    self.failures.append(message)
                result = {"scenario": "producer", "capture": mode, "clients": clients, "trigger": trigger, "run": run_index + 1,
                          "seconds": self.args.producer_seconds,
                          "tps": figures.get("tps"), "latency_avg_ms": figures.get("latency_avg_ms"),
                          "transactions": figures.get("transactions"), "captured_changes": captured}
                log(f"producer ({mode}): {clients} clients, run {run_index + 1}, trigger {'on ' if trigger else 'off'}: {figures.get('tps')} tps, "
                    f"{figures.get('latency_avg_ms')} ms average")
                self.record(result)
                self.pg.psql("CHECKPOINT", db)
            self.pg.psql(capture_triggers("ENABLE"), db)
            if mode == "logical":
                Daemon(self, db, os.path.join(self.out, "daemon.log")).command("capture", "table")
        finally:
            if not self.args.keep_databases:
                self.pg.drop_db(db)

    def scenario_plot(self):
        if not self.live_series:
            log("plot: no live run to plot")
            return
        if not shutil.which("gnuplot"):
            log("plot: gnuplot is missing; skipping the PNG (the CSV is there)")
            return
        data = os.path.join(self.out, f"live-timeline-{self.live_series.get('run', 1)}.csv")
        png = os.path.join(self.out, "live-latency.png")
        r = self.live_series
        title = (f"consent-sync live: {r['produced_per_s']:.0f} changes/s x K={r['k']} for {r['seconds']:.0f} s, commit-to-receipt "
                 f"latency by second of receipt (overall p50 {r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms)")
        script = f"""
set terminal pngcairo size 1200,700 font ",10"
set output '{png}'
set datafile separator ','
set key autotitle columnhead top left
set multiplot layout 2,1 title "{title}"
set ylabel 'latency (ms)'
set logscale y
set grid
plot '{data}' using 1:3 with lines lw 2 title 'p50', '' using 1:4 with lines lw 2 title 'p95', \\
     '' using 1:5 with lines lw 2 title 'p99', '' using 1:6 with lines lw 1 dt 2 title 'max'
unset logscale y
set xlabel 'seconds since the producer started'
set ylabel 'backlog (deliveries)'
plot '{data}' using 1:7 with lines lw 2 title 'backlog (committed, not yet received)'
unset multiplot
"""
        gp = os.path.join(self.work, "plot.gp")
        with open(gp, "w") as f:
            f.write(script)
        result = subprocess.run(["gnuplot", gp], capture_output=True, text=True, timeout=60)
        if result.returncode != 0 and "pngcairo" in result.stderr:
            with open(gp, "w") as f:
                f.write(script.replace("pngcairo size 1200,700 font \",10\"", "png size 1200,700"))
            result = subprocess.run(["gnuplot", gp], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log(f"plot: gnuplot failed: {result.stderr.strip()}")
            return
        log(f"plot: {png}")

    # -- profiling ----------------------------------------------------------------------------

    def apply_pg_settings(self, pairs):
        """--pg-setting NAME=VALUE: ALTER SYSTEM for each, then one restart of the throwaway
        PostgreSQL (shared_buffers and the like need one); every result records the settings."""
        for pair in pairs:
            value = pair.partition("=")[2]
            self.pg.psql("ALTER SYSTEM SET %s = '%s'" % (setting_name(pair), value.replace("'", "''")))
        self.pg.restart()
        log("PostgreSQL restarted with " + ", ".join(pairs))

    def load_statement_statistics(self, who):
        """Loads pg_stat_statements (with planning time) and auto_explain into the throwaway
        PostgreSQL (a restart), once; returns whether they are loaded."""
        loaded = self.pg.value("SHOW shared_preload_libraries")
        statements = "pg_stat_statements" in loaded and "auto_explain" in loaded
        if not statements:
            try:
                self.pg.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'auto_explain'")
                try:
                    self.pg.restart()
                except Exception:
                    # back to how it was, so that PostgreSQL runs again for what follows
                    auto = os.path.join(self.pg.pgdata, "postgresql.auto.conf")
                    with open(auto) as f:
                        kept = [line for line in f if not line.startswith("shared_preload_libraries")]
                    with open(auto, "w") as f:
                        f.writelines(kept)
                    self.pg.restart()
                    raise
                if self.args.nice:
                    self.renice()
                statements = True
                log(f"{who}: PostgreSQL restarted with pg_stat_statements and auto_explain")
            except Exception as error:
                log(f"{who}: could not load pg_stat_statements/auto_explain ({error}); going on without them")
        if statements:
            try:
                # planning time too (known once the library is loaded): statements not prepared are planned on every call
                self.pg.psql("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
                self.pg.psql("SELECT pg_reload_conf()")
            except Exception as error:
                log(f"{who}: could not turn on pg_stat_statements.track_planning ({error}); planning time not reported")
        return statements

    def scenario_profile(self):
        """perf (cpu-clock, whole box) + pg_stat_statements on a drain; the slow statements' plans
        (auto_explain) on another; callgrind of the daemon on a small drain."""
        prof = os.path.join(self.out, "profile")
        os.makedirs(prof, exist_ok=True)
        summary = {"scenario": "profile"}
        statements = self.load_statement_statistics("profile")
        perf_bin = shutil.which("perf")

        def perf_start_into(path):
            def start(daemon):
                return start_process([perf_bin, "record", "-a", "-g", "-e", "cpu-clock", "-F", "999", "-o", path],
                                     stdout=subprocess.DEVNULL, stderr=open(path + ".log", "w"))
            return start if perf_bin else None

        # A drain (big rounds), then a live run at the live rate (small rounds, the producer's
        # upserts on the same PostgreSQL): their costs differ.
        perf_data = os.path.join(prof, "perf.data")
        result = self.attempt("profile-drain", lambda: self.drain("profile-drain", self.args.profile_changes, self.args.drain_k,
                                                                  perf=perf_start_into(perf_data), statements=statements))
        if result:
            summary["drain"] = {k: v for k, v in result.items() if k != "check"}
            summary.update(self.write_profile(prof, "", result, perf_data))
        live_perf = os.path.join(prof, "live-perf.data")
        result = self.attempt("profile-live", lambda: self.live("profile-live", self.args.live_rate, self.args.live_seconds,
                                                                self.args.live_clients, perf=perf_start_into(live_perf),
                                                                statements=statements))
        if result:
            summary["live"] = {k: v for k, v in result.items() if k not in ("check", "timeline")}
            summary["live_profile"] = self.write_profile(prof, "live-", result, live_perf)
        if statements:
            result = self.attempt("explain-drain", lambda: self.explain(
                prof, "explain-drain", "slow-plans.txt", self.args.explain_min_ms,
                lambda: self.drain("explain-drain", self.args.profile_changes, self.args.drain_k)))
            if result:
                summary["explain_drain"] = result
            # A live round's statements take about a millisecond: a lower threshold.
            result = self.attempt("explain-live", lambda: self.explain(
                prof, "explain-live", "live-slow-plans.txt", self.args.explain_live_min_ms,
                lambda: self.live("explain-live", self.args.live_rate, self.args.live_seconds, self.args.live_clients)))
            if result:
                summary["explain_live"] = result
        callgrind_binary = self.callgrind_preflight(prof) if self.args.callgrind else None
        if callgrind_binary:
            out = os.path.join(prof, "callgrind.out")
            wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no", "--collect-jumps=no"]
            original, self.binary = self.binary, callgrind_binary
            try:
                result = self.attempt("callgrind-drain", lambda: self.drain("callgrind-drain", self.args.callgrind_changes, self.args.drain_k, wrapper=wrapper))
            finally:
                self.binary = original
            if result:
                summary["callgrind_drain"] = {k: v for k, v in result.items() if k != "check"}
            time.sleep(1)
            if result and os.path.exists(out):
                for inclusive in ("no", "yes"):
                    text = subprocess.run(["callgrind_annotate", f"--inclusive={inclusive}", "--threshold=99", out],
                                          capture_output=True, text=True, timeout=600).stdout
                    text = demangle(text)
                    with open(os.path.join(prof, f"callgrind-{'inclusive' if inclusive == 'yes' else 'self'}.txt"), "w") as f:
                        f.write(text)
                m = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", open(os.path.join(prof, "callgrind-self.txt")).read())
                if m and result.get("deliveries"):
                    instructions = int(m.group(1).replace(",", ""))
                    summary["callgrind_instructions"] = instructions
                    summary["callgrind_instructions_per_delivery"] = round(instructions / result["deliveries"])
        self.record(summary)

    def write_profile(self, prof, prefix, result, perf_data):
        """pg_stat_statements and perf reports of one profiled run into `prof`, file names
        starting with `prefix`; returns a summary of them."""
        summary = {}
        if result.get("pg_stat_statements"):
            with open(os.path.join(prof, f"{prefix}pg_stat_statements.txt"), "w") as f:
                # WAL records and bytes do not vary with how busy the machine is: a change's effect
                # on them shows in one run, where its effect on time needs many.
                f.write(f"{'calls':>7} {'exec ms':>10} {'ms/call':>8} {'plan ms':>10} {'rows':>8} {'buf/call':>8} "
                        f"{'wal recs':>9} {'wal bytes':>11}  query\n")
                for q in result["pg_stat_statements"]:
                    f.write(f"{q['calls']:>7} {q['exec_ms']:>10.1f} {q['exec_ms'] / max(1, q['calls']):>8.2f} "
                            f"{q['plan_ms']:>10.1f} {q['rows']:>8} {q['buffers'] / max(1, q['calls']):>8.0f} "
                            f"{q.get('wal_records', 0):>9} {q.get('wal_bytes', 0):>11}  {q['query']}\n")
        if not os.path.exists(perf_data):
            return summary
        pid = str(result["daemon_pid"])
        pg_pids = ",".join(str(p) for p in result["pg_pids"])
        reports = {
            "perf-by-command.txt": ["--sort", "comm", "--no-children", "-g", "none"],
            "perf-daemon-symbols.txt": ["--pid", pid, "--sort", "dso,sym", "--no-children", "-g", "none"],
            "perf-daemon-callers.txt": ["--pid", pid, "--children", "--sort", "sym", "-g", "none"],
            "perf-postgres-symbols.txt": ["--pid", pg_pids, "--sort", "sym", "--no-children", "-g", "none"],
            "perf-postgres-callers.txt": ["--pid", pg_pids, "--children", "--sort", "sym", "-g", "none"],
        }
        for name, options in reports.items():
            lines = self.perf_report(perf_data, options, os.path.join(prof, prefix + name))
            summary[prefix + name] = lines[:25]
        for who, pids in (("daemon", pid), ("postgres", pg_pids)):
            by_dso = self.perf_by_dso(perf_data, pids)
            summary[f"{prefix}perf_{who}_by_dso"] = by_dso
            with open(os.path.join(prof, f"{prefix}perf-{who}-by-dso.txt"), "w") as f:
                f.write(f"share of the {who}'s CPU samples by library (perf cpu-clock)\n")
                for dso, pct in by_dso.items():
                    f.write(f"{pct:6.1f}%  {dso}\n")
        return summary

    def callgrind_preflight(self, prof):
        """A copy of the binary without DWARF (valgrind 3.19 cannot read Swift 6's DWARF 5; the
        symbol table is enough for callgrind), if valgrind can run it at all; else None."""
        if not shutil.which("valgrind"):
            log("profile: valgrind is missing; no callgrind")
            return None
        copy = os.path.join(self.work, "consent-sync-nodebug")
        if subprocess.run(["objcopy", "--strip-debug", self.binary, copy], capture_output=True).returncode != 0:
            shutil.copy(self.binary, copy)
        probe = subprocess.run(["valgrind", "--tool=none", copy, "--version"], capture_output=True, text=True, timeout=300)
        if probe.returncode != 0 or "INTERNAL ERROR" in probe.stderr:
            with open(os.path.join(prof, "valgrind-failure.txt"), "w") as f:
                f.write(probe.stderr)
            reason = next((line for line in probe.stderr.splitlines() if "INTERNAL ERROR" in line or "impossible" in line), "failed")
            log(f"profile: valgrind cannot run consent-sync here ({reason.strip()}); no callgrind (see profile/valgrind-failure.txt)")
            return None
        return copy

    def explain(self, prof, label, file_name, min_ms, run):
        """A run with auto_explain logging (ANALYZE, BUFFERS) every statement slower than
        `min_ms`: the plans of the expensive statements, in profile/`file_name`."""
        server_log = os.path.join(os.path.dirname(self.pg.pgdata), "server.log")
        offset = os.path.getsize(server_log) if os.path.exists(server_log) else 0
        nested = "on" if self.args.explain_nested else "off"
        self.pg.psql(f"ALTER SYSTEM SET auto_explain.log_min_duration = '{min_ms}ms';"
                     "ALTER SYSTEM SET auto_explain.log_analyze = on; ALTER SYSTEM SET auto_explain.log_buffers = on;"
                     f"ALTER SYSTEM SET auto_explain.log_nested_statements = {nested}; SELECT pg_reload_conf();")
        try:
            result = run()
        finally:
            self.pg.psql("ALTER SYSTEM RESET auto_explain.log_min_duration; ALTER SYSTEM RESET auto_explain.log_analyze;"
                         "ALTER SYSTEM RESET auto_explain.log_buffers; ALTER SYSTEM RESET auto_explain.log_nested_statements;"
                         "SELECT pg_reload_conf();")
        with open(server_log, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        # entries start with a timestamp line containing "duration: N ms  plan:"
        entries = re.split(r"\n(?=\S+ \S+ \S+ \[\d+\] LOG:  duration: )", "\n" + text)
        plans = []
        for entry in entries:
            m = re.search(r"LOG:  duration: ([\d.]+) ms  plan:", entry)
            if m:
                plans.append((float(m.group(1)), entry.strip()))
        kinds = {}
        for duration, entry in plans:
            m = re.search(r"Query Text: (.{0,80})", entry)
            key = re.sub(r"\s+", " ", m.group(1)) if m else "?"
            kinds.setdefault(key, []).append(duration)
        plans.sort(key=lambda p: -p[0])
        with open(os.path.join(prof, file_name), "w") as f:
            f.write(f"statements slower than {min_ms} ms during {label}, by query (count, total ms, max ms):\n")
            for key, durations in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
                f.write(f"  {len(durations):>6} {sum(durations):>10.1f} {max(durations):>8.1f}  {key}\n")
            f.write("\nthe three slowest plans, then the median one of the slowest query:\n")
            for duration, entry in plans[:3]:
                f.write("\n" + entry + "\n")
            if plans:
                f.write("\n" + plans[len(plans) // 2][1] + "\n")
        return {"deliveries_per_s": result.get("deliveries_per_s"), "slow_statements": len(plans),
                "slow_by_query": {k: {"count": len(v), "total_ms": round(sum(v), 1), "max_ms": max(v)} for k, v in kinds.items()}}

    def renice(self):
        """Our processes (this one, hence everything it starts, and PostgreSQL's) at --nice."""
        targets = [os.getpid()]
        postmaster = self.pg.postmaster_pid()
        if postmaster:
            targets += [postmaster] + children_of(postmaster)
        for pid in targets:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.args.nice)
            except OSError as error:
                log(f"nice {self.args.nice} for pid {pid}: {error}")
        log(f"running at nice {self.args.nice} (harness, daemon, nginx, pgbench, PostgreSQL)")

    def perf_by_dso(self, data, pids):
        """Percent of samples per library, summed from a dso,sym report (perf's own dso view
        is unreliable with --pid)."""
        run = subprocess.run(["perf", "report", "-i", data, "--stdio", "--percentage", "relative", "--pid", pids,
                              "--no-children", "--sort", "dso,sym", "-g", "none"], capture_output=True, text=True, timeout=900)
        totals = {}
        for line in run.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[", line)
            if m:
                totals[m.group(2)] = totals.get(m.group(2), 0.0) + float(m.group(1))
        return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v >= 0.1}

    def perf_report(self, data, options, path, limit=40):
        run = subprocess.run(["perf", "report", "-i", data, "--stdio", "--percentage", "relative", "--percent-limit", "0.3", *options],
                             capture_output=True, text=True, timeout=900)
        text = demangle(run.stdout)
        with open(path, "w") as f:
            f.write(text)
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return lines[:limit] if limit else None

    # -- output ---------------------------------------------------------------------------------

    def meta(self):
        return {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["scripts/bench/run.sh", *sys.argv[1:]]),
            "host": {"cpus": os.cpu_count(), "kernel": os.uname().release, "model": cpu_model()},
            "revision": os.environ.get("BENCH_REVISION") or (git_revision() + " (working tree)" if git_revision() else None),
            "postgres": getattr(self, "_pg_meta", None),
            "settings": {k: v for k, v in vars(self.args).items()},
        }

    def write_outputs(self):
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.meta() | {"results": self.results, "failures": self.failures}, f, indent=2, default=str)
        flat = []
        for r in self.results:
            flat.append({k: v for k, v in r.items() if not isinstance(v, (dict, list))})
        keys = []
        for r in flat:
            for k in r:
                if k not in keys:
                    keys.append(k)
        with open(os.path.join(self.out, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(flat)
        table = self.table()
        with open(os.path.join(self.out, "summary.txt"), "w") as f:
            f.write(table + "\n")
        print(table)
        print(f"\nresults: {self.out}")

    def floor_bound(self):
        """What the floors measured in this run allow together: the sender's CPU per request (as
        the daemon sends: each handle reset and configured), the receiver's, and PostgreSQL's
        per delivery with both cores (`pg-floor.sql`, 2 clients), all on the same cores. None
        unless the sender and pgfloor scenarios ran."""
        sender = next((r for r in self.results if r["scenario"] == "sender-alone" and r.get("mode") == "reset"), None)
        pg = next((r for r in self.results if r["scenario"] == "pg-floor" and r.get("clients") == 2), None)
        if not sender or not pg or not sender.get("cpu_us_per_request") or not pg.get("pg_cpu_us_per_delivery"):
            return None
        nginx = sender.get("nginx_cpu_us_per_request") or 0.0
        total = sender["cpu_us_per_request"] + nginx + pg["pg_cpu_us_per_delivery"]
        cpus = pg.get("cpus") or os.cpu_count() or 1
        return {"sender_us": sender["cpu_us_per_request"], "nginx_us": nginx, "pg_us": pg["pg_cpu_us_per_delivery"],
                "us_per_delivery": round(total, 1), "cpus": cpus, "deliveries_per_s": round(cpus * 1e6 / total)}

    def table(self):
        def fmt(v, digits=1):
            if v is None:
                return "-"
            if isinstance(v, bool):
                return "yes" if v else "NO"
            if isinstance(v, float):
                return f"{v:,.{digits}f}"
            if isinstance(v, int):
                return f"{v:,}"
            return str(v)

        lines = []
        head = ["scenario", "K", "changes", "deliveries", "deliv/s", "produced/s", "daemon us/d", "PG us/d",
                "RSS MiB", "p50 ms", "p95 ms", "p99 ms", "max ms", "flat", "check"]
        rows = []
        for r in self.results:
            s = r["scenario"]
            if s in ("nginx-alone", "sender-alone", "pg-floor", "producer", "profile"):
                continue
            pg = r.get("pg_cpu_us_per_delivery", r.get("pg_cpu_us_per_delivery_incl_producer"))
            rows.append([s + (f"#{r['run']}" if r.get("run", 1) > 1 else ""), fmt(r.get("k")), fmt(r.get("changes")),
                         fmt(r.get("deliveries")), fmt(r.get("deliveries_per_s"), 0), fmt(r.get("produced_per_s"), 0),
                         fmt(r.get("daemon_cpu_us_per_delivery")), fmt(pg), fmt(r.get("peak_rss_mib")),
                         fmt(r.get("latency_p50_ms"), 2), fmt(r.get("latency_p95_ms"), 2), fmt(r.get("latency_p99_ms"), 2),
                         fmt(r.get("latency_max_ms"), 1), fmt(r.get("backlog_flat")), r.get("self_check", "-")])
        if rows:
            widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
            lines.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))))
            for row in rows:
                lines.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        nginx = [r for r in self.results if r["scenario"] == "nginx-alone"]
        for r in nginx:
            lines.append(f"\nreceiver alone (nginx, {self.args.nginx_workers} worker, {r['tool']}): {fmt(r.get('requests_per_s'), 0)} requests/s")
        for r in [r for r in self.results if r["scenario"] == "sender-alone"]:
            lines.append(f"sender alone (libcurl, {r['mode']}, {r['urls']} x {r['in_flight_per_url']} in flight): "
                         f"{fmt(r.get('requests_per_s'), 0)} requests/s, {fmt(r.get('cpu_us_per_request'))} us CPU per request")
        for r in [r for r in self.results if r["scenario"] == "pg-floor"]:
            lines.append(f"PostgreSQL alone (pg-floor.sql, {r['clients']} client{'s' if r['clients'] > 1 else ''}): "
                         f"{fmt(r.get('deliveries_per_s'), 0)} deliveries/s, {fmt(r.get('pg_cpu_us_per_delivery'))} us CPU per delivery")
        bound = self.floor_bound()
        if bound:
            lines.append(f"the floors together: {bound['us_per_delivery']} us of CPU per delivery "
                         f"(sender {bound['sender_us']} + receiver {bound['nginx_us']} + PostgreSQL {bound['pg_us']}), "
                         f"at most {fmt(bound['deliveries_per_s'], 0)} deliveries/s on {bound['cpus']} cores")
        producer = [r for r in self.results if r["scenario"] == "producer"]
        if producer:
            runs = max(r.get("run", 1) for r in producer)
            lines.append(f"\nproducer cost (pgbench upsert on consent_sync.consents, tps{f', median of {runs} runs' if runs > 1 else ''}):")
            lines.append("  capture   clients   trigger on   trigger off   cost")
            for mode in [m for m in ("table", "logical") if any(r.get("capture", "table") == m for r in producer)]:
                for clients in sorted({r["clients"] for r in producer}):
                    mine = [r for r in producer if r.get("capture", "table") == mode and r["clients"] == clients and r.get("tps")]
                    on = median([r["tps"] for r in mine if r["trigger"]])
                    off = median([r["tps"] for r in mine if not r["trigger"]])
                    cost = f"{100 * (1 - on / off):.0f}% fewer tps" if on and off else "-"
                    lines.append(f"  {mode:<7}   {clients:>7}   {fmt(on, 0):>10}   {fmt(off, 0):>11}   {cost}")
        for r in self.results:
            if r["scenario"] == "profile" and r.get("callgrind_instructions_per_delivery"):
                lines.append(f"\ncallgrind: {r['callgrind_instructions_per_delivery']:,} daemon instructions per delivery")
        if self.failures:
            lines.append("\nSELF-CHECK FAILURES:")
            lines.extend("  " + f for f in self.failures)
        else:
            lines.append("\nself-check: every no-fault scenario delivered every change to every subscriber exactly once, in per-subject order")
        return "\n".join(lines)


def rate_timeline(receipts, start, step):
    """[(seconds since start, deliveries/s in that step, delivered so far)] for sorted receipts."""
    rows, index, total = [], 0, 0
    if not receipts:
        return rows
    edge = start + step
    while index < len(receipts):
        count = 0
        while index < len(receipts) and receipts[index] < edge:
            index += 1
            count += 1
        total += count
        rows.append((round(edge - start), round(count / step, 1), total))
        edge += step
    return rows


def daemon_peak(watch):
    return watch.daemon.peak_rss_kib if watch.daemon else 0


def git_revision():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout
        return head + (f" (+{len(dirty.splitlines())} modified files)" if dirty.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def demangle(text):
    swift = shutil.which("swift-demangle") or shutil.which("swift")
    if not swift:
        return text
    argv = [swift, "--simplified", "--compact"] if swift.endswith("swift-demangle") else [swift, "demangle", "--simplified", "--compact"]
    try:
        run = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=300)
        return run.stdout if run.returncode == 0 and run.stdout else text
    except (OSError, subprocess.TimeoutExpired):
        return text


def python_load(port, body, seconds, connections=16):
    """A fallback load generator when wrk is missing: keep-alive POSTs over a few connections."""
    import asyncio

    request = (f"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\nwebhook-id: msg_py_1\r\n"
               f"content-length: {len(body)}\r\n\r\n{body}").encode()

    async def worker(deadline, counter):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.time() < deadline:
            writer.write(request)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            counter[0] += 1
        writer.close()

    async def main():
        counter = [0]
        deadline = time.time() + seconds
        started = time.time()
        await asyncio.gather(*(worker(deadline, counter) for _ in range(connections)))
        return counter[0] / (time.time() - started)

    return round(asyncio.run(main()), 1)


# ----------------------------------------------------------------------------------------------
# options: flags, each also settable as BENCH_<NAME> (e.g. BENCH_DRAIN_CHANGES=20000)


def setting_name(pair):
    """The NAME of a --pg-setting NAME=VALUE, checked (it goes into SQL text)."""
    name, sep, _ = pair.partition("=")
    if not sep or not re.fullmatch(r"[a-z_.]+", name):
        raise BenchError(f"--pg-setting {pair!r}: expected NAME=VALUE, e.g. shared_buffers=1GB")
    return name


def env_default(name, default, kind=str):
    raw = os.environ.get("BENCH_" + name.upper())
    if raw is None or raw == "":
        return default
    if kind is bool:
        return raw not in ("0", "false", "no")
    if kind == "ints":
        return [int(x) for x in raw.split(",") if x]
    return kind(raw)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/bench/run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--smoke", action="store_true", default=env_default("smoke", False, bool),
                   help="small and quick (CI): 2,000 changes, short live runs, small scaling steps")
    p.add_argument("--scenarios", default=env_default("scenarios", ",".join(ALL_SCENARIOS)),
                   help=f"comma-separated subset of {','.join(ALL_SCENARIOS)} (default: all)")
    p.add_argument("--profile", action="store_true", default=env_default("profile", False, bool),
                   help="also profile: perf cpu-clock + pg_stat_statements on a drain, callgrind on a small drain (restarts PostgreSQL to load pg_stat_statements, so it runs last)")
    p.add_argument("--binary", default=os.environ.get("BENCH_BINARY"), help="the consent-sync binary (run.sh builds it)")
    p.add_argument("--output", default=env_default("output", None), help="results folder (default bench-results/<timestamp>)")
    p.add_argument("--repeat", type=int, default=env_default("repeat", 1, int), help="runs of drain, live and maxlive (default 1)")
    p.add_argument("--subjects", type=int, default=env_default("subjects", 20000, int), help=f"distinct subjects; x {len(PURPOSES)} purposes (default 20000)")
    p.add_argument("--fill-batch", type=int, default=env_default("fill_batch", 10000, int), help="rows per transaction when filling a backlog")
    p.add_argument("--drain-changes", type=int, default=env_default("drain_changes", None, int), help="drain: changes (default 100000)")
    p.add_argument("--drain-history", type=int, default=env_default("drain_history", 0, int),
                   help="drain and scaling: changes delivered (and ANALYZEd) before the backlog, as in a database in use (default 0: a fresh database)")
    p.add_argument("--drain-k", type=int, default=env_default("drain_k", 3, int), help="drain and backlog: subscribers (default 3)")
    p.add_argument("--live-k", type=int, default=env_default("live_k", 3, int), help="live and maxlive: subscribers (default 3)")
    p.add_argument("--live-rate", type=int, default=env_default("live_rate", None, int), help="live: changes/s (default 1000)")
    p.add_argument("--live-seconds", type=int, default=env_default("live_seconds", None, int), help="live: duration (default 30)")
    p.add_argument("--live-clients", type=int, default=env_default("live_clients", 2, int), help="live: pgbench connections (default 2)")
    p.add_argument("--maxlive-seconds", type=int, default=env_default("maxlive_seconds", None, int), help="maxlive: duration (default 20)")
    p.add_argument("--maxlive-transactions", type=int, default=env_default("maxlive_transactions", None, int),
                   help="maxlive: transactions per pgbench client instead of a duration (smoke: 500)")
    p.add_argument("--stall-seconds", type=int, default=env_default("stall_seconds", None, int),
                   help="fail a scenario when no request arrives for this long (default 60, smoke 20)")
    p.add_argument("--nice", type=int, default=env_default("nice", 0, int),
                   help="run the harness, daemon, nginx, pgbench and PostgreSQL at this nice level (e.g. -10 on a shared machine; negative needs root)")
    p.add_argument("--maxlive-clients", type=int, default=env_default("maxlive_clients", 4, int), help="maxlive: pgbench connections (default 4)")
    p.add_argument("--scaling-ks", type=ints, default=env_default("scaling_ks", None, "ints"), help="scaling: subscriber counts (default 1,3,10,30)")
    p.add_argument("--scaling-deliveries", type=int, default=env_default("scaling_deliveries", None, int),
                   help="scaling: deliveries per K (changes = this / K; default 150000)")
    p.add_argument("--backlog-small", type=int, default=env_default("backlog_small", None, int), help="scaling: small pending backlog (default 10000)")
    p.add_argument("--backlog-small-runs", type=int, default=env_default("backlog_small_runs", None, int),
                   help="scaling: runs of the small backlog, compared by their median (default 3)")
    p.add_argument("--backlog-statements", action="store_true", default=env_default("backlog_statements", False, bool),
                   help="scaling: pg_stat_statements per backlog drain (restarts the throwaway PostgreSQL to load it)")
    p.add_argument("--backlog-big", type=int, default=env_default("backlog_big", 1000000, int), help="scaling: big pending backlog (default 1000000)")
    p.add_argument("--backlog-big-seconds", type=int, default=env_default("backlog_big_seconds", 600, int),
                   help="stop the big backlog's drain after this long and report the rate so far (default 600; 0: until done)")
    p.add_argument("--pg-setting", action="append", default=env_default("pg_setting", [], str.split), metavar="NAME=VALUE",
                   help="a PostgreSQL setting for the throwaway server, e.g. shared_buffers=1GB (repeatable; one restart; "
                        "BENCH_PG_SETTING takes several, separated by spaces)")
    p.add_argument("--big-backlog", action="store_true", default=env_default("big_backlog", False, bool), help="run the big backlog too (slow)")
    p.add_argument("--producer-seconds", type=int, default=env_default("producer_seconds", None, int), help="producer: seconds per pgbench run (default 10)")
    p.add_argument("--producer-runs", type=int, default=env_default("producer_runs", None, int),
                   help="producer: on/off pairs per client count, alternating; the table shows medians (default 3, smoke 1)")
    p.add_argument("--producer-clients", type=ints, default=env_default("producer_clients", None, "ints"), help="producer: client counts (default 1,4,16)")
    p.add_argument("--capture", choices=["table", "logical"], default="table",
                   help="capture mode of the drain, live, maxlive and scaling scenarios (default table)")
    p.add_argument("--producer-capture", type=lambda v: [m for m in v.split(",") if m], default=["table", "logical"],
                   help="producer: capture modes to measure, table and/or logical (default table,logical)")
    p.add_argument("--nginx-seconds", type=int, default=env_default("nginx_seconds", None, int), help="receiver alone: wrk duration (default 5)")
    p.add_argument("--sender-requests", type=int, default=env_default("sender_requests", None, int),
                   help="sender alone: requests per libcurl run (default 200000)")
    p.add_argument("--pgfloor-seconds", type=int, default=env_default("pgfloor_seconds", None, int),
                   help="PostgreSQL alone: pgbench duration per client count (default 15)")
    p.add_argument("--nginx-workers", type=int, default=env_default("nginx_workers", 1, int), help="nginx worker processes (default 1)")
    p.add_argument("--sub-max-in-flight", type=int, default=env_default("sub_max_in_flight", 64, int), help="subscriber add --max-in-flight (default 64)")
    p.add_argument("--instances", type=int, default=env_default("instances", 1, int),
                   help="daemons draining one database at once in drain, scaling and backlog (default 1); CPU is their sum")
    p.add_argument("--relay-max-in-flight", type=int, default=env_default("relay_max_in_flight", 512, int), help="CONSENT_SYNC_RELAY_MAX_IN_FLIGHT (default 512)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="CONSENT_SYNC_KEY=VALUE",
                   help="extra setting for the daemon (repeatable), e.g. CONSENT_SYNC_RELAY_CLAIM_BATCH_SIZE=200")
    p.add_argument("--daemon-log-level", default=env_default("daemon_log_level", "warning"), help="daemon log level (default warning)")
    p.add_argument("--profile-changes", type=int, default=env_default("profile_changes", None, int), help="profile: drain changes under perf (default 50000)")
    p.add_argument("--callgrind-changes", type=int, default=env_default("callgrind_changes", None, int), help="profile: drain changes under callgrind (default 2000)")
    p.add_argument("--explain-live-min-ms", type=float, default=env_default("explain_live_min_ms", 1.5, float),
                   help="profile: log the plans of live-run statements slower than this (default 1.5)")
    p.add_argument("--explain-min-ms", type=int, default=env_default("explain_min_ms", 20, int),
                   help="profile: auto_explain threshold for the plans of slow statements (default 20)")
    p.add_argument("--explain-nested", action="store_true",
                   help="profile: also log the plans of statements run inside functions and triggers (schema 10's checks)")
    p.add_argument("--no-callgrind", dest="callgrind", action="store_false", help="profile without callgrind")
    p.add_argument("--after-migrate-sql", default="", metavar="SQL",
                   help="run SQL on each benchmark database after 'migrate' (what-if experiments, e.g. without an index)")
    p.add_argument("--keep-databases", action="store_true", help="do not drop the scenario databases (debugging)")
    args = p.parse_args(argv)

    full = dict(drain_changes=100000, live_rate=1000, live_seconds=30, maxlive_seconds=20, scaling_ks=[1, 3, 10, 30],
                scaling_deliveries=150000, backlog_small=10000, producer_seconds=10, producer_clients=[1, 4, 16], producer_runs=3,
                nginx_seconds=5, sender_requests=200000, pgfloor_seconds=15, profile_changes=50000, callgrind_changes=2000, stall_seconds=60, backlog_small_runs=3)
    smoke = dict(drain_changes=2000, live_rate=200, live_seconds=5, maxlive_seconds=5, scaling_ks=[1, 10],
                 scaling_deliveries=6000, backlog_small=3000, producer_seconds=2, producer_clients=[1, 4], producer_runs=1,
                 nginx_seconds=2, sender_requests=20000, pgfloor_seconds=2, profile_changes=5000, callgrind_changes=500, stall_seconds=20, maxlive_transactions=500,
                 backlog_small_runs=1)
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in ALL_SCENARIOS + ["profile"]]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {ALL_SCENARIOS}")
    if args.profile and "profile" not in args.scenarios:
        args.scenarios.append("profile")
    if not args.binary:
        p.error("no consent-sync binary: set BENCH_BINARY or --binary (run.sh builds it)")
    if not 1 <= args.instances <= 16:
        p.error(f"--instances {args.instances}: expected 1 to 16 daemons")
    for item in args.daemon_env:
        if not item.startswith("CONSENT_SYNC_") or "=" not in item:
            p.error(f"--daemon-env {item!r}: expected CONSENT_SYNC_KEY=VALUE")
    return args


def report(folders):
    """Re-renders the table from the results.json of one or more earlier runs."""
    bench = Bench.__new__(Bench)
    bench.results, bench.failures = [], []
    workers = 1
    for folder in folders:
        with open(os.path.join(folder, "results.json")) as f:
            data = json.load(f)
        bench.results += data.get("results", [])
        bench.failures += data.get("failures", [])
        workers = data.get("settings", {}).get("nginx_workers", workers)
    bench.args = argparse.Namespace(nginx_workers=workers)
    print(bench.table())
    return 1 if bench.failures else 0


def main(argv):
    if argv[:1] == ["--report"]:
        return report(argv[1:])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    bench = None
    status = 0
    try:
        bench = Bench(args)
        # Checkpoints and WAL size out of the way of the figures (results.json records them);
        # --pg-setting comes after, so that it can override them.
        bench.pg.psql("ALTER SYSTEM SET max_wal_size = '8GB'; ALTER SYSTEM SET checkpoint_timeout = '30min'; SELECT pg_reload_conf();")
        if args.pg_setting:
            bench.apply_pg_settings(args.pg_setting)
        bench._pg_meta = {"version": bench.pg.version(),
                          "settings": bench.pg.settings(extra=[setting_name(pair) for pair in args.pg_setting])}
        if args.nice:
            bench.renice()
        log(f"results in {bench.out}; PostgreSQL {bench._pg_meta['version']}; binary {args.binary}")
        order = ["nginx", "sender", "pgfloor", "drain", "live", "plot", "maxlive", "scaling", "producer", "profile"]
        for name in [s for s in order if s in args.scenarios]:
            started = time.time()
            log(f"=== {name}")
            try:
                getattr(bench, f"scenario_{name}")()
            except BenchError as error:
                message = f"scenario {name} could not complete: {error}"
                log(message)
                bench.failures.append(message)
            log(f"=== {name} took {time.time() - started:.0f} s")
        bench.write_outputs()
        status = 1 if bench.failures else 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        status = 130
        if bench is not None:
            stop_everything()
            try:
                bench.failures.append("interrupted before the end: results cover the scenarios that finished")
                bench.write_outputs()
            except Exception as error:  # the figures so far are in results.json anyway
                log(f"could not write the summary: {error}")
    except BenchError as error:
        log(f"error: {error}")
        status = 1
    finally:
        stop_everything()
        if bench is not None:
            shutil.rmtree(bench.work, ignore_errors=True)
    if status == 1:
        print("\nBENCHMARK FAILED (see the messages above)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
