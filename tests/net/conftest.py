"""Fixtures for networking tests: real hosts on 127.0.0.1 with identities in a tmp dir."""

import itertools

import pytest

from swarm.net.host import HostConfig


@pytest.fixture
def host_config(tmp_path):
    """host_config(**overrides) -> a HostConfig with a fresh identity file under tmp_path."""
    counter = itertools.count()

    def make(**overrides) -> HostConfig:
        overrides.setdefault("identity_path", tmp_path / f"identity-{next(counter)}.key")
        return HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), **overrides)

    return make
