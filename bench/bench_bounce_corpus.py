"""The bounce reader on real bounce mails: the corpus in `../shared/bounce-corpus/` (real
bounces of 60+ MTAs and providers, and Sisimai's reading of each), read with the reader's
own parse (`services/sender/bounces/dsn.py`), compared recipient by recipient with Sisimai's
reading mapped to the project's kinds (the corpus's README says how). No server needed.

    python bench/bench_bounce_corpus.py [--corpus DIR]

Prints the confusion table (Sisimai's kind in rows, the reader's in columns), the agreement
per kind and per family of samples, how many recipients were found and how many statuses
agree, the false suppressions (hard or complaint read where Sisimai reads neither: mail a
customer would never get again) with their samples, and messages/s beside the email
package's parse alone. The corpus is data of a public project: read from its folder, never
copied into this one; without it the benchmark says so and exits 0.
"""

import argparse
import email
import email.policy
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.sender.bounces.dsn import Report, parse

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bounce-corpus"
KINDS = ("hard", "soft", "policy", "complaint", "none")
SUPPRESSING = {"hard", "complaint"}  # what the project suppresses at once
MISSING = "missing"  # Sisimai found the recipient, the reader did not

# Sisimai's reasons as the project's kinds (the corpus's README, "Sisimai's reasons as the
# project's four kinds"; the debatable ones where its README puts them).
REASONS = {
    "hard": {"userunknown", "hostunknown", "hasmoved", "notaccept"},
    "soft": {"mailboxfull", "exceedlimit", "expired", "systemerror", "systemfull",
             "networkerror", "onhold", "mailererror", "undefined", "toomanyconn", "speeding",
             "suspend"},
    "policy": {"blocked", "spamdetected", "policyviolation", "rejected", "securityerror",
               "norelaying", "contenterror", "virusdetected", "syntaxerror", "authfailure",
               "requireptr", "notcompliantrfc", "badreputation", "failedstarttls",
               "mesgtoobig", "filtered"},
    "complaint": {"feedback"},
    "none": {"vacation", "delivered"},
}
KIND_OF = {reason: kind for kind, reasons in REASONS.items() for reason in reasons}


def expected_kind(entry: dict) -> str:
    kind = KIND_OF.get(entry["reason"], "soft")
    if entry.get("action") == "delivered":
        return "none"
    if kind == "hard" and str(entry.get("status", "")).startswith("4."):
        return "soft"  # a temporary failure is never the address's for good
    return kind


def family(sample: str) -> str:
    return re.sub(r"-\d+\.eml$", "", sample)


def read_kinds(report: Report) -> list[tuple[str, str, str | None]]:
    """(recipient, kind, status) as the intake records them: a delay notice is not a bounce."""
    return [(r.recipient.lower(), "none" if r.action == "delayed" else r.kind, r.status)
            for r in report.recipients]


def compare(sample: str, expected: list[dict], report: Report) -> list[dict]:
    """One row per recipient Sisimai found: what the reader made of it."""
    found = read_kinds(report)
    by_address = {recipient: (kind, status) for recipient, kind, status in found}
    rows = []
    for position, entry in enumerate(expected):
        address = (entry["recipient"] or "").lower()
        if not address or address.endswith(".invalid"):  # Sisimai found none either: by order
            got = found[position][1:] if position < len(found) else None
        else:
            got = by_address.get(address)
        want = expected_kind(entry)
        if got is None:
            kind, status = ("none" if want == "none" else MISSING), None
        else:
            kind, status = got
        rows.append({"sample": sample, "family": family(sample), "want": want, "got": kind,
                     "want_status": entry.get("status") or None, "got_status": status})
    return rows


def rate(raws: list[bytes], work: object, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for raw in raws:
            work(raw)  # type: ignore[operator]
    return rounds * len(raws) / (time.perf_counter() - started)


def share(part: int, whole: int) -> str:
    return f"{part / whole:.0%} ({part}/{whole})" if whole else "-"


def print_confusion(rows: list[dict]) -> None:
    columns = [*KINDS, MISSING]
    counts = Counter((row["want"], row["got"]) for row in rows)
    print("\n## Sisimai's kind (rows) against the reader's (columns)")
    print("| | " + " | ".join(columns) + " | agreement |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for want in KINDS:
        total = sum(counts[(want, got)] for got in columns)
        cells = " | ".join(str(counts[(want, got)]) for got in columns)
        print(f"| {want} | {cells} | {share(counts[(want, want)], total)} |")


def print_families(rows: list[dict]) -> None:
    per: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        per[row["family"]].append(row["want"] == row["got"])
    print("\n## Agreement per family of samples (recipients), worst first")
    for name, right in sorted(per.items(), key=lambda item: sum(item[1]) / len(item[1])):
        print(f"  {name:32} {share(sum(right), len(right))}")


def print_summary(rows: list[dict], messages: int) -> None:
    right = sum(row["want"] == row["got"] for row in rows)
    bounced = [row for row in rows if row["want"] != "none"]
    found = sum(row["got"] != MISSING for row in bounced)
    both = [row for row in rows if row["want_status"] and row["got_status"]]
    same = sum(row["want_status"] == row["got_status"] for row in both)
    print(f"corpus: {messages} messages, {len(rows)} recipients (Sisimai's)")
    print(f"kind agreement: {share(right, len(rows))}")
    print(f"recipient found (bounced ones): {share(found, len(bounced))}")
    print(f"status equal where both have one: {share(same, len(both))}")


def print_false_suppressions(rows: list[dict]) -> None:
    wrong = [row for row in rows if row["got"] in SUPPRESSING and row["want"] not in SUPPRESSING]
    print(f"\n## False suppressions (the reader suppresses, Sisimai would not): {len(wrong)}")
    for row in wrong:
        print(f"  {row['sample']}: read {row['got']} ({row['got_status']}), Sisimai "
              f"{row['want']} ({row['want_status']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    expected_file, folder = args.corpus / "expected.json", args.corpus / "eml"
    if not expected_file.is_file() or not folder.is_dir():
        print(f"no bounce corpus at {args.corpus}: nothing measured")
        return 0
    expected = json.loads(expected_file.read_text())
    samples = sorted(path for path in folder.glob("*.eml") if path.name in expected)
    raws = [path.read_bytes() for path in samples]
    rows, failures = [], []
    for path, raw in zip(samples, raws, strict=True):
        try:
            rows += compare(path.name, expected[path.name], parse(raw))
        except Exception as error:  # counted, never hidden: a reader must survive any mail
            failures.append(f"{path.name}: {type(error).__name__}: {error}")
    print_summary(rows, len(samples))
    print(f"messages the reader raised on: {len(failures)}")
    for failure in failures:
        print(f"  {failure}")
    print_confusion(rows)
    print_families(rows)
    print_false_suppressions(rows)
    ours = rate(raws, parse, args.rounds)
    floor = rate(raws, lambda raw: email.message_from_bytes(raw, policy=email.policy.default),
                 args.rounds)
    print(f"\nread and classified: {ours:,.0f} messages/s")
    print(f"baseline, the email package's parse alone: {floor:,.0f} messages/s "
          f"(ours: {ours / floor:.0%} of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
