"""The private-swarm key file: 32 random bytes every peer of a private swarm shares (mode 0600).

The file uses the go-libp2p layout (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits) so it can be
shared with other tools; a bare line of 64 hex digits is accepted too. No libp2p import here, so
`swarm keygen` starts fast.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from swarm.net.errors import IdentityError

DEFAULT_SWARM_KEY_PATH = Path("~/.swarm/swarm.key")
SWARM_KEY_HEADER = "/key/swarm/psk/1.0.0/\n/base16/\n"
SWARM_KEY_HEX_CHARS = 64


def write_swarm_key(path: str | Path | None = None, *, force: bool = False) -> Path:
    """Write a new random swarm key (0600); refuses to overwrite an existing file unless `force`."""
    path = Path(path or DEFAULT_SWARM_KEY_PATH).expanduser()
    if path.exists() and not force:
        raise IdentityError(f"{path} exists; pass --force to replace it (every peer then needs the new key)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(SWARM_KEY_HEADER + secrets.token_hex(SWARM_KEY_HEX_CHARS // 2) + "\n")
    os.chmod(path, 0o600)
    return path


def read_swarm_key(path: str | Path) -> str:
    """The 64 hex digits of the swarm key in `path` (go-libp2p layout or a bare hex line)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise IdentityError(f"cannot read swarm key {path}: {e.strerror}; make one with `swarm keygen`") from None
    check_private(path)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[:2] == ["/key/swarm/psk/1.0.0/", "/base16/"]:
        lines = lines[2:]
    key = lines[0].lower() if len(lines) == 1 else ""
    if len(key) != SWARM_KEY_HEX_CHARS or any(c not in "0123456789abcdef" for c in key):
        raise IdentityError(f"{path}: expected {SWARM_KEY_HEX_CHARS} hex digits after the "
                            "'/key/swarm/psk/1.0.0/' and '/base16/' lines; make one with `swarm keygen`")
    return key


def check_private(path: Path) -> None:
    """Refuse a key file that others can read."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
