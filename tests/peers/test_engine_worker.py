"""EngineWorker: engine calls off the trio thread, events per request, prefill -> KV -> decode hand-off."""

from __future__ import annotations

import trio

from kernels import KvFormat
from peers.engine import Engine, EngineConfig, SamplingParams
from peers.worker import EngineWorker

PROMPTS = ([5, 17, 99, 3, 42, 7], [200, 1, 2, 3], [64] * 20)
PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)


def engine(folder, role: str) -> Engine:
    return Engine.load(folder, EngineConfig(role=role, num_kv_blocks=64, block_size_tokens=16))


async def collect(channel) -> list:
    return [event async for event in channel]


def test_concurrent_requests_each_get_their_own_tokens(tiny_model_dir):
    async def main():
        worker = EngineWorker(engine(tiny_model_dir, "both"))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run_worker)
            channels = [await worker.add(f"r{i}", p, params=PARAMS) for i, p in enumerate(PROMPTS)]
            results = [await collect(c) for c in channels]
            nursery.cancel_scope.cancel()
        return results

    results = trio.run(main)
    reference = engine(tiny_model_dir, "both")
    for i, (prompt, events) in enumerate(zip(PROMPTS, results, strict=True)):
        reference.add(f"x{i}", prompt, params=PARAMS)
        expected = []
        while reference.has_work():
            expected += [t for e in reference.step() for t in e.token_ids]
        assert [t for e in events for t in e.token_ids] == expected
        assert events[-1].finish_reason == "length"


def test_prefill_export_and_decode_import_equal_one_engine_with_fp16_kv(tiny_model_dir):
    async def main(prompt):
        prefill, decode = EngineWorker(engine(tiny_model_dir, "prefill")), EngineWorker(engine(tiny_model_dir, "decode"))
        async with trio.open_nursery() as nursery:
            await nursery.start(prefill.run_worker)
            await nursery.start(decode.run_worker)
            first = await (await prefill.add("r", prompt, params=PARAMS)).receive()
            assert first.finish_reason == "prefilled"
            slices = [await prefill.call(prefill.engine.export_kv, "r", KvFormat(bits=16), release=False,
                                         layers=layers) for layers in ((0, 1), (1, 4))]
            await prefill.abort("r")
            assert prefill.engine.scheduler.blocks.num_used_blocks == 0
            channels = []

            async def take(blob: bytes) -> None:  # the two slices arrive concurrently, as from two stages
                channels.append(await decode.import_kv_part("r", blob, prompt_token_ids=list(first.prompt_token_ids),
                                                            output_token_ids=list(first.token_ids), params=PARAMS))

            async with trio.open_nursery() as imports:
                for blob in slices:
                    imports.start_soon(take, blob)
            assert channels.count(None) == 1  # the channel comes with the slice that completed the KV
            rest = await collect(next(c for c in channels if c is not None))
            nursery.cancel_scope.cancel()
        return list(first.token_ids) + [t for e in rest for t in e.token_ids]

    both = engine(tiny_model_dir, "both")
    for prompt in PROMPTS:
        both.add("b", prompt, params=PARAMS)
        expected = []
        while both.has_work():
            expected += [t for e in both.step() for t in e.token_ids]
        assert trio.run(main, prompt) == expected


def test_abort_frees_the_request_and_the_load_report_counts_requests(tiny_model_dir):
    async def main():
        worker = EngineWorker(engine(tiny_model_dir, "both"))
        await worker.add("r", PROMPTS[0], params=SamplingParams(max_tokens=200, ignore_eos=True))
        queued = worker.load().num_queued
        await worker.abort("r")
        return queued, worker.load(), "r" in worker.engine.seqs

    queued, load, is_left = trio.run(main)
    assert queued == 1 and load.num_queued == 0 and load.num_running == 0 and not is_left
    assert load.kv_tokens_free == 64 * 16
