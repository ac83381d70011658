#!/usr/bin/env python3
"""Start and stop a private RabbitMQ node, PostgreSQL cluster and Dovecot (IMAP and POP3, the
bounce mailboxes) whose data live in DIR.

    stack.py up --dir DIR [--ports default|free]
    stack.py cluster-up --dir DIR [--nodes 3] [--ports default|free]   (RabbitMQ only)
    stack.py kill-node|stop-node|start-node --dir DIR --node N     (N from 1)
    stack.py down --dir DIR
    stack.py restart-rabbitmq --dir DIR
    stack.py restart-postgres --dir DIR
    stack.py status --dir DIR
    stack.py purge --dir DIR      (down, then DIR and its PostgreSQL data removed)

Standard library only: it runs with the system python3 before any virtualenv exists. The
servers listen on 127.0.0.1 only, with their own ports, node name, Erlang cookie and epmd,
so a system-wide RabbitMQ, PostgreSQL or Dovecot is never touched. `up` writes DIR/env
(KEY=VALUE lines).
"""

import argparse
import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RABBIT_SBIN = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"
PG_BIN = "/usr/lib/postgresql/*/bin"
DEFAULT_PORTS = {"amqp": 5672, "management": 15672, "postgres": 5432,
                 "imap": 10143, "imaps": 10993, "pop3": 10110, "pop3s": 10995}
DOVECOT = "/usr/sbin/dovecot"
PGBOUNCER = "/usr/sbin/pgbouncer"
RABBIT_PORTS = ("amqp", "management", "dist")  # a RabbitMQ node's own; epmd is shared
PORT_NAMES = ("amqp", "management", "dist", "epmd", "postgres", "imap", "imaps", "pop3", "pop3s")
TIMEOUT = 90  # seconds for a server to become ready


class StackError(Exception):
    pass


def run(cmd, *, env=None, cwd=None, stdin_text=None, timeout=120, what=None):
    """Run a command and return its stdout; raise StackError with its error line on failure."""
    # Name the program in messages, never the whole command line: it may hold the password.
    what = what or Path(str(cmd[4] if cmd[0] == "runuser" else cmd[0])).name
    cmd = [str(part) for part in cmd]
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, input=stdin_text, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        line = next((x for x in lines if "error" in x.lower() or x.startswith("E:")), lines[0])
        raise StackError(f"{what} failed: {line.strip()}")
    return proc.stdout


def installed(pattern):
    """The folder matching pattern with the highest version number, or None."""
    paths = glob.glob(pattern)
    if not paths:
        return None
    return Path(max(paths, key=lambda path: [int(n) for n in re.findall(r"\d+", path)])).parent


def rabbit_sbin():
    return installed(RABBIT_SBIN + "/rabbitmq-server")


def pg_bin():
    return installed(PG_BIN + "/initdb")


# --- processes, read from /proc so that we only ever signal processes proven to be ours ---


def proc_read(pid, name):
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode("latin-1")
    except OSError:
        return ""


def live_processes():
    """(pid, process group) of every process that is not a zombie."""
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        fields = proc_read(pid, "stat").rpartition(")")[2].split()  # state, ppid, pgrp, ...
        if fields and fields[0] != "Z":
            yield pid, int(fields[2])


def pid_alive(pid):
    return any(p == pid for p, _ in live_processes())


def group_alive(pgid):
    return any(group == pgid for _, group in live_processes())


def wait_until(condition, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def spawn(cmd, log_path, **kwargs):
    """Start cmd in the background in a new session (setsid); output appended to log_path."""
    with open(log_path, "ab") as log:
        out = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": log}
        return subprocess.Popen(cmd, start_new_session=True, **out, **kwargs)


def log_tail(*paths):
    for path in paths:
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-15:]
            print(f"--- end of {path} ---", *lines, sep="\n", file=sys.stderr)


# --- ports ---


def port_is_free(port):
    # Binding the wildcard address also detects a listener on any single address.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once
        except OSError:
            return False
    return True


def any_free_port(taken):
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


class Stack:
    """Paths, ports and password of the stack living in one DIR."""

    def __init__(self, directory):
        self.dir = Path(directory).resolve()
        self.rabbit = self.dir / "rabbitmq"
        # One node name per DIR, so that two stacks can run side by side.
        digest = self.digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        self.node = f"mail-{digest}@localhost"
        # Where user postgres cannot enter DIR (a checkout under a 0700 home), its data live
        # in a private folder of the system's temporary directory, named after DIR and
        # recorded in DIR/postgres-home; `purge` removes it.
        self.pg_home_record = self.dir / "postgres-home"
        self.pg_home_outside = Path(tempfile.gettempdir()) / f"mail-pg-{digest}"
        home = self.dir
        if self.pg_home_record.exists():
            home = Path(self.pg_home_record.read_text().strip())
        self.pgdata = home / "postgres"
        self.pgrun = home / "postgres-run"  # unix socket and log, owned by postgres
        self.home = self.rabbit / "home"  # the Erlang cookie, one for a cluster's nodes
        self.port_keys = RABBIT_PORTS
        try:
            self.ports = json.loads((self.dir / "ports.json").read_text())
        except (OSError, ValueError):
            self.ports = {}

    def password(self):
        """Generated on the first `up` and kept in DIR, so URLs stay valid across restarts."""
        path = self.dir / "password"
        # One beginning with "-" (1 in 64 of token_urlsafe) is an option to rabbitmqctl: a
        # letter first; one kept from before with a "-" first is replaced (every `up` sets
        # the users' passwords again).
        if not path.exists() or path.read_text().startswith("-"):
            path.write_text("m" + secrets.token_urlsafe(18) + "\n")  # no URL escaping needed
            path.chmod(0o600)
        return path.read_text().strip()

    def rabbit_nodes(self):
        """The RabbitMQ nodes: this stack's own, then those `cluster-up` added."""
        try:
            count = int((self.dir / "rabbit-nodes").read_text())
        except (OSError, ValueError):
            count = 1
        return [self] + [Node(self, n) for n in range(2, count + 1)]

    def choose_ports(self, mode, held_by_us, names=PORT_NAMES):
        """Saved port if still free (or held by our own server), else the default, else any."""
        ports = {}
        for name in names:
            saved = self.ports.get(name)
            if saved and (name in held_by_us or port_is_free(saved)):
                ports[name] = saved
                continue
            wanted = DEFAULT_PORTS.get(name) if mode == "default" else None
            if wanted and wanted not in ports.values() and port_is_free(wanted):
                ports[name] = wanted
                continue
            ports[name] = any_free_port(set(ports.values()))
            if wanted or saved:
                print(f"stack: port {wanted or saved} for {name} is taken, using {ports[name]}")
        self.ports = ports
        (self.dir / "ports.json").write_text(json.dumps(ports, indent=2) + "\n")


class Node:
    """RabbitMQ node n (from 2) of a stack's cluster, beside the stack's own (node 1)."""

    def __init__(self, stack, n):
        self.stack, self.n = stack, n
        self.rabbit = stack.dir / f"rabbitmq-{n}"
        self.node = f"mail-{stack.digest}-{n}@localhost"
        self.home = stack.home  # the same cookie
        self.port_keys = tuple(f"{name}-{n}" for name in RABBIT_PORTS)  # in ports.json

    @property
    def ports(self):
        p = self.stack.ports
        return {**dict(zip(RABBIT_PORTS, (p[key] for key in self.port_keys), strict=True)),
                "epmd": p["epmd"]}


# --- RabbitMQ ---


def rabbit_env(stack):
    # Drop inherited RabbitMQ/Erlang settings: everything this node uses is set here.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    r = stack.rabbit
    env["HOME"] = str(stack.home)  # the Erlang cookie, shared by the server and rabbitmqctl
    env["RABBITMQ_NODENAME"] = stack.node
    env["RABBITMQ_MNESIA_BASE"] = str(r / "mnesia")
    env["RABBITMQ_LOG_BASE"] = str(r / "log")
    env["RABBITMQ_CONFIG_FILE"] = str(r / "rabbitmq.conf")
    env["RABBITMQ_CONFIG_FILES"] = str(r / "conf.d")  # instead of /etc/rabbitmq/conf.d
    env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(r / "advanced.config")  # absent on purpose
    env["RABBITMQ_ENABLED_PLUGINS_FILE"] = str(r / "enabled_plugins")
    env["RABBITMQ_CONF_ENV_FILE"] = str(r / "rabbitmq-env.conf")  # empty, not /etc's
    env["RABBITMQ_NODE_PORT"] = str(stack.ports["amqp"])
    env["RABBITMQ_DIST_PORT"] = str(stack.ports["dist"])
    env["ERL_EPMD_PORT"] = str(stack.ports["epmd"])
    env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
    env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}"
    return env


def ctl(stack, *args, timeout=60):
    # The rabbitmqctl next to the server script, not /usr/sbin's wrapper that switches user.
    cmd = [rabbit_sbin() / "rabbitmqctl", "-q", "-n", stack.node, *args]
    env = rabbit_env(stack)
    return run(cmd, env=env, cwd=stack.rabbit, timeout=timeout, what=f"rabbitmqctl {args[0]}")


def answers(port, request, check):
    """True when the server on port replies to request with bytes that pass check."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(request)
            return check(sock.recv(4))
    except OSError:
        return False


def amqp_answers(port):
    # An AMQP 0-9-1 protocol header; the reply is a frame of type 1 (connection.start).
    return answers(port, b"AMQP\x00\x00\x09\x01", lambda reply: reply[:1] == b"\x01")


def epmd_answers(port):
    # A NAMES request, which epmd answers with its port number (and does not log as junk).
    return answers(port, b"\x00\x01n", lambda reply: len(reply) == 4)


def rabbit_pid(stack):
    """Pid (and process group) of our running server script, or None."""
    try:
        pid = int((stack.rabbit / "server.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and "rabbitmq-server" in proc_read(pid, "cmdline") else None


def epmd_pids(stack):
    """Every epmd on our private port: the one we started, or one an Erlang program started."""
    port = stack.ports.get("epmd")
    found = []
    for pid, _ in live_processes():
        if port and proc_read(pid, "comm").strip() == "epmd":
            cmdline, environ = proc_read(pid, "cmdline"), proc_read(pid, "environ")
            if f"-port {port} " in cmdline or f"ERL_EPMD_PORT={port} " in environ:
                found.append(pid)
    return found


def start_epmd(stack):
    if epmd_pids(stack):
        return
    # Started by us, before the node, so that it listens on our port and address only.
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    cmd = [epmd, "-port", str(stack.ports["epmd"]), "-address", "127.0.0.1"]
    spawn(cmd, stack.rabbit / "epmd.log")
    if not wait_until(lambda: epmd_answers(stack.ports["epmd"]), 10):
        raise StackError(f"epmd did not start, see {stack.rabbit / 'epmd.log'}")


def start_rabbit(stack):
    """Start the node in the background in its own session (setsid) and record its pid."""
    r, p = stack.rabbit, stack.ports
    for sub in ("mnesia", "log", "conf.d"):
        (r / sub).mkdir(parents=True, exist_ok=True)
    stack.home.mkdir(parents=True, exist_ok=True)
    (r / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{p['amqp']}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {p['management']}\n"
        "disk_free_limit.absolute = 200MB\n"
    )
    (r / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (r / "rabbitmq-env.conf").write_text("")
    start_epmd(stack)
    # The real script, not /usr/sbin/rabbitmq-server which switches to user rabbitmq.
    proc = spawn(
        [rabbit_sbin() / "rabbitmq-server"], r / "server.log", env=rabbit_env(stack), cwd=r
    )
    (r / "server.pid").write_text(f"{proc.pid}\n")


def wait_rabbit_ready(stack):
    deadline = time.monotonic() + TIMEOUT
    while not amqp_answers(stack.ports["amqp"]):
        problem = None
        if not rabbit_pid(stack):
            problem = "RabbitMQ exited during start-up"
        elif time.monotonic() > deadline:
            problem = f"RabbitMQ not ready after {TIMEOUT} s"
        if problem:
            log_tail(stack.rabbit / "server.log", stack.rabbit / "log" / f"{stack.node}.log")
            raise StackError(f"{problem}, see the logs in {stack.rabbit}")
        time.sleep(0.3)
    # The AMQP listener opens near the end of the boot; this waits for the very end.
    ctl(stack, "await_startup", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 10)


def setup_rabbit_users(stack, password):
    """Idempotent: vhost mail, administrator user mail with all rights on it, no guest."""
    ctl(stack, "add_vhost", "mail")
    users = {user["user"] for user in json.loads(ctl(stack, "list_users", "--formatter", "json"))}
    ctl(stack, "change_password" if "mail" in users else "add_user", "mail", password)
    ctl(stack, "set_user_tags", "mail", "administrator")  # the management console login
    ctl(stack, "set_permissions", "-p", "mail", "mail", ".*", ".*", ".*")
    if "guest" in users:
        ctl(stack, "delete_user", "guest")


def stop_rabbit(stack):
    pid = rabbit_pid(stack)
    if pid:
        try:
            ctl(stack, "stop")
            stopped = wait_until(lambda: not group_alive(pid), 30)
        except StackError as exc:  # e.g. still booting: rabbitmqctl cannot reach it yet
            print(f"stack: {exc}; sending SIGTERM", file=sys.stderr)
            stopped = False
        # The server script and the Erlang VM share the process group made by setsid.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
                stopped = wait_until(lambda: not group_alive(pid), 20)
        if not stopped:
            raise StackError(f"RabbitMQ process group {pid} does not stop")
    (stack.rabbit / "server.pid").unlink(missing_ok=True)


def stop_epmd(stack):
    for pid in epmd_pids(stack):
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda pid=pid: not pid_alive(pid), 5):
            os.kill(pid, signal.SIGKILL)


# --- PostgreSQL ---


def as_postgres(*cmd):
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd]


def pg_running(stack):
    if not pg_bin() or not (stack.pgdata / "PG_VERSION").exists():
        return False
    cmd = as_postgres(pg_bin() / "pg_ctl", "status", "-D", stack.pgdata)
    return subprocess.run(cmd, capture_output=True, cwd=stack.dir).returncode == 0


def pg_answers(port):
    cmd = [pg_bin() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def start_postgres(stack):
    for path in (stack.pgdata, stack.pgrun):
        path.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(path, "postgres", "postgres")
    if not (stack.pgdata / "PG_VERSION").exists():
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256"]  # TCP needs the password
        initdb = [pg_bin() / "initdb", "-D", stack.pgdata, "--no-sync", "-U", "postgres", *auth]
        run(as_postgres(*initdb, "-E", "UTF8", "--locale=C.UTF-8"), cwd=stack.dir)
    log = stack.pgrun / "postgres.log"
    if not pg_running(stack):
        port = stack.ports["postgres"]
        options = f"-p {port} -k {stack.pgrun} -c listen_addresses=127.0.0.1"
        pg_ctl = [pg_bin() / "pg_ctl", "-w", "-t", TIMEOUT, "-D", stack.pgdata, "-o", options]
        try:
            run(as_postgres(*pg_ctl, "-l", log, "start"), cwd=stack.dir, timeout=TIMEOUT + 10)
        except StackError:
            log_tail(log)
            raise
    if not wait_until(lambda: pg_answers(stack.ports["postgres"]), TIMEOUT, 0.3):
        log_tail(log)
        raise StackError(f"PostgreSQL does not answer on port {stack.ports['postgres']}")


def psql(stack, sql):
    """Run SQL as postgres over the private unix socket (trusted); return the output."""
    where = ["-h", stack.pgrun, "-p", stack.ports["postgres"], "-U", "postgres", "-d", "postgres"]
    cmd = as_postgres(pg_bin() / "psql", *where, "-v", "ON_ERROR_STOP=1", "-qtA", "-f", "-")
    return run(cmd, stdin_text=sql, cwd=stack.dir).strip()  # SQL on stdin: not visible in ps


def setup_pg_database(stack, password):
    """Idempotent: login role mail with the stack password, database mail owned by it."""
    psql(
        stack,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mail')"
        f" THEN CREATE ROLE mail; END IF; END $$;\nALTER ROLE mail LOGIN PASSWORD '{password}';",
    )
    if not psql(stack, "SELECT 1 FROM pg_database WHERE datname = 'mail';"):
        psql(stack, "CREATE DATABASE mail OWNER mail;")


def stop_postgres(stack):
    if pg_running(stack):
        cmd = as_postgres(pg_bin() / "pg_ctl", "-D", stack.pgdata, "-m", "fast", "-w", "stop")
        run(cmd, cwd=stack.dir)


# --- Dovecot (IMAP and POP3: the accounts' bounce mailboxes) ---

DOVECOT_CONF = """\\
# Written by stack.py: a private Dovecot, loopback only, nothing shared with a system one.
base_dir = {run}
state_dir = {state}
instance_name = mail-{digest}
log_path = {home}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{home}/tls/cert.pem
ssl_key = <{home}/tls/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
# Every user name logs in with the stack's password; its mailbox is made on first use, so
# each test has a mailbox of its own.
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={home}/mail/%u
}}
first_valid_uid = 8
mail_location = maildir:~/Maildir
pop3_uidl_format = %g
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
"""


def dovecot_home(stack):
    """DIR/dovecot, or a private folder of the system's temporary directory where user mail
    cannot enter DIR (the mail processes run as mail)."""
    inside = stack.dir / "dovecot"
    if subprocess.run(["runuser", "-u", "mail", "--", "test", "-x", stack.dir]).returncode == 0:
        return inside
    return Path(tempfile.gettempdir()) / f"mail-dovecot-{stack.digest}"


def dovecot_conf(stack):
    return dovecot_home(stack) / "dovecot.conf"


def dovecot_running(stack):
    conf = dovecot_conf(stack)
    if not conf.exists():
        return False
    pid_file = Path(dovecot_home(stack) / "run" / "master.pid")
    try:
        return pid_alive(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def imap_answers(port):
    return answers(port, b"", lambda reply: reply.startswith(b"* OK"))


def make_dovecot_cert(tls):
    """A self-signed certificate for localhost and 127.0.0.1: tests trust it by its file."""
    if (tls / "cert.pem").exists():
        return
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "3650", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", tls / "key.pem", "-out", tls / "cert.pem"])
    (tls / "key.pem").chmod(0o600)


def start_dovecot(stack, password):
    home = dovecot_home(stack)
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    (home / "mail").mkdir(exist_ok=True)
    shutil.chown(home / "mail", "mail", "mail")
    make_dovecot_cert(home / "tls")
    p = stack.ports
    conf = DOVECOT_CONF.format(run=home / "run", state=home / "state", home=home,
                               digest=stack.digest, password=password, imap=p["imap"],
                               imaps=p["imaps"], pop3=p["pop3"], pop3s=p["pop3s"])
    path = dovecot_conf(stack)
    path.write_text(conf)
    path.chmod(0o600)  # it holds the password
    if dovecot_running(stack):
        run([DOVECOT, "-c", path, "reload"])  # the password may be new
    else:
        # In the foreground of a session of its own, as RabbitMQ (a forking Dovecot keeps
        # the output pipe of whoever started it open).
        spawn([DOVECOT, "-F", "-c", path], home / "server.log")
    if not wait_until(lambda: imap_answers(p["imap"]), TIMEOUT, 0.2):
        log_tail(home / "dovecot.log")
        raise StackError(f"Dovecot does not answer on port {p['imap']}")


def stop_dovecot(stack):
    if dovecot_running(stack):
        run([DOVECOT, "-c", dovecot_conf(stack), "stop"])
        wait_until(lambda: not dovecot_running(stack), TIMEOUT, 0.2)


# --- packages ---


def apt_busy():
    return any(proc_read(pid, "comm").strip() in ("apt-get", "dpkg") for pid, _ in live_processes())


def ensure_packages():
    # Another apt-get may be installing them right now: wait rather than fight over the lock.
    if not (rabbit_sbin() and pg_bin() and Path(DOVECOT).exists()
            and Path(PGBOUNCER).exists()) and apt_busy():
        print("stack: waiting for the running apt-get/dpkg to finish ...", flush=True)
        if not wait_until(lambda: not apt_busy(), 1200, 2):
            raise StackError("apt-get/dpkg still running after 20 minutes")
    wanted = {"rabbitmq-server": rabbit_sbin(), "postgresql": pg_bin(),
              "dovecot-imapd": Path(DOVECOT).exists(),
              "dovecot-pop3d": Path("/usr/lib/dovecot/pop3").exists(),
              "pgbouncer": Path(PGBOUNCER).exists()}  # for tests/support/pgbouncer.py
    missing = [package for package, found in wanted.items() if not found]
    if missing:
        print(f"stack: installing {' '.join(missing)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update"], env=env, timeout=900)
        run(["apt-get", "install", "-y", *missing], env=env, timeout=1800)
        if not (rabbit_sbin() and pg_bin() and Path(DOVECOT).exists()):
            raise StackError(f"{' '.join(missing)} installed, but its programs are not found")


BROWSER_PACKAGES = ("chromium", "fonts-ipafont-gothic")  # the screens' Japanese in a screenshot


def ensure_browser():
    """Debian's Chromium, for the browser tests (Playwright cannot download one here), and a
    Japanese font for `make screenshots`."""
    if shutil.which("chromium") and Path("/usr/share/fonts/opentype/ipafont-gothic").is_dir():
        return
    if apt_busy() and not wait_until(lambda: not apt_busy(), 1200, 2):
        raise StackError("apt-get/dpkg still running after 20 minutes")
    print(f"stack: installing {' '.join(BROWSER_PACKAGES)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env, timeout=900)
    run(["apt-get", "install", "-y", *BROWSER_PACKAGES], env=env, timeout=1800)
    if not shutil.which("chromium"):
        raise StackError("chromium installed, but /usr/bin/chromium is not found")


# --- commands ---


def write_env_file(stack, password):
    p = stack.ports
    path = stack.dir / "env"
    path.write_text(
        f"MAIL_AMQP_URL=amqp://mail:{password}@127.0.0.1:{p['amqp']}/mail\n"
        f"MAIL_POSTGRES_DSN=postgresql://mail:{password}@127.0.0.1:{p['postgres']}/mail\n"
        f"MAIL_RABBITMQ_MANAGEMENT_URL=http://127.0.0.1:{p['management']}/\n"
        f"MAIL_STACK_DIR={stack.dir}\n"
        f"MAIL_DOVECOT_IMAP_PORT={p['imap']}\n"
        f"MAIL_DOVECOT_IMAPS_PORT={p['imaps']}\n"
        f"MAIL_DOVECOT_POP3_PORT={p['pop3']}\n"
        f"MAIL_DOVECOT_POP3S_PORT={p['pop3s']}\n"
        f"MAIL_DOVECOT_PASSWORD={password}\n"
        f"MAIL_DOVECOT_CA_FILE={dovecot_home(stack) / 'tls' / 'cert.pem'}\n"
    )
    path.chmod(0o600)  # it holds the password


def cmd_up(stack, mode):
    ensure_packages()
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.dir.chmod(stack.dir.stat().st_mode | 0o711)  # user postgres must traverse DIR
    if (not stack.pg_home_record.exists()
            and subprocess.run(as_postgres("test", "-x", stack.dir)).returncode != 0):
        # A parent only root may enter: PostgreSQL's data go where postgres can reach them.
        home = stack.pg_home_outside
        home.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(home, "postgres", "postgres")
        home.chmod(0o700)
        stack.pg_home_record.write_text(f"{home}\n")
        stack.pgdata, stack.pgrun = home / "postgres", home / "postgres-run"
        print(f"stack: user postgres cannot enter {stack.dir}; its data live in {home}")
    stack.rabbit.mkdir(exist_ok=True)
    password = stack.password()
    held = set(RABBIT_PORTS) if rabbit_pid(stack) else set()
    held |= {"epmd"} if epmd_pids(stack) else set()
    held |= {"postgres"} if pg_running(stack) else set()
    held |= {"imap", "imaps", "pop3", "pop3s"} if dovecot_running(stack) else set()
    stack.choose_ports(mode, held)
    try:
        if not rabbit_pid(stack):
            start_rabbit(stack)
        start_postgres(stack)  # while RabbitMQ boots
        setup_pg_database(stack, password)
        start_dovecot(stack, password)
        wait_rabbit_ready(stack)
        setup_rabbit_users(stack, password)
    except StackError:
        print("stack: start failed, stopping what runs", file=sys.stderr)
        cmd_down(stack)
        raise
    write_env_file(stack, password)
    p, env_file = stack.ports, stack.dir / "env"
    print(f"RabbitMQ    amqp://mail@127.0.0.1:{p['amqp']}/mail")
    print(f"Console     http://127.0.0.1:{p['management']}/  user mail, password in {env_file}")
    print(f"PostgreSQL  postgresql://mail@127.0.0.1:{p['postgres']}/mail")
    print(f"Dovecot     imap://127.0.0.1:{p['imap']} pop3://127.0.0.1:{p['pop3']}  any user, "
          "the same password")


def cmd_down(stack):
    if stack.dir.is_dir():
        for node in reversed(stack.rabbit_nodes()):
            stop_rabbit(node)
        stop_epmd(stack)
        stop_postgres(stack)
        stop_dovecot(stack)


def cluster_members(stack):
    status = json.loads(ctl(stack, "cluster_status", "--formatter", "json"))
    return set(status.get("disk_nodes", [])) | set(status.get("ram_nodes", []))


def cmd_cluster_up(stack, mode, count):
    """A RabbitMQ cluster of `count` nodes on loopback, for the cluster tests: node 1 is the
    stack's own, the others join it (as 3.10 needs: stop_app, reset, join_cluster)."""
    ensure_packages()
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.rabbit.mkdir(exist_ok=True)
    (stack.dir / "rabbit-nodes").write_text(f"{count}\n")
    password = stack.password()
    nodes = stack.rabbit_nodes()
    names = ["epmd"] + [key for node in nodes for key in node.port_keys]
    held = {key for node in nodes if rabbit_pid(node) for key in node.port_keys}
    held |= {"epmd"} if epmd_pids(stack) else set()
    stack.choose_ports(mode, held, names)
    try:
        for node in nodes:  # they boot side by side
            node.rabbit.mkdir(exist_ok=True)
            if not rabbit_pid(node):
                start_rabbit(node)
        for node in nodes:
            wait_rabbit_ready(node)
        setup_rabbit_users(stack, password)
        members = cluster_members(stack)
        for node in nodes[1:]:
            if node.node not in members:
                ctl(node, "stop_app")
                ctl(node, "reset")
                ctl(node, "join_cluster", stack.node, timeout=TIMEOUT)
                ctl(node, "start_app", timeout=TIMEOUT)
                ctl(node, "await_startup", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 10)
    except StackError:
        print("stack: start failed, stopping what runs", file=sys.stderr)
        cmd_down(stack)
        raise
    urls = [f"amqp://mail:{password}@127.0.0.1:{node.ports['amqp']}/mail" for node in nodes]
    consoles = [f"http://127.0.0.1:{node.ports['management']}/" for node in nodes]
    path = stack.dir / "env"
    path.write_text(
        f"MAIL_AMQP_URL={','.join(urls)}\n"
        f"MAIL_RABBITMQ_MANAGEMENT_URLS={','.join(consoles)}\n"
        f"MAIL_RABBITMQ_NODES={','.join(node.node for node in nodes)}\n"
        f"MAIL_STACK_DIR={stack.dir}\n")
    path.chmod(0o600)
    for node, console in zip(nodes, consoles, strict=True):
        print(f"RabbitMQ    {node.node}  amqp://mail@127.0.0.1:{node.ports['amqp']}/mail  "
              f"console {console}")


def the_node(stack, n):
    nodes = stack.rabbit_nodes()
    if not 1 <= n <= len(nodes) or not stack.ports:
        raise StackError(f"no RabbitMQ node {n} in {stack.dir}")
    return nodes[n - 1]


def cmd_kill_node(stack, n):
    """SIGKILL of the node's whole process group: a crash, nothing written on the way out."""
    node = the_node(stack, n)
    pid = rabbit_pid(node)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if not wait_until(lambda: not group_alive(pid), 20):
            raise StackError(f"RabbitMQ node {n} does not die")
    (node.rabbit / "server.pid").unlink(missing_ok=True)


def cmd_start_node(stack, n):
    node = the_node(stack, n)
    if not rabbit_pid(node):
        start_rabbit(node)  # a member already: it rejoins its cluster on its own
    wait_rabbit_ready(node)


def cmd_restart_rabbitmq(stack):
    if not stack.ports:
        raise StackError(f"no stack in {stack.dir}: run `up` first")
    stop_rabbit(stack)
    start_rabbit(stack)  # same ports: they come from DIR/ports.json
    wait_rabbit_ready(stack)


def cmd_restart_postgres(stack):
    if not stack.ports:
        raise StackError(f"no stack in {stack.dir}: run `up` first")
    stop_postgres(stack)  # fast: every client's connection is dropped, as a fail-over does
    start_postgres(stack)


def cmd_purge(stack):
    cmd_down(stack)
    if stack.pg_home_record.exists():
        outside = Path(stack.pg_home_record.read_text().strip())
        if outside == stack.pg_home_outside:  # only the folder this stack made
            shutil.rmtree(outside, ignore_errors=True)
    outside = Path(tempfile.gettempdir()) / f"mail-dovecot-{stack.digest}"
    shutil.rmtree(outside, ignore_errors=True)
    shutil.rmtree(stack.dir, ignore_errors=True)


def cmd_status(stack):
    rabbit = bool(stack.ports) and amqp_answers(stack.ports["amqp"])
    postgres = bool(stack.ports and pg_bin()) and pg_answers(stack.ports["postgres"])
    print(f"RabbitMQ    {'answers' if rabbit else 'does not answer'}")
    dovecot = bool(stack.ports) and imap_answers(stack.ports["imap"])
    print(f"PostgreSQL  {'answers' if postgres else 'does not answer'}")
    print(f"Dovecot     {'answers' if dovecot else 'does not answer'}")
    return 0 if rabbit and postgres and dovecot else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command",
                        choices=("up", "down", "restart-rabbitmq", "restart-postgres", "status",
                                 "purge", "browser", "cluster-up", "kill-node", "stop-node",
                                 "start-node"))
    parser.add_argument("--dir", required=True, help="folder holding the stack's data")
    parser.add_argument("--ports", choices=("default", "free"), default="default")
    parser.add_argument("--nodes", type=int, default=3, help="cluster-up: how many nodes")
    parser.add_argument("--node", type=int, default=1, help="kill/stop/start-node: which")
    args = parser.parse_args()
    stack = Stack(args.dir)
    try:
        if os.geteuid() != 0:
            raise StackError("must run as root (it runs the servers as user postgres)")
        # DIR goes into env lines, into the postgres -o option string and into a socket path.
        if not re.fullmatch(r"[\w./+-]+", str(stack.dir)) or len(str(stack.pgrun)) > 80:
            raise StackError("--dir must be a short path of letters, digits and . _ + - /")
        if args.command == "browser":
            ensure_browser()
        elif args.command == "up":
            cmd_up(stack, args.ports)
        elif args.command == "down":
            cmd_down(stack)
        elif args.command == "cluster-up":
            cmd_cluster_up(stack, args.ports, args.nodes)
        elif args.command == "kill-node":
            cmd_kill_node(stack, args.node)
        elif args.command == "stop-node":
            stop_rabbit(the_node(stack, args.node))
        elif args.command == "start-node":
            cmd_start_node(stack, args.node)
        elif args.command == "restart-rabbitmq":
            cmd_restart_rabbitmq(stack)
        elif args.command == "restart-postgres":
            cmd_restart_postgres(stack)
        elif args.command == "purge":
            cmd_purge(stack)
        else:
            return cmd_status(stack)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
