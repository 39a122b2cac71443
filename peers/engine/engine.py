"""The engine: a model stage, its paged KV cache and scheduler behind a small synchronous API.

`add`, `step`, `abort`, `export_kv` and `import_kv` are meant to be called from one worker thread (a
lock makes calls from several threads safe, not fast). Roles: `both` prefills and decodes; `prefill`
prefills, returns the first token and parks the KV until `export_kv`; `decode` takes requests only
through `import_kv`. An engine holding layers [a, b) of a longer model is a pipeline stage: the first
stage drives with `step_hidden` / `accept_tokens`, later stages answer `run_hidden`. Weights, the KV
cache and every step's tensors live on `EngineConfig.device`; only blobs and sampled tokens cross to the host.

KV hand-off between pipelines with different layer splits: every stage exports slices of its layers
(`export_kv(layers=...)` on the first stage, `export_remote_kv` on later ones) and every stage of the
receiving pipeline takes them with `import_kv_part`, possibly several blobs per request. Blocks are taken
when the first part arrives and filled layer by layer (a `PartialImport`); once every layer of the stage
is present the request runs: on a first stage as a running sequence, on a later stage as the blocks the
first stage's micro-batches address. `drop_partial_kv` frees an import that never completed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels import KvFormat
from peers.engine import handoff
from peers.engine.batch import decode_input, prefill_input
from peers.engine.config import EngineConfig, ModelConfig
from peers.engine.kv_cache import BlockManager, PagedKvCache
from peers.engine.model import LlamaStage
from peers.engine.sampling import SamplingParams, sample
from peers.engine.scheduler import Scheduler, Sequence, Status
from peers.engine.text import TextCodec, find_stop
from peers.errors import CapacityError, EngineConfigError, HandoffError, PromptError, RequestError
from swarm.errors import ConfigError


@dataclass
class PartialImport:
    """A request's KV arriving in parts: its blocks, its cached token count, the layers still missing."""

    block_ids: list[int]
    num_tokens: int
    missing_layers: set[int]


@dataclass(frozen=True)
class TokenEvent:
    """What one step produced for one request. `finish_reason`: None while running, else "stop",
    "length" or "prefilled" (prefill role: KV parked for export). The "prefilled" event also carries
    the prompt's token ids, which `import_kv` needs on the decode side."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None = None
    prompt_token_ids: tuple[int, ...] = ()

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


class Engine:
    """One model stage serving many requests with continuous batching over a paged KV cache."""

    def __init__(self, folder: Path, config: EngineConfig, model_config: ModelConfig, stage: LlamaStage,
                 cache: PagedKvCache, scheduler: Scheduler, codec: TextCodec | None, max_model_len_tokens: int):
        self.folder = folder
        self.config = config
        self.model_config = model_config
        self.stage = stage
        self.cache = cache
        self.scheduler = scheduler
        self.codec = codec
        self.max_model_len_tokens = max_model_len_tokens
        self.seqs: dict[str, Sequence] = {}
        self.in_flight: list[Sequence] | None = None  # pipeline: sent to the next stage, tokens not back
        self.is_in_flight_prefill = False
        self.released_ids: list[str] = []  # pipeline: finished or aborted since the last hidden blob
        self.remote_blocks: dict[str, list[int]] = {}  # later pipeline stages: blocks per request id
        self.partial_imports: dict[str, PartialImport] = {}  # KV hand-offs with layers still to come
        self.lock = threading.RLock()
        self.device = cache.device

    @classmethod
    def load(cls, model: str | Path | None = None, config: EngineConfig | None = None) -> Engine:
        """Load a model folder (or a prepared model by name) for the layer range and role of `config`."""
        from swarm.modelstore import resolve_model

        config = config or EngineConfig()
        folder = resolve_model(model)
        model_config = ModelConfig.from_folder(folder)
        last_layer = model_config.num_layers if config.last_layer is None else config.last_layer
        if last_layer > model_config.num_layers:
            raise EngineConfigError(f"layer range [{config.first_layer}, {last_layer}) is outside the model's "
                                    f"{model_config.num_layers} layers")
        device, dtype = config.torch_device(), config.torch_dtype()
        stage = LlamaStage.load(folder, model_config, config.first_layer, last_layer, dtype, device)
        num_layers = last_layer - config.first_layer
        shape = (num_layers, config.block_size_tokens, model_config.num_kv_heads, model_config.head_dim)
        num_blocks = config.num_kv_blocks or config.kv_cache_bytes // PagedKvCache.bytes_per_block(*shape, dtype)
        if num_blocks < 1:
            raise EngineConfigError(f"kv_cache_bytes {config.kv_cache_bytes} is smaller than one KV block")
        cache = PagedKvCache(num_layers, num_blocks, config.block_size_tokens, model_config.num_kv_heads,
                             model_config.head_dim, dtype, device)
        scheduler = Scheduler(BlockManager(num_blocks, config.block_size_tokens), config.max_num_seqs,
                              config.max_num_batched_tokens)
        codec = TextCodec.load(folder) if config.first_layer == 0 and (folder / "tokenizer.json").is_file() else None
        max_len = min(config.max_model_len_tokens or model_config.max_position_embeddings,
                      model_config.max_position_embeddings, model_config.sliding_window_tokens or 1 << 62)
        return cls(folder, config, model_config, stage, cache, scheduler, codec, max_len)

    # ---- requests --------------------------------------------------------------------------------------

    def add(self, request_id: str, prompt: str | list[int] | None = None, *, messages: list[dict] | None = None,
            params: SamplingParams | None = None) -> list[int]:
        """Queue a request: a text prompt, token ids, or chat `messages`. Returns the prompt's token ids.

        Raises:
            PromptError: empty, too long, or token ids outside the vocabulary.
            RequestError: duplicate id, or a role/stage that takes no new requests.
            CapacityError: the whole KV cache could not hold this request.
        """
        params = params or SamplingParams()
        with self.lock:
            if self.config.role == "decode":
                raise RequestError("a decode-role engine takes requests only through import_kv")
            if not self.stage.is_first:
                raise RequestError("only the first pipeline stage takes requests")
            self._check_new_id(request_id)
            token_ids = self._tokenize(prompt, messages)
            self._check_fits(token_ids, params)
            seq = self._new_sequence(request_id, token_ids, params)
            self.seqs[request_id] = seq
            self.scheduler.add(seq)
            return token_ids

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks. Raises RequestError if the id is unknown."""
        with self.lock:
            seq = self._get(request_id)
            self._release(seq)

    def has_work(self) -> bool:
        """True while any request waits or runs (parked prefill results do not count)."""
        with self.lock:
            return self.scheduler.has_work()

    def step(self) -> list[TokenEvent]:
        """Run one scheduled step (a prefill or a decode of every running sequence); its tokens."""
        with self.lock:
            if not (self.stage.is_first and self.stage.is_last):
                raise RequestError("this engine is a pipeline stage: drive it with step_hidden/run_hidden")
            if self.in_flight is not None:
                raise RequestError("a micro-batch is still in flight")
            seqs, is_prefill = self.scheduler.schedule()
            if not seqs:
                return []
            logits = self._forward(seqs, is_prefill)
            return self._append(seqs, is_prefill, self._sample(seqs, logits))

    # ---- KV hand-off between prefill and decode engines ------------------------------------------------

    def export_kv(self, request_id: str, fmt: KvFormat | None = None, *, release: bool = True,
                  layers: tuple[int, int] | None = None) -> bytes:
        """The request's cached KV (all tokens but the last) as a KV blob, of all this stage's layers or of
        the model layers [first, last) `layers`; frees it unless `release=False`."""
        fmt = fmt or KvFormat(bits=16)
        with self.lock:
            seq = self._get(request_id)
            if seq.status == Status.WAITING or seq.num_cached_tokens == 0 or seq in (self.in_flight or []):
                raise RequestError(f"request {request_id!r} has no computed KV yet: export it after its prefill step")
            blob = self._encode_layers(seq.block_ids, seq.num_cached_tokens, layers, fmt)
            if release:
                self._release(seq)
            return blob

    def export_remote_kv(self, request_id: str, num_tokens: int, layers: tuple[int, int],
                         fmt: KvFormat | None = None) -> bytes:
        """Later pipeline stage: the KV of the first `num_tokens` tokens of a request the first stage ran
        through here, model layers `layers`, as a KV blob (the blocks stay until `release_remote`)."""
        with self.lock:
            blocks = self.remote_blocks.get(request_id)
            if not blocks or self.scheduler.blocks.blocks_for(num_tokens) > len(blocks):
                raise RequestError(f"stage [{self.stage.first_layer}, {self.stage.last_layer}) holds no KV of "
                                   f"{num_tokens} tokens for request {request_id!r} (released, or never prefilled here)")
            return self._encode_layers(blocks, num_tokens, layers, fmt or KvFormat(bits=16))

    def import_kv(self, request_id: str, blob: bytes, *, prompt_token_ids: list[int], output_token_ids: list[int],
                  params: SamplingParams | None = None) -> None:
        """Continue a request from its exported KV: the blob covers every token but the last output token.

        Raises:
            HandoffError: blob from another model or layer range, corrupt, cut short, or the wrong length.
            CapacityError: no free KV blocks for it right now (retry after some requests finish).
        """
        params = params or SamplingParams()
        with self.lock:
            if self.config.role == "prefill":
                raise RequestError("a prefill-role engine does not import KV; send it to a decode or both engine")
            self._check_new_id(request_id)
            if not output_token_ids:
                raise PromptError("import_kv needs at least one output token (the first token from prefill)")
            token_ids = list(prompt_token_ids) + list(output_token_ids)
            self._check_token_ids(token_ids)
            seq = self._new_sequence(request_id, token_ids, params, num_prompt_tokens=len(prompt_token_ids))
            keys, values = handoff.decode_kv(blob, self.model_config, self.stage.first_layer, len(self.stage.layers),
                                             len(token_ids) - 1, self.cache.keys[0].dtype, self.device)
            self._take_blocks(request_id, seq.block_ids, len(token_ids))
            self.cache.write_sequence(seq.block_ids, keys, values)
            self._admit_imported(seq)

    def import_kv_part(self, request_id: str, blob: bytes, *, prompt_token_ids: list[int],
                       output_token_ids: list[int], params: SamplingParams | None = None) -> bool:
        """Take a KV blob holding some of this stage's layers (a hand-off from a pipeline split differently).

        The first part takes the request's blocks; each part fills its layers. Returns True once every layer
        of this stage has arrived: the request then runs (first stage: a running sequence with `params`;
        later stage: the blocks the first stage's micro-batches use). Raises:
            HandoffError: a blob outside this stage's layers, a layer sent twice, or another token count.
            CapacityError: no free KV blocks for it right now (retry after some requests finish).
        """
        with self.lock:
            if self.config.role == "prefill":
                raise RequestError("a prefill-role engine does not import KV; send it to a decode or both engine")
            token_ids = list(prompt_token_ids) + list(output_token_ids)
            first, last = handoff.kv_layers(blob)
            stage_first, stage_last = self.stage.first_layer, self.stage.last_layer
            if not stage_first <= first < last <= stage_last:
                raise HandoffError(f"a KV part of layers [{first}, {last}) reached the stage holding layers "
                                   f"[{stage_first}, {stage_last}): send each stage only its own layers")
            part = self.partial_imports.get(request_id)
            if part is not None and part.num_tokens != len(token_ids) - 1:
                raise HandoffError(f"a KV part of request {request_id!r} has {len(token_ids) - 1} tokens, the "
                                   f"earlier parts {part.num_tokens}")
            if part is not None and not part.missing_layers.issuperset(range(first, last)):
                raise HandoffError(f"layers [{first}, {last}) of request {request_id!r} arrived twice")
            if part is None:
                self._check_new_part(request_id, token_ids, output_token_ids)
            keys, values = handoff.decode_kv(blob, self.model_config, first, last - first, len(token_ids) - 1,
                                             self.cache.keys[0].dtype, self.device)
            if part is None:
                part = PartialImport([], len(token_ids) - 1, set(range(stage_first, stage_last)))
                self._take_blocks(request_id, part.block_ids, len(token_ids))
                self.partial_imports[request_id] = part
            self.cache.write_sequence(part.block_ids, keys, values, first_layer=first - stage_first)
            part.missing_layers.difference_update(range(first, last))
            if part.missing_layers:
                return False
            del self.partial_imports[request_id]
            if not self.stage.is_first:
                self.remote_blocks[request_id] = part.block_ids
                return True
            seq = self._new_sequence(request_id, token_ids, params or SamplingParams(),
                                     num_prompt_tokens=len(prompt_token_ids))
            seq.block_ids = part.block_ids
            self._admit_imported(seq)
            return True

    def drop_partial_kv(self, request_id: str) -> bool:
        """Free the blocks of a KV hand-off that did not complete (True if there was one); a first stage also
        passes the id downstream, so later stages free what they hold of it."""
        with self.lock:
            part = self.partial_imports.pop(request_id, None)
            if part is not None:
                self.scheduler.blocks.free(part.block_ids)
            if self.stage.is_first and not self.stage.is_last and request_id not in self.seqs:
                self.released_ids.append(request_id)
            return part is not None

    # ---- pipeline stages -------------------------------------------------------------------------------

    def step_hidden(self) -> bytes | None:
        """First stage of a pipeline: run one step and return its hidden-state blob, None if idle."""
        with self.lock:
            if not self.stage.is_first or self.stage.is_last:
                raise RequestError("step_hidden is for the first stage of a multi-stage pipeline")
            if self.in_flight is not None:
                raise RequestError("the previous micro-batch is still in flight: call accept_tokens first")
            seqs, is_prefill = self.scheduler.schedule()
            if not seqs:
                return None
            hidden = self._forward(seqs, is_prefill)
            self.in_flight, self.is_in_flight_prefill = seqs, is_prefill
            released, self.released_ids = self.released_ids + self.scheduler.take_preempted(), []
            fields = {
                "model_fingerprint": self.model_config.fingerprint, "first_layer": self.stage.last_layer,
                "is_prefill": is_prefill, "request_ids": tuple(s.request_id for s in seqs),
                "query_lens": tuple(s.num_tokens if is_prefill else 1 for s in seqs),
                "start_positions": tuple(0 if is_prefill else s.num_tokens - 1 for s in seqs),
                "released_ids": tuple(released),
                **handoff.sampling_fields([s.params for s in seqs], [s.num_generated for s in seqs]),
            }
            return handoff.hidden_to_blob(hidden, fields)

    def run_hidden(self, blob: bytes) -> bytes | dict[str, int]:
        """A later stage: run a micro-batch's hidden states through this stage's layers.

        Returns the blob for the next stage, or on the last stage the sampled token of each request.
        """
        with self.lock:
            if self.stage.is_first:
                raise RequestError("run_hidden is for later pipeline stages; the first stage uses step_hidden")
            header, hidden = handoff.blob_to_hidden(blob, self.model_config, self.stage.first_layer, self.device)
            self._free_remote(header.released_ids)
            step = self._remote_step(header)
            out = self.stage.forward(step, self.cache, hidden=hidden)
            if not self.stage.is_last:
                fields = {"model_fingerprint": header.model_fingerprint, "first_layer": self.stage.last_layer,
                          **{k: getattr(header, k) for k in ("is_prefill", "request_ids", "query_lens",
                                                             "start_positions", "temperatures", "top_ps", "top_ks",
                                                             "seeds", "num_generated", "released_ids")}}
                return handoff.hidden_to_blob(out, fields)
            tokens = sample(out, handoff.params_from_header(header), list(header.num_generated))
            return dict(zip(header.request_ids, tokens, strict=True))

    def accept_tokens(self, tokens: dict[str, int]) -> list[TokenEvent]:
        """First stage: take the last stage's sampled tokens for the micro-batch in flight."""
        with self.lock:
            if self.in_flight is None:
                raise RequestError("no micro-batch is in flight")
            missing = [s.request_id for s in self.in_flight if s.request_id not in tokens]
            if missing:
                raise RequestError(f"tokens missing for requests {missing}")
            seqs, self.in_flight = self.in_flight, None
            live = [s for s in seqs if self.seqs.get(s.request_id) is s]
            return self._append(live, self.is_in_flight_prefill, [tokens[s.request_id] for s in live])

    def take_released_ids(self) -> list[str]:
        """First stage: requests released since the last blob, for an idle pipeline to pass downstream."""
        with self.lock:
            released, self.released_ids = self.released_ids + self.scheduler.take_preempted(), []
            return released

    def release_remote(self, request_ids: list[str]) -> None:
        """Later stage: free the KV blocks of requests the first stage has released (unknown ids are fine)."""
        with self.lock:
            self._free_remote(request_ids)

    # ---- internals -------------------------------------------------------------------------------------

    def _forward(self, seqs: list[Sequence], is_prefill: bool) -> torch.Tensor:
        tables = [s.block_ids for s in seqs]
        if is_prefill:
            step = prefill_input(tables, [s.num_tokens for s in seqs], self.config.block_size_tokens, self.device)
            ids = torch.tensor([t for s in seqs for t in s.token_ids], device=self.device)
        else:
            step = decode_input(tables, [s.num_tokens for s in seqs], self.config.block_size_tokens, self.device)
            ids = torch.tensor([s.token_ids[-1] for s in seqs], device=self.device)
        out = self.stage.forward(step, self.cache, token_ids=ids)
        for s in seqs:
            s.num_cached_tokens = s.num_tokens
        return out

    def _encode_layers(self, block_ids: list[int], num_tokens: int, layers: tuple[int, int] | None,
                       fmt: KvFormat) -> bytes:
        first, last = layers or (self.stage.first_layer, self.stage.last_layer)
        if not self.stage.first_layer <= first < last <= self.stage.last_layer:
            raise RequestError(f"layers [{first}, {last}) are not all on this stage, which holds "
                               f"[{self.stage.first_layer}, {self.stage.last_layer})")
        offset = self.stage.first_layer
        keys, values = self.cache.read_sequence(block_ids, num_tokens, range(first - offset, last - offset))
        return handoff.encode_kv(keys, values, fmt, self.model_config, first)

    def _take_blocks(self, request_id: str, block_ids: list[int], num_tokens: int) -> None:
        if not self.scheduler.blocks.can_grow(block_ids, num_tokens):
            raise CapacityError(f"no free KV blocks for request {request_id!r} ({num_tokens} tokens) "
                                "right now: retry after running requests finish")
        self.scheduler.blocks.grow(block_ids, num_tokens)

    def _admit_imported(self, seq: Sequence) -> None:
        """An imported request (its KV in its blocks) joins the running batch."""
        seq.num_cached_tokens = seq.num_tokens - 1
        if self.codec:
            seq.text = self.codec.decode(self._text_ids(seq))
        self.seqs[seq.request_id] = seq
        self.scheduler.admit_running(seq)

    def _check_new_part(self, request_id: str, token_ids: list[int], output_token_ids: list[int]) -> None:
        if not output_token_ids:
            raise PromptError("a KV import needs at least one output token (the first token from prefill)")
        if self.stage.is_first:
            self._check_new_id(request_id)
        elif request_id in self.remote_blocks:
            raise RequestError(f"request id {request_id!r} already holds KV on this stage")
        self._check_token_ids(token_ids)

    def _free_remote(self, request_ids) -> None:
        for request_id in request_ids:
            self.scheduler.blocks.free(self.remote_blocks.pop(request_id, []))
            part = self.partial_imports.pop(request_id, None)
            if part is not None:
                self.scheduler.blocks.free(part.block_ids)

    def _remote_step(self, header):
        tables = []
        for request_id, start, n in zip(header.request_ids, header.start_positions, header.query_lens, strict=True):
            if not header.is_prefill and request_id not in self.remote_blocks:
                raise HandoffError(f"stage [{self.stage.first_layer}, {self.stage.last_layer}) holds no KV of "
                                   f"request {request_id!r}: a decode step needs its prefill or KV hand-off here")
            blocks = self.remote_blocks.setdefault(request_id, [])
            if header.is_prefill:
                self.scheduler.blocks.free(blocks)  # a re-prefill after pre-emption starts over
            if not self.scheduler.blocks.can_grow(blocks, start + n):
                raise CapacityError(f"stage [{self.stage.first_layer}, {self.stage.last_layer}) has no free KV blocks "
                                    f"for request {request_id!r}: give this stage more kv_cache_bytes")
            self.scheduler.blocks.grow(blocks, start + n)
            tables.append(blocks)
        lens = [s + n for s, n in zip(header.start_positions, header.query_lens, strict=True)]
        if header.is_prefill:
            return prefill_input(tables, lens, self.config.block_size_tokens, self.device)
        return decode_input(tables, lens, self.config.block_size_tokens, self.device)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        return sample(logits, [s.params for s in seqs], [s.num_generated for s in seqs])

    def _append(self, seqs: list[Sequence], is_prefill: bool, tokens: list[int]) -> list[TokenEvent]:
        events = []
        for seq, token in zip(seqs, tokens, strict=True):
            seq.token_ids.append(token)
            reason = self._finish_reason(seq, token)
            num_chars_before = len(seq.text)
            text = self._advance_text(seq, reason is not None)
            cut = find_stop(seq.text, seq.params.stop, num_chars_before) if seq.params.stop else None
            if cut is not None:
                text = seq.text[num_chars_before:cut]
                seq.text, reason = seq.text[:cut], "stop"
            if reason is None and is_prefill and self.config.role == "prefill":
                reason = "prefilled"
            prompt = tuple(seq.token_ids[:seq.num_prompt_tokens]) if reason == "prefilled" else ()
            events.append(TokenEvent(seq.request_id, (token,), text, reason, prompt))
            if reason == "prefilled":
                self._park(seq)
            elif reason is not None:
                self._release(seq)
        return events

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        if token in seq.stop_token_ids:
            return "stop"
        if seq.num_generated >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len_tokens:
            return "length"
        return None

    def _advance_text(self, seq: Sequence, is_finished: bool) -> str:
        """The new text of a sequence, held back while it ends in an incomplete UTF-8 character."""
        if self.codec is None:
            return ""
        full = self.codec.decode(self._text_ids(seq))
        if full.endswith("\ufffd") and not is_finished:
            return ""
        delta = full[len(seq.text):] if full.startswith(seq.text) else full
        seq.text = full
        return delta

    def _text_ids(self, seq: Sequence) -> list[int]:
        return [t for t in seq.output_token_ids if t not in seq.stop_token_ids]

    def _park(self, seq: Sequence) -> None:
        self.scheduler.running.remove(seq)
        seq.status = Status.PARKED

    def _release(self, seq: Sequence) -> None:
        if seq.status == Status.PARKED:
            self.scheduler.blocks.free(seq.block_ids)
        else:
            self.scheduler.remove(seq)
        del self.seqs[seq.request_id]
        self.released_ids.append(seq.request_id)

    def _get(self, request_id: str) -> Sequence:
        seq = self.seqs.get(request_id)
        if seq is None:
            raise RequestError(f"unknown request id {request_id!r} (finished, aborted or never added)")
        return seq

    def _check_new_id(self, request_id: str) -> None:
        if not isinstance(request_id, str) or not request_id:
            raise RequestError(f"request id must be a non-empty string, got {request_id!r}")
        if request_id in self.seqs:
            raise RequestError(f"request id {request_id!r} is already in use: pick a unique id per request")

    def _tokenize(self, prompt: str | list[int] | None, messages: list[dict] | None) -> list[int]:
        if (prompt is None) == (messages is None):
            raise PromptError("give exactly one of a prompt (text or token ids) or chat messages")
        if isinstance(prompt, list | tuple):
            token_ids = list(prompt)
        else:
            if self.codec is None:
                raise PromptError(f"{self.folder} has no tokenizer.json: send token ids instead of text")
            if messages is not None:
                token_ids = self.codec.encode_chat(messages)
            elif not isinstance(prompt, str):
                raise PromptError(f"a prompt is a string or a list of token ids, got {type(prompt).__name__}")
            else:
                token_ids = self.codec.encode(prompt) if prompt else []
        self._check_token_ids(token_ids)
        return token_ids

    def _check_token_ids(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise PromptError("the prompt is empty: send at least one token of text")
        vocab = self.model_config.vocab_size
        bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise PromptError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if len(token_ids) >= self.max_model_len_tokens:
            raise PromptError(f"the prompt has {len(token_ids)} tokens but the context holds {self.max_model_len_tokens} "
                              "(prompt and at least one new token): shorten the prompt")

    def _check_fits(self, token_ids: list[int], params: SamplingParams) -> None:
        num_tokens = min(len(token_ids) + params.max_tokens, self.max_model_len_tokens)
        blocks = self.scheduler.blocks
        if blocks.blocks_for(num_tokens) > blocks.num_blocks:
            raise CapacityError(f"a request of up to {num_tokens} tokens needs {blocks.blocks_for(num_tokens)} KV blocks "
                                f"but the cache has {blocks.num_blocks}: lower max_tokens or raise kv_cache_bytes")

    def _new_sequence(self, request_id: str, token_ids: list[int], params: SamplingParams,
                      num_prompt_tokens: int | None = None) -> Sequence:
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"params must be a SamplingParams, got {type(params).__name__}")
        stop_ids = params.stop_token_ids
        if stop_ids is None:
            stop_ids = () if params.ignore_eos else self.model_config.eos_token_ids + (
                self.codec.eos_token_ids if self.codec else ())
        return Sequence(request_id, list(token_ids), len(token_ids) if num_prompt_tokens is None else num_prompt_tokens,
                        params, frozenset(stop_ids))
