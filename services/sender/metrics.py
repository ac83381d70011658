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
RECORD_SECONDS = Histogram("mail_sender_record_seconds",
                           "Recording one outcome (one transaction, events included).",
                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1))
# The pause as the server sees it: from the 250 of one SMTP transaction of an account to the
# MAIL of its next, less the account's interval; only for a message that was waiting for it.
PAUSE_OVERRUN = Histogram(
    "mail_sender_pause_overrun_seconds",
    "How much longer than the interval an account's pause between two sends lasted.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1, 10))
PAUSE_SHORT = Counter("mail_sender_pause_short_total",
                      "Pauses shorter than the interval (a bug if ever above zero).")
LEASE_RENEWALS = Counter("mail_sender_lease_renewals_total",
                         "Account leases renewed during a send that outlasted them.")
RECORD_RETRIES = Counter("mail_sender_record_retries_total",
                         "Writes after a send (outcome, pause, lease) retried: the database "
                         "refused or dropped them.")
JOB_RETRIES = Counter("mail_sender_job_retries_total",
                      "Jobs kept in hand and tried again after a fault that was not the "
                      "recipient's (database, broker, unexpected error).", ["account_id"])
STALLED = Gauge("mail_sender_stalled_accounts",
                "Accounts whose job in hand waits for a fault to clear before it is retried.")
MISROUTED = Counter("mail_sender_misrouted_jobs_total",
                    "Jobs found on another account's queue (sent back to their own, never "
                    "sent through the wrong account).")
CONSUMERS_LOST = Counter("mail_sender_consumers_lost_total",
                         "Account consumers lost (connection, channel, cancelled by the broker) "
                         "and subscribed again.", ["why"])
SWEPT = Counter("mail_sender_swept_total",
                "Recipients of deleted accounts settled as failed by the sweep.")
SKIPPED = Counter("mail_sender_skipped_jobs_total",
                  "Jobs acked without a turn: their recipient was cancelled or had expired.",
                  ["account_id"])
BOUNCE_MESSAGES = Counter("mail_sender_bounce_messages_total",
                          "Messages read from bounce mailboxes, by what they were read as.",
                          ["report"])
BOUNCES = Counter("mail_sender_bounces_total", "Recipients recorded as bounced, by kind.",
                  ["kind"])
BOUNCES_UNMATCHED = Counter("mail_sender_bounces_unmatched_total",
                            "Bounces that matched no recipient (kept, never guessed).")
POLICY_BOUNCES = Counter("mail_sender_policy_bounces_total",
                         "Policy bounces (blocklists, reputation, authentication), by account.",
                         ["account_id"])
BOUNCE_READS = Counter("mail_sender_bounce_mailbox_reads_total",
                       "Passes over the bounce mailboxes, by result (ok, login, error).",
                       ["result"])
