"""RabbitMQ: the stack's own node, the nodes `cluster-up` adds, and their shared epmd."""

import contextlib
import json
import os
import shutil
import signal
import sys
import time

from .common import (
    TIMEOUT,
    StackError,
    answers,
    group_alive,
    installed,
    live_processes,
    log_tail,
    pid_alive,
    proc_read,
    run,
    spawn,
    wait_until,
)
from .layout import RABBIT_PORTS

RABBIT_SBIN = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"


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


def rabbit_nodes(stack):
    """The RabbitMQ nodes: this stack's own, then those `cluster-up` added."""
    try:
        count = int((stack.dir / "rabbit-nodes").read_text())
    except (OSError, ValueError):
        count = 1
    return [stack] + [Node(stack, n) for n in range(2, count + 1)]


def rabbit_sbin():
    return installed(RABBIT_SBIN + "/rabbitmq-server")


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


def write_rabbit_config(stack):
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


def start_rabbit(stack):
    """Start the node in the background in its own session (setsid) and record its pid."""
    write_rabbit_config(stack)
    start_epmd(stack)
    # The real script, not /usr/sbin/rabbitmq-server which switches to user rabbitmq.
    r = stack.rabbit
    proc = spawn(
        [rabbit_sbin() / "rabbitmq-server"], r / "server.log", env=rabbit_env(stack), cwd=r
    )
    (r / "server.pid").write_text(f"{proc.pid}\n")


def await_startup(stack):
    ctl(stack, "await_startup", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 10)


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
    await_startup(stack)


def setup_rabbit_users(stack, password):
    """Idempotent: vhost mail, administrator user mail with all rights on it, no guest."""
    ctl(stack, "add_vhost", "mail")
    users = {user["user"] for user in json.loads(ctl(stack, "list_users", "--formatter", "json"))}
    ctl(stack, "change_password" if "mail" in users else "add_user", "mail", password)
    ctl(stack, "set_user_tags", "mail", "administrator")  # the management console login
    ctl(stack, "set_permissions", "-p", "mail", "mail", ".*", ".*", ".*")
    if "guest" in users:
        ctl(stack, "delete_user", "guest")


def kill_group(pid, sig, timeout):
    """Signal the process group of pid; True once it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    return wait_until(lambda: not group_alive(pid), timeout)


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
                stopped = kill_group(pid, sig, 20)
        if not stopped:
            raise StackError(f"RabbitMQ process group {pid} does not stop")
    (stack.rabbit / "server.pid").unlink(missing_ok=True)


def stop_epmd(stack):
    for pid in epmd_pids(stack):
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda pid=pid: not pid_alive(pid), 5):
            os.kill(pid, signal.SIGKILL)
