"""Prometheus metrics of the sender."""

from prometheus_client import Counter, Gauge, Histogram

OUTCOMES = Counter("mail_sender_outcomes_total", "Recipients settled or deferred, by outcome.",
                   ["account_id", "outcome"])
SEND_SECONDS = Histogram("mail_sender_send_seconds", "One SMTP transaction (MAIL to 250).",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PAUSED = Gauge("mail_sender_paused_accounts", "Accounts this sender paused.")
THROTTLED = Gauge("mail_sender_throttled_accounts", "Accounts sending slower than configured.")
LAST_SEND = Gauge("mail_sender_last_send_timestamp_seconds", "When an account last sent.",
                  ["account_id"])
CONSUMERS = Gauge("mail_sender_consumers", "Account queues this sender consumes.")
