"""Speed profiles of virtual workers: how long each computation takes in virtual time.

A profile is written as a ``SPEC`` string of ``+``-separated parts, at most one of each kind::

    base   const:D              every worker takes D time units per gradient (default const:1)
           linear:MIN:MAX       worker p of P takes MIN + (MAX - MIN) * p / (P - 1) (heterogeneous hardware)
           list:D0,D1,...       worker p takes D[p mod len(D)]
           slow:N:F             the last N workers are F times slower than the others (which take 1)
    noise  lognormal:SIGMA      each step multiplied by exp(N(0, SIGMA^2) - SIGMA^2 / 2) (mean one)
           exponential          each step multiplied by an Exp(1) draw (mean one)
           uniform:LO:HI        each step multiplied by a U(LO, HI) draw
    episodes straggler:PROB:FACTOR:LENGTH
                                at each step a worker that is not straggling starts an episode with probability
                                PROB; during an episode (LENGTH steps) its durations are multiplied by FACTOR

Example: ``linear:1:4+lognormal:0.3+straggler:0.01:20:50``.
All random draws come from the ``torch.Generator`` handed to :meth:`SpeedProfile.bind`, so the same seed gives the
same durations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SPEC_HELP = __doc__.split("::", 1)[1].split("All random", 1)[0].strip("\n")

_BASES = ("const", "linear", "list", "slow")
_NOISES = ("lognormal", "exponential", "uniform")


def _spec_error(spec: str, problem: str) -> ValueError:
    return ValueError(
        f"--speeds / speeds={spec!r}: {problem}. Write '+'-separated parts such as "
        f"'linear:1:4+lognormal:0.3+straggler:0.01:20:50'; parts: const:D, linear:MIN:MAX, list:D0,D1,..., "
        f"slow:N:F, lognormal:SIGMA, exponential, uniform:LO:HI, straggler:PROB:FACTOR:LENGTH."
    )


def _floats(spec: str, part: str, args: Sequence[str], count: int) -> list[float]:
    if len(args) != count:
        raise _spec_error(spec, f"part {part!r} takes {count} argument(s), got {len(args)}")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise _spec_error(spec, f"part {part!r} has a non-numeric argument") from None
    if not all(math.isfinite(v) for v in values):
        raise _spec_error(spec, f"part {part!r} has a non-finite argument")
    return values


class _Draws:
    """Uniform and normal draws from one generator, taken in chunks (deterministic for a given call order)."""

    def __init__(self, generator: torch.Generator, chunk: int = 4096) -> None:
        self._gen = generator
        self._chunk = chunk
        self._u: list[float] = []
        self._n: list[float] = []

    def uniform(self) -> float:
        if not self._u:
            self._u = torch.rand(self._chunk, generator=self._gen, dtype=torch.float64).tolist()[::-1]
        return self._u.pop()

    def normal(self) -> float:
        if not self._n:
            self._n = torch.randn(self._chunk, generator=self._gen, dtype=torch.float64).tolist()[::-1]
        return self._n.pop()


@dataclass(frozen=True)
class SpeedProfile:
    """A parsed speed ``SPEC`` (see the module docstring); :meth:`bind` turns it into durations for P workers.

    Attributes:
        spec: the text it was parsed from.
        base: ``(kind, args)`` of the per-worker base duration.
        noise: ``(kind, args)`` of the per-step multiplicative noise, or ``None``.
        straggler: ``(prob, factor, length)`` of straggler episodes, or ``None``.
    """

    spec: str
    base: tuple[str, tuple[float, ...]]
    noise: tuple[str, tuple[float, ...]] | None
    straggler: tuple[float, float, int] | None

    @classmethod
    def parse(cls, spec: str) -> SpeedProfile:
        """Parse a ``SPEC`` string.

        Raises:
            ValueError: naming the spec, the faulty part and the accepted syntax.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise _spec_error(str(spec), "it is empty")
        base: tuple[str, tuple[float, ...]] | None = None
        noise: tuple[str, tuple[float, ...]] | None = None
        straggler: tuple[float, float, int] | None = None
        for part in spec.replace(" ", "").split("+"):
            kind, *args = part.split(":")
            if kind in _BASES:
                if base is not None:
                    raise _spec_error(spec, f"more than one base part ({base[0]!r} and {kind!r})")
                if kind == "const":
                    values = _floats(spec, part, args or ["1"], 1)
                elif kind == "linear":
                    values = _floats(spec, part, args, 2)
                elif kind == "list":
                    if len(args) != 1 or not args[0]:
                        raise _spec_error(spec, f"part {part!r} needs comma-separated durations, e.g. list:1,1,2")
                    values = _floats(spec, part, args[0].split(","), len(args[0].split(",")))
                else:
                    values = _floats(spec, part, args, 2)
                    if values[0] < 0 or values[0] != int(values[0]):
                        raise _spec_error(spec, f"part {part!r}: N must be a non-negative integer")
                if kind != "slow" and min(values) <= 0:
                    raise _spec_error(spec, f"part {part!r}: durations must be > 0")
                if kind == "slow" and values[1] <= 0:
                    raise _spec_error(spec, f"part {part!r}: the slow-down factor F must be > 0")
                base = (kind, tuple(values))
            elif kind in _NOISES:
                if noise is not None:
                    raise _spec_error(spec, f"more than one noise part ({noise[0]!r} and {kind!r})")
                if kind == "lognormal":
                    values = _floats(spec, part, args, 1)
                    if values[0] < 0:
                        raise _spec_error(spec, f"part {part!r}: SIGMA must be >= 0")
                elif kind == "exponential":
                    values = _floats(spec, part, args, 0)
                else:
                    values = _floats(spec, part, args, 2)
                    if not 0 < values[0] <= values[1]:
                        raise _spec_error(spec, f"part {part!r}: need 0 < LO <= HI")
                noise = (kind, tuple(values))
            elif kind == "straggler":
                if straggler is not None:
                    raise _spec_error(spec, "more than one straggler part")
                prob, factor, length = _floats(spec, part, args, 3)
                if not 0 <= prob <= 1 or factor <= 0 or length < 1 or length != int(length):
                    raise _spec_error(spec, f"part {part!r}: need 0 <= PROB <= 1, FACTOR > 0, integer LENGTH >= 1")
                straggler = (prob, factor, int(length))
            else:
                raise _spec_error(spec, f"unknown part {kind!r}")
        return cls(spec=spec, base=base or ("const", (1.0,)), noise=noise, straggler=straggler)

    def base_durations(self, workers: int) -> list[float]:
        """The fixed per-worker durations (before noise and straggler episodes) of ``workers`` workers."""
        kind, args = self.base
        if kind == "const":
            return [args[0]] * workers
        if kind == "linear":
            lo, hi = args
            return [lo + (hi - lo) * p / (workers - 1) if workers > 1 else lo for p in range(workers)]
        if kind == "list":
            return [args[p % len(args)] for p in range(workers)]
        n_slow, factor = int(args[0]), args[1]
        return [factor if p >= workers - n_slow else 1.0 for p in range(workers)]

    def bind(self, workers: int, generator: torch.Generator) -> WorkerClock:
        """Return the duration source of ``workers`` workers drawing from ``generator``."""
        return WorkerClock(self, workers, generator)


class WorkerClock:
    """Durations of successive computations of each worker, for one run (stateful: straggler episodes)."""

    def __init__(self, profile: SpeedProfile, workers: int, generator: torch.Generator) -> None:
        self.profile = profile
        self.base = profile.base_durations(workers)
        self._draws = _Draws(generator)
        self._episode_left = [0] * workers
        self.straggling_steps = 0
        """Number of computations that ran inside a straggler episode."""

    def duration(self, worker: int) -> float:
        """Virtual duration of the next computation of ``worker``."""
        d = self.base[worker]
        noise = self.profile.noise
        if noise is not None:
            kind, args = noise
            if kind == "lognormal":
                sigma = args[0]
                d *= math.exp(sigma * self._draws.normal() - 0.5 * sigma * sigma)
            elif kind == "exponential":
                d *= -math.log1p(-self._draws.uniform())
            else:
                d *= args[0] + (args[1] - args[0]) * self._draws.uniform()
        strag = self.profile.straggler
        if strag is not None:
            prob, factor, length = strag
            left = self._episode_left[worker]
            if left == 0 and self._draws.uniform() < prob:
                left = length
            if left > 0:
                self._episode_left[worker] = left - 1
                self.straggling_steps += 1
                d *= factor
        return max(d, 1e-12)
