"""The stack's commands over all its servers: up, down, status, restart-*, purge."""

import contextlib
import shutil
import sys
from pathlib import Path

from .common import StackError, apt_install, wait_for_apt, write_secret
from .dovecot import (
    DOVECOT,
    DOVECOT_POP3,
    dovecot_home,
    dovecot_home_outside,
    dovecot_running,
    imap_answers,
    start_dovecot,
    stop_dovecot,
)
from .layout import RABBIT_PORTS
from .pgbouncer import pgbouncer_installed
from .postgres import (
    pg_answers,
    pg_bin,
    pg_running,
    place_pg_home,
    setup_pg_database,
    start_postgres,
    stop_postgres,
)
from .rabbitmq import (
    amqp_answers,
    epmd_pids,
    rabbit_nodes,
    rabbit_pid,
    rabbit_sbin,
    setup_rabbit_users,
    start_rabbit,
    stop_epmd,
    stop_rabbit,
    wait_rabbit_ready,
)


def ensure_packages():
    # Another apt-get may be installing them right now: wait rather than fight over the lock.
    if not (rabbit_sbin() and pg_bin() and Path(DOVECOT).exists() and pgbouncer_installed()):
        wait_for_apt("stack: waiting for the running apt-get/dpkg to finish ...")
    wanted = {"rabbitmq-server": rabbit_sbin(), "postgresql": pg_bin(),
              "dovecot-imapd": Path(DOVECOT).exists(),
              "dovecot-pop3d": Path(DOVECOT_POP3).exists(),
              "pgbouncer": pgbouncer_installed()}  # for tests/support/pgbouncer.py
    missing = [package for package, found in wanted.items() if not found]
    if missing:
        apt_install(missing)
        if not (rabbit_sbin() and pg_bin() and Path(DOVECOT).exists()):
            raise StackError(f"{' '.join(missing)} installed, but its programs are not found")


@contextlib.contextmanager
def down_on_failure(stack):
    try:
        yield
    except StackError:
        print("stack: start failed, stopping what runs", file=sys.stderr)
        down(stack)
        raise


def write_env_file(stack, password):
    p = stack.ports
    write_secret(
        stack.dir / "env",
        f"MAIL_AMQP_URL=amqp://mail:{password}@127.0.0.1:{p['amqp']}/mail\n"
        f"MAIL_POSTGRES_DSN=postgresql://mail:{password}@127.0.0.1:{p['postgres']}/mail\n"
        f"MAIL_RABBITMQ_MANAGEMENT_URL=http://127.0.0.1:{p['management']}/\n"
        f"MAIL_STACK_DIR={stack.dir}\n"
        f"MAIL_DOVECOT_IMAP_PORT={p['imap']}\n"
        f"MAIL_DOVECOT_IMAPS_PORT={p['imaps']}\n"
        f"MAIL_DOVECOT_POP3_PORT={p['pop3']}\n"
        f"MAIL_DOVECOT_POP3S_PORT={p['pop3s']}\n"
        f"MAIL_DOVECOT_PASSWORD={password}\n"
        f"MAIL_DOVECOT_CA_FILE={dovecot_home(stack) / 'tls' / 'cert.pem'}\n",
    )


def prepare_dir(stack):
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.dir.chmod(stack.dir.stat().st_mode | 0o711)  # user postgres must traverse DIR
    place_pg_home(stack)
    stack.rabbit.mkdir(exist_ok=True)


def held_ports(stack):
    """The ports our own servers, already running, listen on: kept even though taken."""
    held = set(RABBIT_PORTS) if rabbit_pid(stack) else set()
    held |= {"epmd"} if epmd_pids(stack) else set()
    held |= {"postgres"} if pg_running(stack) else set()
    held |= {"imap", "imaps", "pop3", "pop3s"} if dovecot_running(stack) else set()
    return held


def start_servers(stack, password):
    if not rabbit_pid(stack):
        start_rabbit(stack)
    start_postgres(stack)  # while RabbitMQ boots
    setup_pg_database(stack, password)
    start_dovecot(stack, password)
    wait_rabbit_ready(stack)
    setup_rabbit_users(stack, password)


def up(stack, mode):
    ensure_packages()
    prepare_dir(stack)
    password = stack.password()
    stack.choose_ports(mode, held_ports(stack))
    with down_on_failure(stack):
        start_servers(stack, password)
    write_env_file(stack, password)
    p, env_file = stack.ports, stack.dir / "env"
    print(f"RabbitMQ    amqp://mail@127.0.0.1:{p['amqp']}/mail")
    print(f"Console     http://127.0.0.1:{p['management']}/  user mail, password in {env_file}")
    print(f"PostgreSQL  postgresql://mail@127.0.0.1:{p['postgres']}/mail")
    print(f"Dovecot     imap://127.0.0.1:{p['imap']} pop3://127.0.0.1:{p['pop3']}  any user, "
          "the same password")


def down(stack):
    if stack.dir.is_dir():
        for node in reversed(rabbit_nodes(stack)):
            stop_rabbit(node)
        stop_epmd(stack)
        stop_postgres(stack)
        stop_dovecot(stack)


def require_up(stack):
    if not stack.ports:
        raise StackError(f"no stack in {stack.dir}: run `up` first")


def restart_rabbitmq(stack):
    require_up(stack)
    stop_rabbit(stack)
    start_rabbit(stack)  # same ports: they come from DIR/ports.json
    wait_rabbit_ready(stack)


def restart_postgres(stack):
    require_up(stack)
    stop_postgres(stack)  # fast: every client's connection is dropped, as a fail-over does
    start_postgres(stack)


def purge(stack):
    down(stack)
    if stack.pg_home_record.exists():
        outside = Path(stack.pg_home_record.read_text().strip())
        if outside == stack.pg_home_outside:  # only the folder this stack made
            shutil.rmtree(outside, ignore_errors=True)
    shutil.rmtree(dovecot_home_outside(stack), ignore_errors=True)
    shutil.rmtree(stack.dir, ignore_errors=True)


def status(stack):
    rabbit = bool(stack.ports) and amqp_answers(stack.ports["amqp"])
    postgres = bool(stack.ports and pg_bin()) and pg_answers(stack.ports["postgres"])
    print(f"RabbitMQ    {'answers' if rabbit else 'does not answer'}")
    dovecot = bool(stack.ports) and imap_answers(stack.ports["imap"])
    print(f"PostgreSQL  {'answers' if postgres else 'does not answer'}")
    print(f"Dovecot     {'answers' if dovecot else 'does not answer'}")
    return 0 if rabbit and postgres and dovecot else 1
