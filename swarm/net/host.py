"""`open_host`: a libp2p host configured the one safe way (TCP, Noise only, Yamux, one connection per peer).

How it works: py-libp2p 0.8.1 accepts plaintext when no security option is given, so the host passes a
Noise transport alone; an optional private-swarm key (`psk`) wraps the TCP connection in Salsa20 below
Noise, so a peer without the key never completes a handshake. Such a dial would hang about 40 s inside
libp2p, so every dial and stream open here has a deadline and says what probably went wrong. Health
monitoring pings every connection each second (latency goes into the peerstore; dropping a connection
on one missed ping is optional, `is_aborted_on_missed_ping`); a killed or frozen peer is declared dead by
heartbeat silence within 2.5 s (swarm.proto.membership; docs/networking.md lists the numbers).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from swarm.net.errors import DeadlineError, DialError, HandshakeError, StreamError
from swarm.net.identity import load_or_create_identity, peer_id_of, read_swarm_key

logger = logging.getLogger(__name__)

StreamHandler = Callable[[INetStream], Awaitable[None]]


@dataclass(frozen=True)
class HostConfig:
    """How to open a host. `identity_path` None means ~/.swarm/identity.key; tests pass a tmp path."""

    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    identity_path: str | Path | None = None
    swarm_key_path: str | Path | None = None
    dial_timeout_s: float = 3.0
    stream_timeout_s: float = 3.0
    is_health_monitored: bool = True
    health_check_interval_s: float = 1.0
    ping_timeout_s: float = 2.0
    # Abort a connection on one missed ping? Off: on a loaded box (load 12 on 2 cores) an 8-peer swarm saw
    # 345 aborts of live peers in 2 minutes, each dropping up to 100 queued gossip messages; heartbeat
    # silence (swarm.proto.membership) already declares a frozen peer dead within 2.5 s.
    is_aborted_on_missed_ping: bool = False

    def __post_init__(self) -> None:
        for name in ("dial_timeout_s", "stream_timeout_s", "health_check_interval_s", "ping_timeout_s"):
            if not 0 < getattr(self, name) <= 600:
                raise ValueError(f"HostConfig.{name} must be in (0, 600] seconds, got {getattr(self, name)}")
        if not self.listen_addrs:
            raise ValueError("HostConfig.listen_addrs needs at least one address, e.g. /ip4/0.0.0.0/tcp/4001")


class Host:
    """A running libp2p host: its id and addresses, bounded dials and streams, disconnect listeners."""

    def __init__(self, libp2p_host, config: HostConfig, key_pair: KeyPair, nursery: trio.Nursery) -> None:
        self.libp2p = libp2p_host
        self.config = config
        self.key_pair = key_pair
        self.nursery = nursery
        self.peer_id = peer_id_of(key_pair)
        self.disconnect_listeners: list[Callable[[str], None]] = []

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs of this host, each ending in /p2p/<peer id>."""
        return [str(a) if "/p2p/" in str(a) else f"{a}/p2p/{self.peer_id}" for a in self.libp2p.get_addrs()]

    def connected_peer_ids(self) -> list[str]:
        return sorted(str(p) for p in self.libp2p.get_network().connections)

    async def dial(self, addr: str, *, timeout_s: float | None = None) -> str:
        """Connect to the peer at a full multiaddr (/.../p2p/<id>); returns its peer id."""
        timeout_s = timeout_s or self.config.dial_timeout_s
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as e:
            raise DialError(f"{addr!r} is not a full multiaddr with /p2p/<peer id>: {e}") from None
        peer = info.peer_id.to_base58()
        with trio.move_on_after(timeout_s) as scope:
            try:
                await self.libp2p.connect(info)
            except Exception as e:
                raise DialError(f"peer {peer}: dial to {addr} failed: {e}") from None
        if scope.cancelled_caught:
            logger.warning("peer %s: handshake failed within %g s — different swarm key?", peer, timeout_s)
            raise HandshakeError(f"peer {peer}: no handshake within {timeout_s:g} s at {addr} — "
                                 "different swarm key, or not a swarm peer?")
        return peer

    async def keep_connected(self, addr: str, *, max_backoff_s: float = 5.0) -> None:
        """Dial `addr` and dial it again whenever the connection drops, until cancelled.

        The health monitor aborts connections whose pings time out (a loaded box answers late too), and
        nothing else re-dials: peers keep their bootstrap and neighbour links with this. Failed dials back
        off from 0.5 s, doubling up to `max_backoff_s`.
        """
        peer = self._peer_of(addr)
        backoff_s = 0.5
        while True:
            if not self.libp2p.get_network().get_connections(peer):
                try:
                    await self.dial(addr)
                    backoff_s = 0.5
                except DialError as e:
                    logger.info("keep-connected %s: %s; retrying in %g s", addr, e, backoff_s)
                    await trio.sleep(backoff_s)
                    backoff_s = min(2 * backoff_s, max_backoff_s)
                    continue
            await trio.sleep(0.25)

    def _peer_of(self, addr: str) -> ID:
        try:
            return info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id
        except Exception as e:
            raise DialError(f"{addr!r} is not a full multiaddr with /p2p/<peer id>: {e}") from None

    async def open_stream(self, peer_id: str, protocol: str, *, timeout_s: float | None = None) -> INetStream:
        """A new stream to a connected (or known) peer, negotiated within the deadline."""
        timeout_s = timeout_s or self.config.stream_timeout_s
        with trio.move_on_after(timeout_s):
            try:
                return await self.libp2p.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
            except Exception as e:
                raise StreamError(f"peer {peer_id}: cannot open {protocol}: {e}") from None
        raise DeadlineError(f"peer {peer_id}: opening {protocol} took more than {timeout_s:g} s")

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve `protocol`; a handler's failure resets that stream and is logged, never crashes the host."""

        async def guarded(stream: INetStream) -> None:
            try:
                await handler(stream)
            except Exception as e:  # a per-stream failure stays inside that stream
                logger.warning("%s from peer %s: %s; stream reset", protocol, remote_peer_id(stream), e)
                await reset_quietly(stream)

        self.libp2p.set_stream_handler(TProtocol(protocol), guarded)

    def on_disconnect(self, listener: Callable[[str], None]) -> None:
        """Call `listener(peer_id)` when the last connection to a peer closes."""
        self.disconnect_listeners.append(listener)


class _DisconnectNotifee(INotifee):
    def __init__(self, host: Host) -> None:
        self.host = host

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if network.get_connections(peer):
            return
        # Forget the addresses of whoever left. libp2p dials from the peerstore whenever one of its parts
        # opens a stream to a peer id (pubsub on a new peer, identify push, a health-monitor replacement),
        # so it kept re-dialling clients that had gone, one logged "Failed to open TCP stream" error each
        # time. Clients are not peers; the daemon re-dials peers itself, with the addresses their digests
        # carry (`Host.dial` puts them back).
        with contextlib.suppress(Exception):
            self.host.libp2p.get_peerstore().clear_addrs(peer)
        for listener in list(self.host.disconnect_listeners):
            listener(peer.to_base58())

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def connected(self, network, conn) -> None:
        pass

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass


def connection_config(config: HostConfig) -> ConnectionConfig:
    """One connection per peer (the default of 3 costs 250 ms a dial) and fast health checks.

    No minimum connection count. Zero watermarks alone do not turn libp2p's auto-connector off (it aims at
    the midpoint of the low and high watermarks, 150 with the default high of 300, and re-dials every
    peer in the peerstore, departed clients included, every 30 s and after each disconnect): `open_host`
    stops it, and forgets a departed peer's addresses; the daemon decides whom to dial instead.
    """
    return ConnectionConfig(
        max_connections_per_peer=1, dial_timeout=config.dial_timeout_s, min_connections=0, low_watermark=0,
        enable_health_monitoring=config.is_health_monitored, health_initial_delay=1.0,
        health_check_interval=config.health_check_interval_s, ping_timeout=config.ping_timeout_s,
        abort_connection_on_ping_failure=config.is_aborted_on_missed_ping,
        # a loaded event loop answers pings late: replacing such connections (latency > 1 s or success
        # < 70% by default) only churned healthy peers; a missed ping still aborts a frozen one
        max_ping_latency=5000.0, min_ping_success_rate=0.3)


def build_libp2p_host(config: HostConfig, key_pair: KeyPair):
    """The libp2p host object (not yet listening): Noise alone as security, Yamux, optional psk.

    Yamux window updates are batched (`PY_YAMUX_RELEASE_ON_READ=0`, read by py-libp2p at each read, so it is
    set for the process; a value already in the environment wins): by default py-libp2p sends a
    window-update frame after every read, one extra encrypted frame and send per gossip message. Batched
    as go-yamux does (once half the window is consumed), bulk libp2p streams moved 11-19% more (3 paired
    runs, 64 MiB blobs: 96/185/184 -> 114/206/210 MB/s) and gossip cost about 12% less CPU per message."""
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    noise = NoiseTransport(libp2p_keypair=key_pair, noise_privkey=create_x25519_key_pair().private_key)
    psk = read_swarm_key(config.swarm_key_path) if config.swarm_key_path else None
    return new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX",
                    psk=psk, enable_mDNS=False, connection_config=connection_config(config))


@asynccontextmanager
async def open_host(config: HostConfig | None = None, *, key_pair: KeyPair | None = None) -> AsyncIterator[Host]:
    """Start a host listening on `config.listen_addrs`; it is closed when the block exits."""
    config = config or HostConfig()
    key_pair = key_pair or load_or_create_identity(config.identity_path)
    libp2p_host = build_libp2p_host(config, key_pair)
    listen = [multiaddr.Multiaddr(a) for a in config.listen_addrs]
    async with libp2p_host.run(listen_addrs=listen), trio.open_nursery() as nursery:
        host = Host(libp2p_host, config, key_pair, nursery)
        await libp2p_host.get_network().auto_connector.stop()  # see connection_config
        libp2p_host.get_network().register_notifee(_DisconnectNotifee(host))
        try:
            yield host
        finally:
            nursery.cancel_scope.cancel()


def remote_peer_id(stream: INetStream) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except AttributeError:
        return "?"


async def reset_quietly(stream: INetStream) -> None:
    """Reset a stream, ignoring a stream that is already gone."""
    # the stream may already be closed or its connection dead
    with trio.move_on_after(1.0), contextlib.suppress(Exception):
        await stream.reset()
