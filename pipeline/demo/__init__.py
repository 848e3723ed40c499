"""Demo and test support: synthetic media, the loopback media server, tiny random-weight models."""
