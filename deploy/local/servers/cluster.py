"""A RabbitMQ cluster on loopback for the cluster tests, and crashes and stops of its nodes."""

import json
import signal

from .commands import down_on_failure, ensure_packages
from .common import TIMEOUT, StackError, write_secret
from .rabbitmq import (
    await_startup,
    ctl,
    epmd_pids,
    kill_group,
    rabbit_nodes,
    rabbit_pid,
    setup_rabbit_users,
    start_rabbit,
    stop_rabbit,
    wait_rabbit_ready,
)


def cluster_members(stack):
    status = json.loads(ctl(stack, "cluster_status", "--formatter", "json"))
    return set(status.get("disk_nodes", [])) | set(status.get("ram_nodes", []))


def choose_cluster_ports(stack, mode, nodes):
    names = ["epmd"] + [key for node in nodes for key in node.port_keys]
    held = {key for node in nodes if rabbit_pid(node) for key in node.port_keys}
    held |= {"epmd"} if epmd_pids(stack) else set()
    stack.choose_ports(mode, held, names)


def join_nodes(stack, nodes):
    """Node 1 is the stack's own; the others join it (as 3.10 needs: stop_app, reset,
    join_cluster)."""
    members = cluster_members(stack)
    for node in nodes[1:]:
        if node.node not in members:
            ctl(node, "stop_app")
            ctl(node, "reset")
            ctl(node, "join_cluster", stack.node, timeout=TIMEOUT)
            ctl(node, "start_app", timeout=TIMEOUT)
            await_startup(node)


def start_cluster(stack, nodes, password):
    for node in nodes:  # they boot side by side
        node.rabbit.mkdir(exist_ok=True)
        if not rabbit_pid(node):
            start_rabbit(node)
    for node in nodes:
        wait_rabbit_ready(node)
    setup_rabbit_users(stack, password)
    join_nodes(stack, nodes)


def cluster_up(stack, mode, count):
    """A RabbitMQ cluster of `count` nodes on loopback, for the cluster tests: node 1 is the
    stack's own, the others join it."""
    ensure_packages()
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.rabbit.mkdir(exist_ok=True)
    (stack.dir / "rabbit-nodes").write_text(f"{count}\n")
    password = stack.password()
    nodes = rabbit_nodes(stack)
    choose_cluster_ports(stack, mode, nodes)
    with down_on_failure(stack):
        start_cluster(stack, nodes, password)
    urls = [f"amqp://mail:{password}@127.0.0.1:{node.ports['amqp']}/mail" for node in nodes]
    consoles = [f"http://127.0.0.1:{node.ports['management']}/" for node in nodes]
    write_secret(
        stack.dir / "env",
        f"MAIL_AMQP_URL={','.join(urls)}\n"
        f"MAIL_RABBITMQ_MANAGEMENT_URLS={','.join(consoles)}\n"
        f"MAIL_RABBITMQ_NODES={','.join(node.node for node in nodes)}\n"
        f"MAIL_STACK_DIR={stack.dir}\n",
    )
    for node, console in zip(nodes, consoles, strict=True):
        print(f"RabbitMQ    {node.node}  amqp://mail@127.0.0.1:{node.ports['amqp']}/mail  "
              f"console {console}")


def the_node(stack, n):
    nodes = rabbit_nodes(stack)
    if not 1 <= n <= len(nodes) or not stack.ports:
        raise StackError(f"no RabbitMQ node {n} in {stack.dir}")
    return nodes[n - 1]


def kill_node(stack, n):
    """SIGKILL of the node's whole process group: a crash, nothing written on the way out."""
    node = the_node(stack, n)
    pid = rabbit_pid(node)
    if pid and not kill_group(pid, signal.SIGKILL, 20):
        raise StackError(f"RabbitMQ node {n} does not die")
    (node.rabbit / "server.pid").unlink(missing_ok=True)


def stop_node(stack, n):
    stop_rabbit(the_node(stack, n))


def start_node(stack, n):
    node = the_node(stack, n)
    if not rabbit_pid(node):
        start_rabbit(node)  # a member already: it rejoins its cluster on its own
    wait_rabbit_ready(node)
