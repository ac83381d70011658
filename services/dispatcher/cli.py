"""`python -m services.dispatcher [serve|migrate]`."""

from services.dispatcher.main import MIGRATIONS, SERVICE, serve
from services.dispatcher.settings import DispatcherSettings
from shared.runtime import serve_or_migrate


def main(argv: list[str] | None = None) -> None:
    serve_or_migrate(argv, service=SERVICE, settings_class=DispatcherSettings,
                     migrations=MIGRATIONS, serve=serve,
                     serve_help="consume delivery requests and serve their status")
