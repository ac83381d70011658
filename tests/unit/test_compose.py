import email
import email.policy
import re
from dataclasses import replace
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest

from services.sender.delivery import headers as headers_module
from services.sender.delivery.compose import (
    ComposedMail,
    Composer,
    DeliveryContent,
    check_custom_header,
    envelope_address,
)

BASE = DeliveryContent(
    from_address="news@shop.example.com", from_name="Example Shop", reply_to=None,
    subject="Hello {{name}}", text="Dear {{name}},\nyour plan: {{plan}}\n", html=None,
    headers={},
)
VARS = {"plan": "gold"}


def compose(content: DeliveryContent = BASE, *, to: str = "a@example.com",
            name: str | None = "Alice", vars: dict[str, str] | None = None) -> ComposedMail:
    return Composer(content).compose(email=to, name=name, vars=VARS if vars is None else vars)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def header_names(data: bytes) -> list[str]:
    """The names of the header fields on the wire (continuation lines belong to the field)."""
    return [line.split(b":", 1)[0].decode() for line in header_block(data).split(b"\r\n")
            if not line.startswith((b" ", b"\t"))]


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def assert_wire_format(data: bytes) -> None:
    """CRLF line ends only, no line over 998 bytes."""
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


# -- structure ------------------------------------------------------------------------------


def test_text_only() -> None:
    mail = compose()
    message = parse(mail.data)
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert lf(message.get_content()) == "Dear Alice,\nyour plan: gold\n"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert message["MIME-Version"] == "1.0"
    assert_wire_format(mail.data)


def test_html_only() -> None:
    mail = compose(replace(BASE, text=None, html="<p>Dear {{name}}</p>"))
    message = parse(mail.data)
    assert message.get_content_type() == "text/html"
    assert lf(message.get_content()).rstrip("\n") == "<p>Dear Alice</p>"
    assert_wire_format(mail.data)


def test_text_and_html_make_multipart_alternative_with_utf8_bodies() -> None:
    content = replace(
        BASE, subject="{{name}} 様 11月のお知らせ", from_name="配信 チーム",
        text="{{name}} 様\nプラン: {{plan}}\n", html="<p>{{name}} 様 {{plan}}</p>\n")
    mail = compose(content, name="山田 太郎")
    message = parse(mail.data)
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert lf(text.get_content()) == "山田 太郎 様\nプラン: gold\n"
    assert lf(html.get_content()) == "<p>山田 太郎 様 gold</p>\n"
    assert message["Subject"] == "山田 太郎 様 11月のお知らせ"
    assert message["From"].addresses[0].display_name == "配信 チーム"
    assert message["From"].addresses[0].addr_spec == "news@shop.example.com"
    assert message["To"].addresses[0].display_name == "山田 太郎"
    assert message["To"].addresses[0].addr_spec == "a@example.com"
    assert mail.data.isascii()  # RFC 2047 headers, base64 bodies
    assert not mail.needs_smtputf8
    assert_wire_format(mail.data)


def test_reply_to_present_and_absent() -> None:
    assert "Reply-To" not in parse(compose().data)
    message = parse(compose(replace(BASE, reply_to="help@example.com")).data)
    assert message["Reply-To"] == "help@example.com"


def test_recipient_without_name() -> None:
    content = replace(BASE, subject="Hello", text="Hi {{email}}")
    message = parse(compose(content, name=None).data)
    assert message["To"] == "a@example.com"
    assert message.get_content().startswith("Hi a@example.com")


def test_message_id_date_and_the_other_headers() -> None:
    mail = compose()
    message = parse(mail.data)
    assert re.fullmatch(r"<[^<>@\s]+@shop\.example\.com>", mail.message_id)
    assert message["Message-ID"] == mail.message_id
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert header_names(mail.data) == [
        "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
        "Content-Transfer-Encoding"]
    assert compose().message_id != mail.message_id


def test_custom_headers_present() -> None:
    headers = {"X-Campaign": "2026-11", "X-Label": "秋のセール",
               "List-Unsubscribe": "<mailto:u@example.com>, <https://example.com/u?x=1>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    message = parse(compose(replace(BASE, headers=headers)).data)
    for name, value in headers.items():
        assert message[name] == value


@pytest.mark.parametrize("name", ["Bcc", "Received", "Content-Type", "From", "X-", "X-Bad Name",
                                  "X-Bad:Name", "X-Bad\r\nBcc", "Lis-Unsubscribe"])
def test_disallowed_custom_header_refused(name: str) -> None:
    with pytest.raises(ValueError, match="header"):
        Composer(replace(BASE, headers={name: "x"}))
    with pytest.raises(ValueError):
        check_custom_header(name, "x")


def test_same_custom_header_twice_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Composer(replace(BASE, headers={"X-A": "1", "x-a": "2"}))


# -- placeholders ---------------------------------------------------------------------------


def test_placeholders_filled_per_recipient_html_escaped_only_in_html() -> None:
    composer = Composer(replace(
        BASE, subject="{{plan}} for {{name}}", text="plan {{plan}}", html="<p>{{plan}}</p>"))
    first = parse(composer.compose(email="a@example.com", name="A", vars={"plan": "<b>"}).data)
    second = parse(composer.compose(email="b@example.com", name="B", vars={"plan": "x"}).data)
    assert first["Subject"] == "<b> for A"
    assert second["Subject"] == "x for B"
    text, html = first.iter_parts()
    assert text.get_content().rstrip() == "plan <b>"
    assert html.get_content().rstrip() == "<p>&lt;b&gt;</p>"
    text, html = second.iter_parts()
    assert text.get_content().rstrip() == "plan x"
    assert html.get_content().rstrip() == "<p>x</p>"


def test_text_without_placeholders_is_reused() -> None:
    composer = Composer(replace(BASE, subject="Fixed", text="Fixed body\n"))
    for address in ("a@example.com", "b@example.com"):
        message = parse(composer.compose(email=address, name=None, vars={}).data)
        assert message["Subject"] == "Fixed"
        assert message["To"] == address
        assert lf(message.get_content()) == "Fixed body\n"


# -- header injection -----------------------------------------------------------------------

PAYLOADS = [
    "a\r\nBcc: victim@example.com",
    "a\nBcc: victim@example.com",
    "a\rBcc: victim@example.com",
    "a\u2028Bcc: victim@example.com",
    "=?utf-8?q?a=0D=0ABcc:_victim@example.com?=",
    "=?utf-8?b?YQ0KQmNjOiB2aWN0aW1AZXhhbXBsZS5jb20=?=",  # the same, in B encoding
    # long enough to be folded: the email package's refolding is what decoded them (CVE-2024-6923)
    "=?utf-8?q?a=0D=0ABcc:_victim@example.com?= " + "x" * 100,
    "件名 =?utf-8?q?a=0D=0ABcc:_victim@example.com?= " + "長い" * 40,
]


def _injection_cases() -> list[tuple[str, DeliveryContent, str | None, dict[str, str]]]:
    cases = []
    for i, payload in enumerate(PAYLOADS):
        cases += [
            (f"subject-{i}", replace(BASE, subject=payload), "Alice", VARS),
            (f"from-name-{i}", replace(BASE, from_name=payload), "Alice", VARS),
            (f"name-{i}", BASE, payload, VARS),
            (f"var-in-subject-{i}", replace(BASE, subject="Hi {{plan}}"), "Alice",
             {"plan": payload}),
            (f"custom-header-{i}", replace(BASE, headers={"X-Campaign": payload}), "Alice",
             VARS),
        ]
    return cases


@pytest.mark.parametrize(("case", "content", "name", "vars"), _injection_cases(),
                         ids=[case[0] for case in _injection_cases()])
def test_header_injection_never_adds_a_header_line(
        case: str, content: DeliveryContent, name: str | None, vars: dict[str, str]) -> None:
    try:
        mail = compose(content, name=name, vars=vars)
    except ValueError:
        return  # refused: nothing goes on the wire
    block = header_block(mail.data)
    assert not re.search(rb"(?im)^bcc:", block)
    expected = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                *content.headers, "Content-Type", "Content-Transfer-Encoding"]
    assert header_names(mail.data) == expected
    assert_wire_format(mail.data)
    message = parse(mail.data)
    assert "Bcc" not in message
    for field in ("From", "To", "Subject", *content.headers):
        assert "\r" not in str(message[field])
        assert "\n" not in str(message[field])


@pytest.mark.parametrize("subject", ["a\r\nBcc: victim@example.com", "a\nBcc: v@example.com",
                                     "a\r\n\r\nbody"])
def test_final_check_refuses_what_the_value_checks_would_miss(
        monkeypatch: pytest.MonkeyPatch, subject: str) -> None:
    monkeypatch.setattr(headers_module, "_checked", lambda what, value: value)
    with pytest.raises(ValueError, match="header block"):
        compose(replace(BASE, subject=subject))


def test_encoded_word_lookalike_is_kept_as_literal_text() -> None:
    payload = "=?utf-8?q?a=0D=0ABcc:_victim@example.com?="
    message = parse(compose(replace(BASE, subject=payload), name=payload).data)
    assert message["Subject"] == payload
    assert message["To"].addresses[0].display_name == payload


@pytest.mark.parametrize("address", ["a@example.com\r\nBcc: victim@example.com",
                                     "a@example.com, victim@example.com",
                                     "Victim <v@example.com>", "a b@example.com", "no-at-sign"])
def test_bad_addresses_refused(address: str) -> None:
    with pytest.raises(ValueError):
        compose(to=address)
    with pytest.raises(ValueError):
        Composer(replace(BASE, from_address=address))
    with pytest.raises(ValueError):
        Composer(replace(BASE, reply_to=address))


# -- addresses ------------------------------------------------------------------------------


def test_international_recipient_needs_smtputf8_and_parses_back() -> None:
    mail = compose(to="山田@例え.jp", name="山田 太郎")
    assert mail.needs_smtputf8
    assert_wire_format(mail.data)
    message = parse(mail.data)
    assert str(message["To"]) == "山田 太郎 <山田@例え.jp>"
    # The bytes are UTF-8 (RFC 6532): decoded, the email package reads the address itself.
    decoded = email.message_from_string(mail.data.decode("utf-8"), policy=email.policy.default)
    address = decoded["To"].addresses[0]
    assert (address.username, address.domain) == ("山田", "例え.jp")
    assert address.display_name == "山田 太郎"


def test_international_domain_with_ascii_local_part_is_written_as_idna() -> None:
    mail = compose(to="a@例え.jp")
    assert not mail.needs_smtputf8
    assert mail.data.isascii()
    assert parse(mail.data)["To"].addresses[0].addr_spec == "a@xn--r8jz45g.jp"
    assert envelope_address("a@例え.jp") == "a@xn--r8jz45g.jp"
    assert envelope_address("山田@例え.jp") == "山田@例え.jp"
    assert envelope_address("a@example.com") == "a@example.com"


def test_international_from_address() -> None:
    mail = compose(replace(BASE, from_address="配信@例え.jp"))
    assert mail.needs_smtputf8
    assert mail.message_id.endswith("@例え.jp>")
    mail = compose(replace(BASE, from_address="news@例え.jp"))
    assert not mail.needs_smtputf8
    assert mail.message_id.endswith("@xn--r8jz45g.jp>")


def test_ascii_addresses_do_not_need_smtputf8() -> None:
    assert not compose().needs_smtputf8


@pytest.mark.parametrize("display_name", ['Tanaka, "Ichiro" (Sales)', "J. R. Smith",
                                          "back\\slash", "  spaced  out  ", "a" * 200,
                                          "山田 太郎", "長谷川　五郎左衛門【営業部】",
                                          "=?utf-8?q?literal?="])
def test_display_names_round_trip(display_name: str) -> None:
    mail = compose(replace(BASE, from_name=display_name), name=display_name)
    assert_wire_format(mail.data)
    message = parse(mail.data)
    assert message["From"].addresses[0].display_name == display_name
    assert message["To"].addresses[0].display_name == display_name


def test_long_international_display_name() -> None:
    name = "日本語の長い名前" * 20  # more than one encoded word can hold
    mail = compose(name=name)
    assert_wire_format(mail.data)
    raw = parse(mail.data)["To"]
    # RFC 2047 6.2: the space between two encoded words is not part of the text. The legacy
    # decoder honours that; the email package's address parser shows a space there.
    to = header_block(mail.data).decode().split("\r\nTo: ", 1)[1].split("\r\nSubject:")[0]
    assert str(make_header(decode_header(to))) == f"{name} <a@example.com>"
    assert raw.addresses[0].display_name.replace(" ", "") == name


# -- line lengths ---------------------------------------------------------------------------


def test_long_subjects_fold_and_round_trip() -> None:
    for subject in ("word " * 300 + "end", "x" * 2000, "お知らせ" * 300, "a\tb  c " * 50):
        mail = compose(replace(BASE, subject=subject))
        assert_wire_format(mail.data)
        assert all(len(line) <= 78 for line in header_block(mail.data).split(b"\r\n"))
        assert parse(mail.data)["Subject"] == subject


def test_bodies_keep_lines_short_and_crlf() -> None:
    long_ascii = "<p>" + "x" * 3000 + "</p>"
    content = replace(BASE, text="one\ntwo\r\nthree\rfour", html=long_ascii)
    mail = compose(content)
    assert_wire_format(mail.data)
    text, html = parse(mail.data).iter_parts()
    assert text.get_content().replace("\r\n", "\n").rstrip("\n") == "one\ntwo\nthree\nfour"
    assert html["Content-Transfer-Encoding"] == "base64"
    assert html.get_content() == long_ascii


def test_body_that_holds_the_boundary_gets_another() -> None:
    composer = Composer(replace(BASE, text="{{plan}}", html="<p>x</p>"))
    trap = "--" + composer._boundary
    mail = composer.compose(email="a@example.com", name="A", vars={"plan": trap})
    text, html = parse(mail.data).iter_parts()
    assert text.get_content().rstrip() == trap
    assert html.get_content().rstrip() == "<p>x</p>"


def test_a_delivery_needs_a_body() -> None:
    with pytest.raises(ValueError, match="body"):
        Composer(replace(BASE, text=None, html=None))
