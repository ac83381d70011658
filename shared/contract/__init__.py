"""The models of shared.messages, by kind; import them from shared.messages."""
