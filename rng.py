"""Counter-based random numbers: one independent stream per prompt, whatever the batch.

A batch of B prompts x K trajectories draws tensors of shape (N, ...), N = B * K, row
b * K + k belonging to prompt b. With one `torch.Generator` for the batch, what prompt b
receives depends on which prompts come before it. Here every prompt has its own 64-bit
key, and every number is a hash of (key, draw counter, index within the prompt's block),
so a prompt's numbers do not depend on B, on its neighbours, or on how prompts are
sharded over processes (the idea of counter-based generators: Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC 2011). Used through `entrgi.uniform`, the one place
where the project draws random numbers.

    key_b    = blake2b-64(f"{seed}\\0{prompt id}")                          host, once per prompt
    stream_b = splitmix64(key_b + c * G)                                   c = 1, 2, ... the draw counter
    u[b, j]  = (splitmix64(stream_b + (j + 1) * G) >>> 40) / 2**24          j < K * prod(shape[1:])

G = 0x9E3779B97F4A7C15 (the golden-ratio increment of splitmix64). 24 random bits per
float32, as torch.rand gives. All arithmetic is int64 torch ops (wrapping products;
logical shifts emulated with a mask), so it runs on the draw's device with no host sync.

Shapes:
    B prompts (keys)    N = B * K rows of a draw    block = numbers per prompt in a draw
"""

from __future__ import annotations

import hashlib
import math
from typing import Protocol, Sequence

import torch
from torch import Tensor

_TWO64 = 1 << 64


def _int64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return value - _TWO64 if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic: mask the sign copies away)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The splitmix64 finaliser (Steele, Lea & Flood 2014) on int64 tensors: a bijection of 64-bit words.

        z = (x ^ (x >>> 30)) * 0xBF58476D1CE4E5B9;  z = (z ^ (z >>> 27)) * 0x94D049BB133111EB;  z ^ (z >>> 31)

    Products wrap modulo 2**64 as torch's int64 arithmetic does on CPU and CUDA.
    """
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def stream_key(seed: int, name: str) -> int:
    """The 64-bit key of the random stream of (seed, prompt id `name`), as a signed int64 value."""
    digest = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest()
    return _int64(int.from_bytes(digest, "little"))


class CounterRNG:
    """Counter-based random numbers, one independent stream per prompt, for batches of B prompts.

    keys (B,) int64, one per prompt (`stream_key(seed, prompt id)`). A draw of shape
    (N, ...) with N = B * K rows (row b * K + k belongs to prompt b) gives element j of
    prompt b's (K, ...) block, in row-major order,

        u[b, j] = (splitmix64(splitmix64(key_b + c * G) + (j + 1) * G) >>> 40) / 2**24   in [0, 1)

    with G = 0x9E3779B97F4A7C15 and c the number of draws made before (a host counter).
    So a prompt's numbers depend on its key, on how many draws came before and on the
    block's shape only -- not on B, on the other prompts in the batch, or on the device
    count. 24 bits, like torch.rand's float32. The counter lives on the host: no sync.
    """

    def __init__(self, keys: Tensor):
        self.keys = keys.to(torch.int64)  # (B,) on the draws' device, so that no draw copies it there
        self.counter = 0

    def uniform(self, shape: tuple[int, ...], device: torch.device | str | None = None) -> Tensor:
        B = self.keys.shape[0]
        if shape[0] % B:
            raise ValueError(f"a draw of {shape[0]} rows cannot be split among {B} prompts")
        self.counter += 1
        block = math.prod(shape) // B  # numbers per prompt
        keys = self.keys.to(device)  # (B,)
        stream = splitmix64(keys + _int64(self.counter * _GOLDEN % _TWO64)).unsqueeze(1)  # (B, 1) c * G mod 2**64
        index = torch.arange(1, block + 1, dtype=torch.int64, device=keys.device) * _GOLDEN  # (block,)
        bits = splitmix64(stream + index)  # (B, block)
        return (_shift_right(bits, 40).to(torch.float32) * 2.0**-24).reshape(shape)  # (N, ...) in [0, 1)


class UniformSource(Protocol):
    """What `entrgi.uniform` accepts besides a torch.Generator: the injection point of every random number.

    uniform(shape, device) -> U[0, 1) float32 of exactly `shape`. `CounterRNG` (run.py's per-prompt
    streams) and `GivenUniforms` (numbers given in advance) are the two in the project.
    """

    def uniform(self, shape: tuple[int, ...], device: torch.device | str | None = None) -> Tensor: ...


class GivenUniforms:
    """Uniforms supplied in advance, handed out in order: a test's or a port's control of every draw.

    draws: one array per draw, in the order the project draws them (docs/draws.md: per step,
    the M guide draws, then the token draw, then `origin`'s fill draw). Each must have exactly
    the shape asked for and values in [0, 1) (float32). A draw asked for beyond the list, or of
    another shape, raises ValueError naming the draw. `taken` counts the draws handed out and
    `shapes` records their shapes, so a test can check a generation consumed all of them.
    """

    def __init__(self, draws: Sequence):
        self.draws = [torch.as_tensor(d, dtype=torch.float32) for d in draws]
        for n, u in enumerate(self.draws):
            if not bool(((u >= 0) & (u < 1)).all()):
                raise ValueError(f"given draw {n}: uniforms must lie in [0, 1)")
        self.taken = 0
        self.shapes: list[tuple[int, ...]] = []

    def uniform(self, shape: tuple[int, ...], device: torch.device | str | None = None) -> Tensor:
        n = self.taken
        if n >= len(self.draws):
            raise ValueError(f"draw {n} of shape {tuple(shape)} asked for, but only {len(self.draws)} draws were given")
        if tuple(self.draws[n].shape) != tuple(shape):
            raise ValueError(f"draw {n}: shape {tuple(shape)} asked for, {tuple(self.draws[n].shape)} given")
        self.taken += 1
        self.shapes.append(tuple(shape))
        return self.draws[n].to(device)
