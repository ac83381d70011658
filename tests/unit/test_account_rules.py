import pytest

from services.config_svc.rules import check_account
from shared.addresses import check_address, check_host, check_hostname

BASE = {
    "smtp_auth": False, "pop_before_smtp": False, "personal": False, "is_default": False,
    "smtp_port": 587, "tls": "starttls",
}


def test_a_plain_account_has_no_errors_or_warnings() -> None:
    assert check_account(BASE) == ([], [])


def test_credentials_without_tls_are_accepted_with_a_warning() -> None:
    errors, warnings = check_account({**BASE, "tls": "none", "smtp_auth": True,
                                      "smtp_username": "u", "smtp_password_set": True})
    assert errors == []
    assert warnings == ["tls is none: the login and password will cross the network unencrypted"]


def test_pop_before_smtp_needs_every_pop_field() -> None:
    errors, _ = check_account({**BASE, "pop_before_smtp": True})
    assert [e.field for e in errors] == ["pop_host", "pop_port", "pop_username", "pop_password"]


def test_a_bounce_mailbox_needs_its_login_and_a_verp_base_fits_the_token() -> None:
    errors, _ = check_account({**BASE, "bounce_protocol": "imap"})
    assert [e.field for e in errors] == ["bounce_host", "bounce_username", "bounce_password"]
    full = {**BASE, "bounce_protocol": "pop3", "bounce_host": "pop.example.com",
            "bounce_username": "u", "bounce_password_set": True, "bounce_tls": "none"}
    errors, warnings = check_account(full)
    assert errors == [] and any("bounce_tls is none" in w for w in warnings)
    for base, wrong in (("bounces@example.com", False), ("a+b@example.com", True),
                        ("x" * 31 + "@example.com", False), ("x" * 32 + "@example.com", True)):
        errors, _ = check_account({**BASE, "bounce_address": base})
        assert bool(errors) is wrong, base


@pytest.mark.parametrize("address", ["山田@例え.jp", "news@shop.example.com", "a.b+c@x.co.jp"])
def test_international_addresses_are_accepted(address: str) -> None:
    assert check_address(address)


@pytest.mark.parametrize(
    "address",
    ["Shop <a@x.com>", '"a b"@x.com', "a@[192.0.2.1]", "a@x.com\n", "a\u200b@x.com",
     "a@x.com, b@y.com", "plain"],
)
def test_addresses_that_could_smuggle_or_mislead_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        check_address(address)


def test_hosts_and_host_names() -> None:
    assert check_host("smtp.example.com") == "smtp.example.com"
    assert check_host("192.0.2.10") == "192.0.2.10"
    for bad in ("", "a b", "a\r\nb", "a\x00b"):
        with pytest.raises(ValueError):
            check_host(bad)
    assert check_hostname("mail-01.example.com")
    for bad in ("-bad.example.com", "bad_.example.com", "a..b", "x" * 64 + ".com"):
        with pytest.raises(ValueError):
            check_hostname(bad)
