"""KV-cache kernels: group-wise asymmetric 4/8-bit quantisation, the KV wire blob, paged-cache helpers.

Every op has a pure-torch reference (kernels.quant_ref); on the CPU, quantize and dequantize run the
bit-exact fast versions (kernels.quant_cpu); on CUDA with triton installed, the Triton kernels
(kernels.quant_triton), imported only then.
"""

from kernels.errors import KvConfigError, KvFormatError
from kernels.kv_blob import (
    KvPayload,
    KvSection,
    decode_kv_blob,
    decode_kv_blob_into_paged,
    encode_kv_blob,
    read_kv_blob,
)
from kernels.kv_format import KvExpectation, KvFormat
from kernels.paged import dequantize_into_paged, gather_paged, write_paged
from kernels.quant import dequantize, quantize
from kernels.quant_ref import QuantizedTensor

__all__ = [
    "KvConfigError",
    "KvExpectation",
    "KvFormat",
    "KvFormatError",
    "KvPayload",
    "KvSection",
    "QuantizedTensor",
    "decode_kv_blob",
    "decode_kv_blob_into_paged",
    "dequantize",
    "dequantize_into_paged",
    "encode_kv_blob",
    "gather_paged",
    "quantize",
    "read_kv_blob",
    "write_paged",
]
