"""The commands of mail-ops, a module for each group: `add_parsers` adds its verbs to the
command line, `run` does one of them and returns the exit code."""

import argparse

# What `add_subparsers` returns; argparse names no public type for it.
Verbs = argparse._SubParsersAction
