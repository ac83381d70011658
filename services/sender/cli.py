"""`python -m services.sender [serve|migrate]`."""

from services.sender.main import MIGRATIONS, SERVICE, serve
from services.sender.settings import SenderSettings
from shared.runtime import serve_or_migrate


def main(argv: list[str] | None = None) -> None:
    serve_or_migrate(argv, service=SERVICE, settings_class=SenderSettings,
                     migrations=MIGRATIONS, serve=serve,
                     serve_help="send the jobs of every account")
