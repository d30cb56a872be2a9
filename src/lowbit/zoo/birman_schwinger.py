"""A small float Birman–Schwinger operator core: an example model with a complex-valued output.

For a potential ``V`` on a 1-D grid of ``N`` points and a spectral parameter ``z`` near the real
axis, the Birman–Schwinger operator is

    K(z) = |V|^{1/2} R_0(z) V^{1/2},        V^{1/2} = sign(V) |V|^{1/2},

where ``R_0(z) = (-d²/dx² - z)^{-1}`` is the free resolvent. On the line its kernel is the
outgoing Green's function

    R_0(z)[i, j] = i / (2k) · exp(i k |i - j|),     k = sqrt(z), Im k > 0,

and here ``z = 1 + i·epsilon`` (grid spacing 1), so the kernel decays like
``exp(-Im k · |i - j|)``. :class:`BirmanSchwingerCore` applies this operator to learned
features of the potential and mixes the result with a second real linear map::

    u  = proj(v)                                  (B, N) real      Linear N -> N
    a  = V^{1/2} ⊙ u                               (B, N) real
    r  = a @ R_0ᵀ                                  (B, N) complex   fixed kernel, a buffer
    g  = g_point(|V|^{1/2} ⊙ r)                    (B, N) complex   = K(z) u
    G  = out(Re g) + i · out(Im g)                 (B, N) complex   Linear N -> N, no bias

Both learned layers are ordinary real ``nn.Linear`` modules, so they quantize like any other;
``g_point`` is a :class:`lowbit.nn.ComplexPoint` (identity in float), where a recipe quantizes
the complex intermediate with its real and imaginary parts on separate grids. The kernel is
applied as two real products (``a @ Re R_0ᵀ`` and ``a @ Im R_0ᵀ``) and is rebuilt from
``epsilon``, not saved in the state dict.

``causal=True`` keeps only the lower triangle (``j <= i``) of the kernel and of both weights,
so output ``i`` depends on ``v[: i + 1]`` alone (for language models): the weights' upper
triangles start at zero and :meth:`BirmanSchwingerCore.enforce_causal_` restores them after
an optimizer step. Zero is exact on every lowbit grid, so quantization keeps causality.
"""

from __future__ import annotations

import cmath
import math

import torch
from torch import nn

from lowbit.errors import ConfigError, InputError, check_int_range
from lowbit.nn.complex import ComplexPoint

_MAX_SEED = 2**63 - 1


def free_resolvent_kernel(n_seq: int, epsilon: float) -> torch.Tensor:
    """The (n_seq, n_seq) complex64 kernel ``i/(2k) · exp(i k |i - j|)``, ``k = sqrt(1 + i·epsilon)``."""
    k = cmath.sqrt(complex(1.0, epsilon))  # principal root: Im k > 0 for epsilon > 0
    distance = torch.arange(n_seq, dtype=torch.float64)
    distance = (distance[:, None] - distance[None, :]).abs()  # (N, N) |i - j|
    kernel = (1j / (2 * k)) * torch.exp(1j * k * distance.to(torch.complex128))  # (N, N)
    return kernel.to(torch.complex64)


class BirmanSchwingerCore(nn.Module):
    """``v`` (B, n_seq) real potential -> ``G`` (B, n_seq) complex64 features (see module doc).

    ``epsilon`` > 0 is the imaginary part of the spectral parameter ``z = 1 + i·epsilon``; larger
    values make the resolvent more local; ``causal`` makes output ``i`` depend on ``v[:i+1]``
    only (see the module doc). Weights are initialised from ``seed`` with a private
    generator, so two cores built with the same arguments are identical and building one does
    not touch PyTorch's global random state.
    """

    def __init__(self, n_seq: int = 64, epsilon: float = 1.0, seed: int = 0,
                 causal: bool = False):
        super().__init__()
        check_int_range("n_seq", n_seq, 1, 16384)
        if (isinstance(epsilon, bool) or not isinstance(epsilon, (int, float))
                or not math.isfinite(epsilon) or epsilon <= 0):
            raise ConfigError("epsilon", epsilon, "a finite number > 0",
                              "pass e.g. epsilon=1.0 (the resolvent's decay needs Im z > 0)")
        check_int_range("seed", seed, 0, _MAX_SEED)
        if not isinstance(causal, bool):
            raise ConfigError("causal", causal, "True or False",
                              "pass causal=True for a language model's sequence mixing")
        self.n_seq = n_seq
        self.causal = causal
        self.epsilon = float(epsilon)
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from it
            self.proj = nn.Linear(n_seq, n_seq)
            self.out = nn.Linear(n_seq, n_seq, bias=False)
        self.g_point = ComplexPoint()
        kernel = free_resolvent_kernel(n_seq, self.epsilon)
        if causal:
            kernel = torch.tril(kernel)
        self.register_buffer("kernel_real", kernel.real.contiguous(), persistent=False)
        self.register_buffer("kernel_imag", kernel.imag.contiguous(), persistent=False)
        self._init_weights(seed)
        self.enforce_causal_()

    @property
    def kernel(self) -> torch.Tensor:
        """The (n_seq, n_seq) complex kernel in use (lower triangle only when causal)."""
        return torch.complex(self.kernel_real, self.kernel_imag)

    def enforce_causal_(self) -> "BirmanSchwingerCore":
        """With ``causal``, zero the upper triangles of ``proj.weight`` and ``out.weight``
        (in place; a no-op otherwise). Call it after each optimizer step when training."""
        if self.causal:
            with torch.no_grad():
                for layer in (self.proj, self.out):
                    weight = getattr(layer, "weight", None)
                    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
                        weight.copy_(torch.tril(weight))
        return self

    def _init_weights(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(self.n_seq)
        with torch.no_grad():
            for weight in (self.proj.weight, self.out.weight):
                weight.copy_(torch.empty_like(weight).uniform_(-bound, bound, generator=generator))
            self.proj.bias.copy_(torch.empty_like(self.proj.bias).uniform_(-bound, bound,
                                                                           generator=generator))

    def extra_repr(self) -> str:
        """Show the grid size and spectral parameter in ``repr``."""
        return f"n_seq={self.n_seq}, epsilon={self.epsilon}, causal={self.causal}"

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """(B, n_seq) real potential -> (B, n_seq) complex features ``G``."""
        if v.is_complex() or not v.is_floating_point() or v.dim() != 2 or v.shape[1] != self.n_seq:
            raise InputError(f"BirmanSchwingerCore expects a real floating tensor of shape "
                             f"(B, {self.n_seq}), got {v.dtype} {tuple(v.shape)}; pass the "
                             f"potential as float32 (batch, n_seq)")
        root = v.abs().clamp_min(1e-12).sqrt()  # (B, N) |V|^{1/2}; clamp keeps grads finite at 0
        u = self.proj(v)  # (B, N)
        a = torch.sign(v) * root * u  # (B, N) V^{1/2} u
        r_real = a @ self.kernel_real.T  # (B, N) Re R_0(z) V^{1/2} u
        r_imag = a @ self.kernel_imag.T  # (B, N) Im R_0(z) V^{1/2} u
        g = self.g_point(torch.complex(root * r_real, root * r_imag))  # (B, N) K(z) u
        return torch.complex(self.out(g.real), self.out(g.imag))  # (B, N) complex


def potential_batches(n_batches: int = 8, batch: int = 8, n_seq: int = 64,
                      seed: int = 0) -> list[torch.Tensor]:
    """``n_batches`` smooth random potentials, each a float32 tensor (batch, n_seq).

    Each potential is Gaussian noise smoothed by a moving average over 5 points (circular), so
    neighbouring grid points are correlated, plus a random offset; values are of order 1 and
    take both signs. Drawn from a private generator seeded by ``seed``.
    """
    check_int_range("n_batches", n_batches, 1, 1_000_000)
    check_int_range("batch", batch, 1, 1_000_000)
    check_int_range("n_seq", n_seq, 1, 16384)
    check_int_range("seed", seed, 0, _MAX_SEED)
    generator = torch.Generator().manual_seed(seed)
    window = 5
    batches = []
    for _ in range(n_batches):
        noise = torch.randn(batch, n_seq, generator=generator)  # (B, N)
        smooth = sum(torch.roll(noise, shift, dims=1) for shift in range(-(window // 2),
                                                                         window // 2 + 1))
        offset = 0.5 * torch.randn(batch, 1, generator=generator)  # (B, 1)
        batches.append((smooth / math.sqrt(window) + offset).contiguous())
    return batches
