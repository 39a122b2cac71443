"""Sans-IO protocol state machines (membership, election): events and `now` in, actions out; no I/O."""
