import importlib
import pkgutil
import re
from pathlib import Path

import services
from shared.settings import ServiceSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def all_settings_classes() -> list[type[ServiceSettings]]:
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if module.name.endswith(".settings"):
            importlib.import_module(module.name)
    found, todo = [ServiceSettings], [ServiceSettings]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def test_the_readme_settings_table_lists_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"^\|\s*`(MAIL_[A-Z0-9_]+)`", README.read_text(), re.MULTILINE))
    declared = {
        f"MAIL_{name.upper()}"
        for cls in all_settings_classes()
        for name in cls.model_fields
    }
    assert declared - documented == set(), "settings missing from the README table"
    assert documented - declared == set(), "README table rows with no setting behind them"


def test_the_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:800]
    assert "make run" in head
    assert "make test" in head
