"""Which ``scaled_dot_product_attention`` kernel a training step uses.

On CPU under bf16 autocast, PyTorch's fused (flash) attention kernel is quick forward but slow
backward for the short sequences of small models: for the `tiny` image tower (65 tokens, head size
64, batch 128) its backward took 44% of the step, and the plain matmul ("math") kernel made the
image-tower step 1.6x faster and the text-tower step 1.56x; in fp32 the two are within 10%
(``benchmarks/attention_kernels.py``; figures in docs/benchmarks.md). On CUDA the fused kernels are
the fast and memory-lean choice, so ``auto`` keeps PyTorch's own pick there. Both kernels compute
the same attention; only rounding differs (gradients within 1.2e-7 in fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_KERNELS = ("auto", "math", "fused")


@contextlib.contextmanager
def attention_kernel(name: str, device: torch.device | str, *, bf16: bool) -> Iterator[None]:
    """Run the body with the named SDPA kernel policy.

    Args:
        name: ``auto`` (math on CPU with bf16, PyTorch's choice otherwise), ``math`` or ``fused``
            (PyTorch's choice: flash / memory-efficient kernels where they apply).
        device: where the step runs.
        bf16: whether the body runs under bf16 autocast.
    """
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {ATTENTION_KERNELS}, got {name!r}")
    device_type = torch.device(device).type
    if name == "math" or (name == "auto" and device_type == "cpu" and bf16):
        with sdpa_kernel(SDPBackend.MATH):
            yield
    else:
        yield
