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

This file is the command line; each server's code is in servers/, one module each.
"""

import argparse
import os
import re
import sys

if __package__:  # imported as deploy.local.stack
    from .servers import browser, cluster, commands, common, layout
else:  # run as a script: sys.path[0] is deploy/local
    from servers import browser, cluster, commands, common, layout

# Each verb: what it does with the stack and the parsed arguments; an int is the exit code.
COMMANDS = {
    "up": lambda stack, args: commands.up(stack, args.ports),
    "down": lambda stack, args: commands.down(stack),
    "restart-rabbitmq": lambda stack, args: commands.restart_rabbitmq(stack),
    "restart-postgres": lambda stack, args: commands.restart_postgres(stack),
    "status": lambda stack, args: commands.status(stack),
    "purge": lambda stack, args: commands.purge(stack),
    "browser": lambda stack, args: browser.ensure_browser(),
    "cluster-up": lambda stack, args: cluster.cluster_up(stack, args.ports, args.nodes),
    "kill-node": lambda stack, args: cluster.kill_node(stack, args.node),
    "stop-node": lambda stack, args: cluster.stop_node(stack, args.node),
    "start-node": lambda stack, args: cluster.start_node(stack, args.node),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=tuple(COMMANDS))
    parser.add_argument("--dir", required=True, help="folder holding the stack's data")
    parser.add_argument("--ports", choices=("default", "free"), default="default")
    parser.add_argument("--nodes", type=int, default=3, help="cluster-up: how many nodes")
    parser.add_argument("--node", type=int, default=1, help="kill/stop/start-node: which")
    return parser.parse_args()


def main():
    args = parse_args()
    stack = layout.Stack(args.dir)
    try:
        if os.geteuid() != 0:
            raise common.StackError("must run as root (it runs the servers as user postgres)")
        # DIR goes into env lines, into the postgres -o option string and into a socket path.
        if not re.fullmatch(r"[\w./+-]+", str(stack.dir)) or len(str(stack.pgrun)) > 80:
            raise common.StackError("--dir must be a short path of letters, digits and . _ + - /")
        return COMMANDS[args.command](stack, args) or 0
    except common.StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
