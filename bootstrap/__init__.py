"""The bootstrap/relay node and the deploy kit for rented boxes (issue 4)."""
