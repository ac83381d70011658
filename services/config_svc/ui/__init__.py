"""The administrators' screens of the seed, served by config_svc under `/ui/`."""
