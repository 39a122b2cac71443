"""The peer daemon: the engine that runs a model's layer range, and (later) dispatch, KV link and gateway."""
