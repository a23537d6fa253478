"""Use cases: each function takes a session (and a store where bytes move) and does one thing."""
