"""KvFormat (how KV travels), KvExpectation (what a receiver holds) and the byte layout of a KV payload.

Payload, with L layers, H kv heads, T tokens, head_dim D, keys and values stacked into (L, H, T, D):
- bits 16: keys then values, fp16, C order;
- bits 8/4: the first S = min(num_sink_tokens, T) tokens of keys then of values in fp16 (L, H, S, D);
  then for the other T - S tokens: key scales, key minimums, value scales, value minimums (fp16), key
  codes, value codes (uint8, packed, padding not stored). fp16 sections come first, so each starts
  2-byte aligned. Quantised sections are in the tensor's own order, layer-major then head then token
  (layout in kernels.quant_ref): values' codes are (L, H, T - S, D) packed two per byte; keys grouped
  per channel store scales and minimums as (L, H, groups, D) and codes as (L, H, ceil((T - S) / 2), D),
  byte [l, h, j, c] holding channel c of tokens S + 2j (low nibble) and S + 2j + 1 (high nibble).
The first token is an attention sink (StreamingLLM, Xiao et al. 2024; IntactKV, Liu et al. 2024): it
draws a large share of every query's attention, so its quantisation error reaches every later token.
Keeping it in fp16 is what lets 4 bits hold on SmolLM2 (docs/kv-quality.md).
"""

from dataclasses import dataclass

from kernels.errors import KvConfigError
from kernels.quant_ref import AXES, check_quant_args, num_groups_of, packed_row_bytes, row_layout
from swarm.wire.kv import KvHeader

KV_BITS = (16, 8, 4)
MAX_SINK_TOKENS = 64


@dataclass(frozen=True)
class KvFormat:
    """How KV travels: bits (16 = plain fp16), key group size and axis, value group size, fp16 sink tokens.

    Values are always grouped per token. The default is the format chosen in docs/kv-quality.md.
    """

    bits: int = 4
    group_size: int = 64
    key_axis: str = "channel"
    value_group_size: int | None = None  # None: same as group_size
    num_sink_tokens: int = 1

    def __post_init__(self) -> None:
        if self.bits not in KV_BITS:
            raise KvConfigError(f"KvFormat.bits={self.bits!r}: must be one of {KV_BITS}")
        if self.key_axis not in AXES:
            raise KvConfigError(f"KvFormat.key_axis={self.key_axis!r}: must be one of {AXES}")
        check_quant_args(8, self.group_size, self.key_axis)
        check_quant_args(8, self.values_group_size, "token")
        sinks = self.num_sink_tokens
        if type(sinks) is not int or not 0 <= sinks <= MAX_SINK_TOKENS:
            raise KvConfigError(
                f"KvFormat.num_sink_tokens={sinks!r}: must be an int in [0, {MAX_SINK_TOKENS}]"
            )

    @property
    def values_group_size(self) -> int:
        return self.group_size if self.value_group_size is None else self.value_group_size

    def bits_per_element(self) -> float:
        """Wire bits per K or V element for long sequences, scales and minimums included (sinks ignored)."""
        if self.bits == 16:
            return 16.0
        return self.bits + (32 / self.group_size + 32 / self.values_group_size) / 2

    def payload_bytes(self, num_layers: int, kv_heads: int, num_tokens: int, head_dim: int) -> int:
        """Exact payload bytes of one sequence's KV in this format (header not included)."""
        num_sinks = 0 if self.bits == 16 else min(self.num_sink_tokens, num_tokens)
        layout = PayloadLayout(num_layers, kv_heads, num_tokens, head_dim, self.bits, self.group_size,
                               self.values_group_size, self.key_axis, num_sinks)  # fmt: skip
        return sum(layout.section_sizes())


@dataclass(frozen=True)
class KvExpectation:
    """What the receiver's engine holds: the blob must be for exactly this model and layer range."""

    model_fingerprint: str
    first_layer: int
    num_layers: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class PayloadLayout:
    """Shape and format of a payload; section_sizes() gives its byte sections in payload order."""

    num_layers: int
    kv_heads: int
    num_tokens: int
    head_dim: int
    bits: int
    group_size: int
    value_group_size: int
    key_axis: str
    num_sink_tokens: int

    @classmethod
    def of(cls, header: KvHeader) -> "PayloadLayout":
        return cls(header.num_layers, header.kv_heads, header.num_tokens, header.head_dim, header.bits,
                   header.group_size, header.value_group_size, header.key_axis, header.num_sink_tokens)  # fmt: skip

    def shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        return (self.num_layers, self.kv_heads, num_tokens, self.head_dim)

    @property
    def body_tokens(self) -> int:
        """Tokens after the sinks (all of them at 16 bits)."""
        return self.num_tokens - self.num_sink_tokens

    def quantized_sizes(self, group_size: int, axis: str) -> tuple[int, int, int]:
        """(scales, minimums, codes) bytes of one of K or V's quantised tokens."""
        if self.body_tokens == 0:
            return (0, 0, 0)
        num_rows, row_len = row_layout(self.shape(self.body_tokens), axis)
        num_groups = num_rows * num_groups_of(row_len, group_size)
        return (num_groups * 2, num_groups * 2, num_rows * packed_row_bytes(row_len, self.bits))

    def section_sizes(self) -> list[int]:
        """[keys, values] at 16 bits; else [key sinks, value sinks, key scales, key minimums, value scales,
        value minimums, key codes, value codes]."""
        if self.bits == 16:
            num_bytes = 2 * self.num_layers * self.kv_heads * self.num_tokens * self.head_dim
            return [num_bytes, num_bytes]
        sink_bytes = 2 * self.num_layers * self.kv_heads * self.num_sink_tokens * self.head_dim
        keys = self.quantized_sizes(self.group_size, self.key_axis)
        values = self.quantized_sizes(self.value_group_size, "token")
        return [sink_bytes, sink_bytes, keys[0], keys[1], values[0], values[1], keys[2], values[2]]
