"""The bootstrap/relay node (`node.py`) and the deploy kit for rented boxes (`deploy/`) (issue 4)."""
