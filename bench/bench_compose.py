"""Composing mails: `Composer` against a naive `EmailMessage` built from scratch per mail.

Standalone, no servers: `.venv/bin/python bench/bench_compose.py`. 5,000 mails of about 2 KB
(text and html, Japanese subject, two vars), each way, in the same run. Prints figures only.
"""

import email.policy
import sys
import time
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from services.sender.delivery.compose import Composer, DeliveryContent
from shared.templating import Template, recipient_values

MAILS = 5_000

SUBJECT = "{{name}} 様 11月のお知らせ【{{plan}}プラン】"
TEXT = (
    "{{name}} 様\n\nいつもご利用いただきありがとうございます。\n"
    "ご契約中のプラン: {{plan}}\n会員番号: {{member}}\n\n"
    + "11月のキャンペーンのお知らせです。詳しくはウェブサイトをご覧ください。\n" * 3
    + "\n-- \nExample Shop https://shop.example.com/\n"
)
HTML = (
    "<html><body><p>{{name}} 様</p><p>いつもご利用いただきありがとうございます。</p>\n"
    "<p>ご契約中のプラン: <b>{{plan}}</b><br>会員番号: {{member}}</p>\n"
    + "<p>11月のキャンペーンのお知らせです。<a href=\"https://shop.example.com/\">詳しくはこちら</a></p>\n"
    * 3
    + "</body></html>\n"
)
CONTENT = DeliveryContent(
    from_address="news@shop.example.com", from_name="Example Shop お知らせ",
    reply_to="support@shop.example.com", subject=SUBJECT, text=TEXT, html=HTML,
    headers={"X-Campaign": "2026-11",
             "List-Unsubscribe": "<mailto:unsubscribe@shop.example.com>"},
)
RECIPIENTS = [
    (f"user{i}@example.com", f"山田 太郎{i}", {"plan": "gold", "member": f"M{i:08d}"})
    for i in range(MAILS)
]


def naive(content: DeliveryContent, recipients: list) -> list[bytes]:
    """What a straightforward sender would do: a new EmailMessage per recipient."""
    subject = Template.parse(content.subject, html=False)
    text = Template.parse(content.text or "", html=False)
    html = Template.parse(content.html or "", html=True)
    local, _, domain = content.from_address.rpartition("@")
    out = []
    for address, name, vars in recipients:
        values = recipient_values(address, name, vars)
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = Address(content.from_name or "", local, domain)
        message["Reply-To"] = content.reply_to
        message["To"] = Address(name, addr_spec=address)
        message["Subject"] = subject.render(values)
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=domain)
        for key, value in content.headers.items():
            message[key] = value
        message.set_content(text.render(values))
        message.add_alternative(html.render(values), subtype="html")
        out.append(message.as_bytes())
    return out


def composer(content: DeliveryContent, recipients: list) -> list[bytes]:
    compose = Composer(content).compose
    return [compose(email=address, name=name, vars=vars).data
            for address, name, vars in recipients]


def measure(label: str, build) -> float:
    build(CONTENT, RECIPIENTS[:200])  # warm-up
    started = time.perf_counter()
    mails = build(CONTENT, RECIPIENTS)
    elapsed = time.perf_counter() - started
    size = sum(map(len, mails)) / len(mails)
    print(f"{label:<34} {MAILS / elapsed:>9,.0f} mails/s  {elapsed / MAILS * 1e6:>7.1f} µs/mail"
          f"  ({size:,.0f} bytes/mail)")
    return elapsed


def main() -> None:
    print(f"composing {MAILS:,} mails each way (text + html, Japanese subject, 2 vars)")
    baseline = measure("baseline: EmailMessage per mail", naive)
    ours = measure("Composer", composer)
    print(f"Composer is {baseline / ours:.1f}x the baseline's speed")


if __name__ == "__main__":
    main()
