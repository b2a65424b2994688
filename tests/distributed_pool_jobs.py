"""A job whose one step is in the ``gpu`` pool, for tests/test_distributed_pipeline.py.

Two runs of it (separate processes, one Postgres instance) must be serialised by the pool. The step
holds its slot until it can tell which way the race went: the other run of its group either logged
"blocked by limit for pool gpu" (this run got the slot first) or already finished its step (this
run went second). If the pool let both in at once, neither happens and the step fails after a
deadline — the test then also finds the two steps overlapping in the event log.
"""

import time

import dagster as dg

GROUP_TAG = "distil/test-group"
BLOCKED = "blocked by limit for pool gpu"


def _other_runs(context: dg.OpExecutionContext):
    group = context.run.tags[GROUP_TAG]
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={GROUP_TAG: group}))
    return [r for r in runs if r.run_id != context.run_id]


@dg.op(pool="gpu")
def hold_gpu(context: dg.OpExecutionContext) -> str:
    deadline = time.monotonic() + 180  # the race resolves within seconds; a failure should not cost CI 10 min
    while time.monotonic() < deadline:
        for run in _other_runs(context):
            records = context.instance.all_logs(run.run_id)
            if any(BLOCKED in (r.user_message or "") for r in records):
                return "first"
            if any(r.dagster_event and r.dagster_event.event_type_value == "STEP_SUCCESS" for r in records):
                return "second"
        time.sleep(0.5)
    raise RuntimeError("the other run neither waited for the gpu slot nor finished its step")


@dg.job(executor_def=dg.in_process_executor)
def gpu_pool_job():
    hold_gpu()
