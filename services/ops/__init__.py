"""The operators' command line (`mail-ops`). What it does, without its argument parsing and
printing: account status and pause/resume (`accounts`), the dead letters of `mail.dead` as a
model (`letters`: what one is, how it is described, selected, and where a replay sends it)
and the broker I/O that reads, holds, gives back and replays them (`dead`). Each function
takes the connections and the `Topology` to use, so that tests run them on a private
topology. `cli` parses the command line and hands each verb to its group in `commands`."""
