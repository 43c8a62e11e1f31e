r"""Toy 2-D densities for demos, tests and benchmarks.

Each density is a small object with ``sample(n, seed=None) -> (n, 2)`` and, where the density is
known in closed form (checkerboard, eight Gaussians, circles, rings), ``log_prob(x)``: the exact
normalised log-density, so that a fitted flow ``q`` can report its gap to the truth

.. math:: \mathrm{KL}(p \,\|\, q) \approx \frac1N \sum_i \log p(x_i) - \log q(x_i), \qquad x_i \sim p.

Samples are drawn in float64 and returned in the requested dtype (default: torch's default
dtype). ``seed=None`` draws from torch's global generator, so ``torch.manual_seed`` controls it.

References:
    Grathwohl et al., "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
    Models", ICLR 2019 (the toy suite: checkerboard, eight Gaussians, pinwheel, two spirals, rings).
    Durkan et al., "Neural Spline Flows", NeurIPS 2019 (checkerboard as a spline benchmark).
    Johnson et al., "Composing graphical models with neural networks", NeurIPS 2016 (pinwheel).

Example:
    >>> import math
    >>> from torchnf import datasets
    >>> board = datasets.get("checkerboard")
    >>> x = board.sample(1000, seed=0)
    >>> bool((board.log_prob(x) == -math.log(8)).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "ToyDensity",
    "Moons",
    "Circles",
    "Checkerboard",
    "EightGaussians",
    "Pinwheel",
    "TwoSpirals",
    "Rings",
    "TOY_DENSITIES",
    "get",
    "names",
]

_LOG_2PI = math.log(2 * math.pi)


class ToyDensity:
    """Base class: a 2-D density that can be sampled and, where known, evaluated.

    Subclasses implement ``_sample(n, generator) -> (n, 2)`` float64 and, when the density is
    known, ``_log_prob(x)`` with ``has_log_prob = True``.

    Attributes:
        name: registry name.
        has_log_prob: whether :meth:`log_prob` is the exact normalised log-density.
        lim: half-width of a square ``[-lim, lim]^2`` that holds essentially all the mass
            (used for plots and grids).

    Example:
        >>> rings = get("rings")
        >>> x = rings.sample(1000, seed=0)                  # (1000, 2)
        >>> entropy = -rings.log_prob(x.double()).mean()    # Monte Carlo estimate, nats
    """

    name: str = ""
    has_log_prob: bool = False
    lim: float = 4.0

    def sample(self, n: int, seed: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Draw ``n`` points, shape ``(n, 2)``; ``seed`` makes the draw reproducible."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: n must be a non-negative integer, got {n!r}")
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        return self._sample(n, gen).to(dtype or torch.get_default_dtype())

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of ``x`` of shape ``(*batch, 2)``; returns ``(*batch)``."""
        if not self.has_log_prob:
            raise NotImplementedError(f"{type(self).__name__} has no closed-form log-density")
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[-1] != 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__}.log_prob: expected a float tensor of shape (*batch, 2), got {got}"
            )
        return self._log_prob(x)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _rand(n: int, gen: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=gen, dtype=torch.float64)


def _randn(n: int, gen: torch.Generator | None, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64)


def _choice(n: int, k: int, gen: torch.Generator | None, weights: Tensor | None = None) -> Tensor:
    """``n`` component indices in ``[0, k)``, uniform or with the given weights."""
    if weights is None:
        return torch.randint(0, k, (n,), generator=gen)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def _polar(r: Tensor, theta: Tensor) -> Tensor:
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1)


class Moons(ToyDensity):
    """Two interleaving half circles with isotropic Gaussian noise (no closed-form density).

    The unit half circles ``(cos t, sin t)`` and ``(1 - cos t, 1/2 - sin t)``, ``t ~ U[0, pi]``,
    get noise ``N(0, noise^2 I)`` and are mapped by ``2 x + (-1, -0.2)`` to centre them.

    Example:
        >>> Moons().sample(4, seed=0).shape
        torch.Size([4, 2])
    """

    name = "moons"
    lim = 4.0

    def __init__(self, noise: float = 0.1) -> None:
        self.noise = float(noise)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        t = math.pi * _rand(n, gen)
        lower = _choice(n, 2, gen).bool()
        upper_pts = torch.stack([torch.cos(t), torch.sin(t)], -1)
        lower_pts = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1)
        x = torch.where(lower[:, None], lower_pts, upper_pts) + self.noise * _randn(n, gen, 2)
        return 2 * x + torch.tensor([-1.0, -0.2], dtype=torch.float64)


class _RingMixture(ToyDensity):
    """Shared parts of :class:`Circles` and :class:`Rings`: rings of radii ``R_k``, weights ``w_k``."""

    has_log_prob = True

    def __init__(self, radii: Sequence[float], std: float, weights: Sequence[float] | None = None) -> None:
        name = type(self).__name__
        if len(radii) == 0 or any(r <= 0 for r in radii):
            raise ValueError(f"{name}: radii must be a non-empty list of positive numbers, got {radii!r}")
        if std <= 0:
            raise ValueError(f"{name}: std must be positive, got {std!r}")
        w = torch.tensor(weights if weights is not None else [1.0] * len(radii), dtype=torch.float64)
        if w.shape != (len(radii),) or bool((w <= 0).any()):
            raise ValueError(f"{name}: expected {len(radii)} positive weights, got {weights!r}")
        self.radii = tuple(float(r) for r in radii)
        self.std = float(std)
        self.weights = w / w.sum()
        self.lim = max(4.0, math.ceil(max(self.radii) + 4 * self.std))

    def _tables(self, x: Tensor) -> tuple[Tensor, Tensor]:
        radii = torch.tensor(self.radii, dtype=x.dtype, device=x.device)
        return radii, self.weights.to(dtype=x.dtype, device=x.device).log()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(radii={self.radii}, std={self.std})"


class Circles(_RingMixture):
    r"""Concentric circles with isotropic Gaussian noise (exact log-density).

    A point is ``R_k (cos t, sin t) + N(0, s^2 I)`` with ``t ~ U[0, 2 pi)``. Averaging the
    Gaussian over the angle gives a modified Bessel function:

    .. math:: p(x) = \sum_k \frac{w_k}{2\pi s^2} \exp\!\Big(-\frac{(r - R_k)^2}{2 s^2}\Big)\,
              \tilde I_0\!\Big(\frac{r R_k}{s^2}\Big), \qquad r = \lVert x \rVert,

    with the exponentially scaled :math:`\tilde I_0(z) = e^{-z} I_0(z)` (stable for any ``r``).
    The defaults are the classic ``make_circles(factor=0.5, noise=0.08)`` scaled by 3.

    Example:
        >>> c = Circles()
        >>> c.log_prob(c.sample(3, seed=0)).shape
        torch.Size([3])
    """

    name = "circles"

    def __init__(self, radii: Sequence[float] = (1.5, 3.0), std: float = 0.24) -> None:
        super().__init__(radii, std)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        k = _choice(n, len(self.radii), gen, self.weights)
        r = torch.tensor(self.radii, dtype=torch.float64)[k]
        return _polar(r, 2 * math.pi * _rand(n, gen)) + self.std * _randn(n, gen, 2)

    def _log_prob(self, x: Tensor) -> Tensor:
        radii, log_w = self._tables(x)
        r = x.norm(dim=-1, keepdim=True)
        s2 = self.std**2
        terms = log_w - (r - radii) ** 2 / (2 * s2) + torch.special.i0e(r * radii / s2).log()
        return torch.logsumexp(terms, -1) - math.log(2 * math.pi * s2)


class Rings(_RingMixture):
    r"""Concentric rings with Gaussian radial noise (exact log-density).

    A point is ``rho (cos t, sin t)`` with ``t ~ U[0, 2 pi)`` and ``rho = |R_k + s e|``,
    ``e ~ N(0, 1)``, ring ``k`` drawn with weight ``w_k``. The radius has the folded-normal mixture
    density ``p_rho(rho) = sum_k w_k [N(rho; R_k, s^2) + N(rho; -R_k, s^2)]`` on ``rho >= 0``, and
    the change to Cartesian coordinates (``dx = rho drho dt``) divides it by ``2 pi rho``:

    .. math:: p(x) = \frac{p_\rho(\lVert x \rVert)}{2 \pi \lVert x \rVert}.

    The density is integrably infinite at the origin only through the folded term, which is
    below ``1e-12`` for the defaults (innermost radius 7.5 standard deviations from 0).

    Example:
        >>> rings = Rings()
        >>> rings.log_prob(torch.tensor([[1.5, 0.0]])) > rings.log_prob(torch.tensor([[1.9, 0.0]]))
        tensor([True])
    """

    name = "rings"

    def __init__(
        self,
        radii: Sequence[float] = (0.75, 1.5, 2.25, 3.0),
        std: float = 0.1,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(radii, std, weights)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        k = _choice(n, len(self.radii), gen, self.weights)
        rho = (torch.tensor(self.radii, dtype=torch.float64)[k] + self.std * _randn(n, gen)).abs()
        return _polar(rho, 2 * math.pi * _rand(n, gen))

    def _log_prob(self, x: Tensor) -> Tensor:
        radii, log_w = self._tables(x)
        rho = x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        s = self.std
        near = log_w - (rho - radii) ** 2 / (2 * s * s)
        far = log_w - (rho + radii) ** 2 / (2 * s * s)
        log_p_rho = torch.logsumexp(torch.cat([near, far], -1), -1) - math.log(s) - 0.5 * _LOG_2PI
        return log_p_rho - torch.log(2 * math.pi * rho.squeeze(-1))


class Checkerboard(ToyDensity):
    r"""Uniform density on the 8 black squares of a 4 x 4 board on ``[-2, 2]^2`` (exact log-density).

    Layout: unit squares ``[i, i+1) x [j, j+1)`` for integers ``i, j`` in ``[-2, 1]``; a square is
    black when ``i + j`` is even (so the square touching ``(-2, -2)`` is black). The density is
    ``1/8`` on black squares and 0 elsewhere, hence the true test log-likelihood is
    ``-log 8 = -2.0794`` nats. (This is the classic checkerboard of FFJORD and NSF before their
    factor-2 rescaling, which would give ``-log 32``.)

    Example:
        >>> board = Checkerboard()
        >>> board.log_prob(torch.tensor([[-1.5, -1.5], [-0.5, -1.5]]))
        tensor([-2.0794,    -inf])
    """

    name = "checkerboard"
    has_log_prob = True
    lim = 2.5
    true_log_likelihood = -math.log(8.0)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        x1 = 4 * _rand(n, gen) - 2
        row = _rand(n, gen) - 2 * _choice(n, 2, gen).to(torch.float64)
        x2 = row + torch.remainder(torch.floor(x1), 2)
        return torch.stack([x1, x2], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        cells = torch.floor(x).clamp(-2, 1)
        black = torch.remainder(cells.sum(-1), 2) == 0
        inside = (x.abs() <= 2).all(-1)
        value = torch.full_like(x[..., 0], -math.log(8.0))
        return torch.where(black & inside, value, torch.full_like(value, -math.inf))


class EightGaussians(ToyDensity):
    r"""Equal mixture of 8 isotropic Gaussians centred on a circle (exact log-density).

    .. math:: p(x) = \frac18 \sum_{k=0}^{7} \mathcal N\big(x;\, R(\cos\tfrac{k\pi}4, \sin\tfrac{k\pi}4),
              s^2 I\big).

    The defaults (``R = 2 sqrt 2``, ``s = sqrt 2 / 4``) are the classic layout (radius 4,
    standard deviation 0.5, divided by ``sqrt 2``).

    Example:
        >>> g = EightGaussians()
        >>> g.log_prob(g.sample(2, seed=0)).shape
        torch.Size([2])
    """

    name = "eight_gaussians"
    has_log_prob = True

    def __init__(self, radius: float = 2 * math.sqrt(2), std: float = math.sqrt(2) / 4) -> None:
        if radius <= 0 or std <= 0:
            raise ValueError(f"EightGaussians: radius and std must be positive, got {radius!r}, {std!r}")
        self.radius, self.std = float(radius), float(std)

    def _centres(self, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
        angles = torch.arange(8, dtype=dtype, device=device) * (math.pi / 4)
        return _polar(torch.full_like(angles, self.radius), angles)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        k = _choice(n, 8, gen)
        return self._centres(torch.float64)[k] + self.std * _randn(n, gen, 2)

    def _log_prob(self, x: Tensor) -> Tensor:
        d2 = ((x.unsqueeze(-2) - self._centres(x.dtype, x.device)) ** 2).sum(-1)
        s2 = self.std**2
        return torch.logsumexp(-d2 / (2 * s2), -1) - math.log(8 * 2 * math.pi * s2)

    def __repr__(self) -> str:
        return f"EightGaussians(radius={self.radius:.4g}, std={self.std:.4g})"


class Pinwheel(ToyDensity):
    """Five curved arms: Gaussian blobs rotated by an angle that grows with their radius.

    A point ``f = (1 + 0.3 e_1, 0.1 e_2)`` of arm ``k`` is rotated by
    ``2 pi k / 5 + 0.25 exp(f_1)`` and scaled by 2 (no closed-form density).

    Example:
        >>> Pinwheel().sample(5, seed=0).shape
        torch.Size([5, 2])
    """

    name = "pinwheel"

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        arm = _choice(n, 5, gen).to(torch.float64)
        f = _randn(n, gen, 2) * torch.tensor([0.3, 0.1], dtype=torch.float64)
        f[:, 0] += 1.0
        angle = 2 * math.pi * arm / 5 + 0.25 * torch.exp(f[:, 0])
        c, s = torch.cos(angle), torch.sin(angle)
        return 2 * torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], -1)


class TwoSpirals(ToyDensity):
    """Two interleaved spiral arms with uniform and Gaussian noise (no closed-form density).

    Example:
        >>> TwoSpirals().sample(5, seed=0).shape
        torch.Size([5, 2])
    """

    name = "two_spirals"

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        t = torch.sqrt(_rand(n, gen)) * (3 * math.pi)
        arm = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], -1) + 0.5 * _rand(n, gen, 2)
        sign = 1 - 2 * _choice(n, 2, gen).to(torch.float64)
        return sign[:, None] * arm / 3 + 0.1 * _randn(n, gen, 2)


TOY_DENSITIES: dict[str, type[ToyDensity]] = {
    cls.name: cls for cls in (Moons, Circles, Checkerboard, EightGaussians, Pinwheel, TwoSpirals, Rings)
}
_ALIASES = {"8gaussians": "eight_gaussians", "2spirals": "two_spirals", "spirals": "two_spirals"}


def names() -> list[str]:
    """Registered toy density names, sorted."""
    return sorted(TOY_DENSITIES)


def get(name: str, **kwargs: float) -> ToyDensity:
    """Build a toy density by name (case-insensitive; ``-`` and ``_`` interchangeable).

    Raises:
        ValueError: for an unknown name, listing the choices.
    """
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key.replace("_", ""), _ALIASES.get(key, key))
    if key not in TOY_DENSITIES:
        raise ValueError(f"unknown toy density {name!r}; choose from {', '.join(names())}")
    return TOY_DENSITIES[key](**kwargs)
