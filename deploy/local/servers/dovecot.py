"""Dovecot (IMAP and POP3: the accounts' bounce mailboxes), private to the stack."""

import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import (
    TIMEOUT,
    StackError,
    answers,
    log_tail,
    pid_alive,
    run,
    spawn,
    wait_until,
    write_secret,
)

DOVECOT = "/usr/sbin/dovecot"
DOVECOT_POP3 = "/usr/lib/dovecot/pop3"

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
    return dovecot_home_outside(stack)


def dovecot_home_outside(stack):
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


def write_dovecot_conf(stack, password):
    """Its folder, certificate and configuration; returns the folder."""
    home = dovecot_home(stack)
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    (home / "mail").mkdir(exist_ok=True)
    shutil.chown(home / "mail", "mail", "mail")
    make_dovecot_cert(home / "tls")
    p = stack.ports
    conf = DOVECOT_CONF.format(run=home / "run", state=home / "state", home=home,
                               digest=stack.digest, password=password, imap=p["imap"],
                               imaps=p["imaps"], pop3=p["pop3"], pop3s=p["pop3s"])
    write_secret(home / "dovecot.conf", conf)
    return home


def start_dovecot(stack, password):
    home = write_dovecot_conf(stack, password)
    path, p = home / "dovecot.conf", stack.ports
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
