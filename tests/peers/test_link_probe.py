"""Link probes between two real hosts on 127.0.0.1 time the path KV takes: the fast path where the peer
serves it (on the pooled KV connection, which stays usable for KV), libp2p frames where it does not."""

from test_kvlink_fastpath import FakeSession, push_of, run_pair

from peers.kvlink import BANDWIDTH_PROTOCOL, measure_gbps, send_kv, serve_bandwidth


def test_a_probe_times_the_fast_path_and_leaves_its_connection_to_kv(tmp_path):
    async def body(prefill, decode):
        gbps, path = await measure_gbps(prefill, decode.peer_id, 1 << 20)
        assert path == "fast path" and gbps > 0
        decode.decode_sessions["r"] = FakeSession()
        await send_kv(prefill, decode.peer_id, push_of("r", b"kv"), b"kv", 3)
        assert decode.decode_sessions["r"].blobs == [b"kv"]
        assert len(prefill.kv_links.idle[decode.peer_id]) == 1  # the probe's connection, reused by the push

    run_pair(tmp_path, body)


def test_without_a_fast_path_a_probe_times_libp2p(tmp_path):
    async def body(prefill, decode):
        decode.host.set_handler(BANDWIDTH_PROTOCOL, lambda stream: serve_bandwidth(decode, stream))
        gbps, path = await measure_gbps(prefill, decode.peer_id, 1 << 20)
        assert path == "libp2p" and gbps > 0

    run_pair(tmp_path, body, has_fastpath=False)

