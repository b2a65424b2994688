"""guidellm's command line with one upstream race fixed: ``python -m distil_platform.serving.guidellm_cli run ...``.

guidellm 0.8.1's Poisson strategy (``AsyncPoissonStrategy.init_processes_start``) first sets the
shared start time *and the event that releases the worker processes*, and only then moves the
arrival clock's offset from its initial ``-1.0`` to the start time. A worker that wakes in between
draws its first arrival times from ``-1.0`` (1970): every one of them is already due, so the
requests go out in one burst instead of at the offered rate. guidellm reports it as "p95 root
dispatch delay was 1796161372 s" (the Unix time: a target of ~0); on the 2-core machine it hit the
first rate of a sweep in the `make run` of 2026-12-01 21:30 UTC (81 requests in flight at an
offered 0.5 req/s). The race needs the main process to be slower than the woken worker, which is
what a loaded small machine makes likely.

:func:`fix_poisson_start` sets the offset before the event.

A second one (issue 31): every worker process seeds its own ``random.Random(random_seed)``, so with
N worker processes each gap of the Poisson schedule is drawn N times over (runs of N equal gaps:
bursts, not Poisson arrivals). :func:`fix_poisson_seeds` seeds worker ``i > 0`` with
``f"{random_seed}:{i}"`` (worker 0 keeps ``random_seed``, so one-worker runs are unchanged); the
workers still add their gaps to the shared arrival clock, so the merged arrivals are one Poisson
process. guidellm starts its workers with ``spawn``, which imports this module again in each
worker as ``__mp_main__``: that import applies the patch there, where the gaps are drawn.

Nothing else in guidellm changes. :mod:`distil_platform.serving.loadtest` runs guidellm through this
module.
"""

from __future__ import annotations

import random
import sys


def fix_poisson_start() -> bool:
    """Patch ``AsyncPoissonStrategy.init_processes_start`` to set the arrival offset first, then
    the start time and the release event. Returns False (and changes nothing) if guidellm's
    strategy no longer has the attributes this relies on."""
    try:
        from guidellm.scheduler.strategies import AsyncPoissonStrategy, SchedulingStrategy
    except ImportError:
        return False
    if not hasattr(AsyncPoissonStrategy, "init_processes_start") or "_offset" not in getattr(
            AsyncPoissonStrategy, "__private_attributes__", {}):
        return False

    def init_processes_start(self, start_time: float) -> None:
        if self._offset is None:
            raise RuntimeError("_offset is None in init_processes_start; was init_processes_timings not called?")
        with self._offset.get_lock():
            self._offset.value = start_time
        SchedulingStrategy.init_processes_start(self, start_time)  # start time, then the event

    init_processes_start.__doc__ = "Offset first, then start time and event (distil_platform.serving.guidellm_cli)."
    AsyncPoissonStrategy.init_processes_start = init_processes_start
    return True


def fix_poisson_seeds() -> bool:
    """Patch ``AsyncPoissonStrategy.next_request_time`` so each worker process draws its own gaps
    (seed ``f"{random_seed}:{worker_index}"``; worker 0 keeps ``random_seed``). Returns False (and
    changes nothing) if guidellm's strategy no longer has the attributes this relies on."""
    try:
        from guidellm.scheduler.strategies import AsyncPoissonStrategy
    except ImportError:
        return False
    original = getattr(AsyncPoissonStrategy, "next_request_time", None)
    if original is None or "_random" not in getattr(AsyncPoissonStrategy, "__private_attributes__", {}):
        return False
    if getattr(original, "_distil_seeded", False):
        return True

    async def next_request_time(self, worker_index: int) -> float:
        if self._random is None:
            self._random = random.Random(self.random_seed if not worker_index
                                         else f"{self.random_seed}:{worker_index}")
        return await original(self, worker_index)

    next_request_time.__doc__ = "A seed per worker process (distil_platform.serving.guidellm_cli)."
    next_request_time._distil_seeded = True
    AsyncPoissonStrategy.next_request_time = next_request_time
    return True


def main(argv: list[str] | None = None) -> int:
    fix_poisson_start()
    fix_poisson_seeds()
    from guidellm.cli import cli

    return cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="guidellm", standalone_mode=True)


if __name__ == "__mp_main__":  # a guidellm worker process spawned from main(): draws the gaps
    fix_poisson_seeds()

if __name__ == "__main__":
    raise SystemExit(main())
