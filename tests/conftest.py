"""Settings every test shares: nothing a test does reads or writes the user's own swarm state."""

import os
import tempfile

# `swarm join`/`swarm demo` leave their address for later commands; tests must neither see a real one
# (a demo the developer left running) nor leave theirs behind.
os.environ["SWARM_ADDRS_FILE"] = os.path.join(tempfile.mkdtemp(prefix="swarm-tests-"), "peer.addrs")
