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


The implementation lives with the simulated engine that uses it; this is its public home.
"""

from lightning_async._engine.speeds import (
    SPEC_HELP,
    SpeedProfile,
    WorkerClock,
)

__all__ = ["SPEC_HELP", "SpeedProfile", "WorkerClock"]
