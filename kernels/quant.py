"""quantize / dequantize for any device: Triton kernels on CUDA when triton is installed, the fast torch
versions on the CPU (kernels.quant_cpu), else the reference."""

import functools
import importlib.util

import torch
from torch import Tensor

from kernels import quant_cpu, quant_ref
from kernels.quant_ref import QuantizedTensor


@functools.cache
def has_triton() -> bool:
    """True when CUDA and the triton package are both present (triton is imported only then)."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def quantize(x: Tensor, bits: int, group_size: int, axis: str) -> QuantizedTensor:
    """Group-wise asymmetric quantisation of x (..., num_tokens, head_dim); see kernels.quant_ref."""
    if x.is_cuda and has_triton():
        from kernels import quant_triton

        return quant_triton.quantize(x, bits, group_size, axis)
    if x.device.type == "cpu":
        return quant_cpu.quantize(x, bits, group_size, axis)
    return quant_ref.quantize(x, bits, group_size, axis)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float16, out: Tensor | None = None) -> Tensor:
    """Reconstruct the (..., num_tokens, head_dim) tensor of q in `dtype` on q's device (into `out`, of
    shape q.shape, when given; its dtype then wins)."""
    if q.data.device.type == "cpu" and (out is None or out.device.type == "cpu"):
        return quant_cpu.dequantize(q, dtype, out)
    if q.data.is_cuda and has_triton():
        from kernels import quant_triton

        values = quant_triton.dequantize(q, dtype if out is None else out.dtype)
    else:
        values = quant_ref.dequantize(q, dtype if out is None else out.dtype)
    return values if out is None else out.copy_(values)
