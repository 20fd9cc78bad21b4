"""``PKG.MODULE:ATTR`` references: the one form, and a typed error for every wrong one."""

from __future__ import annotations

import pytest

from taskwarden import Application, ApplicationNotFound, ConfigurationError, load_application


def test_a_reference_names_an_application_and_gets_its_name() -> None:
    app = load_application("tests.fleet.app_module:application")
    assert isinstance(app, Application)
    assert app.services == {"greeting": "from the fleet"}
    assert app.name == "tests.fleet.app_module:application"


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("tests.fleet.app_module", "PKG.MODULE:ATTR"),
        (":application", "PKG.MODULE:ATTR"),
        ("tests.fleet.app-module:application", "PKG.MODULE:ATTR"),
        ("tests.fleet.nowhere:application", "cannot be imported"),
        ("tests.fleet.app_module:missing", "has no attribute 'missing'"),
        ("tests.fleet.app_module:not_an_application", "wrap it: not_an_application"),
        ("tests.fleet.app_module:GREETING", "names a str, not a taskwarden.Application"),
    ],
)
def test_a_wrong_reference_says_what_is_wrong(reference: str, says: str) -> None:
    with pytest.raises(ApplicationNotFound) as caught:
        load_application(reference)
    assert says in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
