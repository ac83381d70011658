"""`make run`'s choices: loopback only, and a port left in TIME_WAIT by the stack stopped a
moment ago is not taken (checked the way the servers bind)."""

import socket

from deploy.local.run import free_port, service_env


def port_in_time_wait() -> int:
    """A port whose listener (with SO_REUSEADDR, as uvicorn's) is gone and whose accepted
    connection the server closed first: the kernel keeps it in TIME_WAIT, as after a Ctrl-C
    of a stack that had clients."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: TIME_WAIT is on its port
        client.recv(1)
        client.close()
    return port


def test_a_port_in_time_wait_is_free_for_a_server_that_binds_with_reuseaddr() -> None:
    port = port_in_time_wait()
    with socket.socket() as plain:
        try:
            plain.bind(("127.0.0.1", port))
            plain_could = True
        except OSError:
            plain_could = False
    assert not plain_could, "no TIME_WAIT was made: nothing was tested"
    assert free_port(port) == port


def test_a_port_really_in_use_is_replaced() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert free_port(port) != port


def test_services_listen_on_loopback_under_make_run() -> None:
    env = service_env({"MAIL_HTTP_HOST": "0.0.0.0", "OTHER": "x"}, 8080)  # noqa: S104
    assert (env["MAIL_HTTP_HOST"], env["MAIL_HTTP_PORT"], env["OTHER"]) == (
        "127.0.0.1", "8080", "x")
