"""The end-of-fit summary: every counter says what it counts, and the numbers reconcile."""

from __future__ import annotations

from lightning_async._engine.base import Telemetry


def _row(gradients: int, samples: int) -> dict[str, float]:
    return {"gradients": gradients, "samples": samples, "samples_per_s": 10.0, "wait_fraction": 0.0}


def _telemetry(workers: int, **extra) -> Telemetry:
    counters = {"gradients": 256, "received": 99, "applied": 97, "rejected_stale": 1, "rejected_nonfinite": 1,
                "deferred": 157, "samples": 3000}
    return Telemetry(counters=counters, per_worker=[_row(197, 2300), _row(59, 700)][:workers],
                     staleness_histogram=[50, 47], max_staleness=2, bound_policy="accumulate", version=97,
                     extra=extra)


def test_the_summary_names_what_each_count_is():
    text = _telemetry(2, engine="shared_memory").summary()
    assert text.splitlines()[0] == (
        "lightning_async: 2 workers, engine 'shared_memory', bound policy 'accumulate', max_staleness 2"
    )
    assert "gradients computed: 256 (worker 0: 197, worker 1: 59)" in text
    assert "updates: 97 applied, 1 rejected as too stale, 1 rejected as non-finite (of 99 received)" in text
    assert "held back: 157 times a gradient waited for the bound and was averaged into the same worker's next" in text
    assert "deferred" not in text and "received 99, applied" not in text


def test_one_worker_is_singular_and_owners_are_named():
    assert _telemetry(1).summary().startswith("lightning_async: 1 worker, bound policy")
    text = _telemetry(2, engine="parameter_server", owners=[0, 1]).summary()
    assert "engine 'parameter_server' (2 owners)" in text
    assert "updates, counted per owner (2 owners each apply their blocks' part): 97 applied" in text
    assert text.count("counted per owner") == 2
