"""What the operators' command line (`mail-ops`) does, without its argument parsing
and printing: account status and pause/resume (`accounts`), and reading and replaying the
dead-letter queue (`dead`). Each function takes the connections and the `Topology` to use, so
that tests run them on a private topology."""
