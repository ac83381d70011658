"""Bounces read per second: the corpus of tests/unit/bounce_corpus.py (real MTAs' layouts)
parsed and classified again and again, beside the standard library's parse of the same bytes
alone (the floor of any reader built on it). No server, no stack needed.

    python bench/bench_bounces.py
"""

import email
import email.policy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.sender.bounces.dsn import parse
from tests.unit.bounce_corpus import CORPUS

ROUNDS = 300


def rate(work: object) -> float:
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for _name, raw, *_ in CORPUS:
            work(raw)  # type: ignore[operator]
    return ROUNDS * len(CORPUS) / (time.perf_counter() - started)


def main() -> None:
    right = sum(
        1 for _name, raw, report, recipient, kind, status, message_id in CORPUS
        if (found := parse(raw)).kind == report and found.message_id == message_id
        and ([(r.recipient, r.kind, r.status) for r in found.recipients]
             == ([(recipient, kind, status)] if recipient else [])))
    ours = rate(parse)
    floor = rate(lambda raw: email.message_from_bytes(raw, policy=email.policy.default))
    print(f"corpus: {len(CORPUS)} messages, {right} read as their fixture says "
          f"({right / len(CORPUS):.0%})")
    print(f"read and classified: {ours:,.0f} messages/s")
    print(f"baseline, the email package's parse alone: {floor:,.0f} messages/s "
          f"(ours: {ours / floor:.0%} of it)")


if __name__ == "__main__":
    main()
