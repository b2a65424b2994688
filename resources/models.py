"""Dagster resources for model access: LLM client, serving launcher, base-model store.

Thin configuration wrappers; the logic lives in ``distil_platform.llm``, ``distil_platform.serving.server``
and ``distil_platform.storage.modelstore`` (imported inside methods: loading Definitions stays light).
GPU assets declare the Dagster concurrency pool ``gpu`` so two servers/trainings never share a card.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from distil_platform.resources.store import UsesResultsStore
from pydantic import Field

# The default per-run spend cap (LLMResource.max_usd_per_run): a full frontier benchmark of one task
# fits under it; a misconfigured loop over every task and model does not run up an open-ended bill.
DEFAULT_MAX_USD_PER_RUN = 50.0


class LLMResource(UsesResultsStore):
    """Batch chat completions through litellm (frontier APIs) or straight HTTP (OpenAI-compatible servers).

    One configured resource serves teacher, frontier, judge and student calls: :meth:`client` takes a
    model, endpoint and key per call. Configure ``api_key`` with ``dg.EnvVar("...")``: it is never
    logged nor written to metadata (``LLMClient.__repr__`` omits it).

    Cache and usage rows go to ``results_store``, a nested ``ResultsStoreResource``: bind the same
    instance the Definitions bind to ``results_store`` (``LLMResource(results_store=store)``, as
    ``distil_platform.definitions`` does), so responses, usage and predictions share one database.
    """

    model: str = Field(default="", description="Default litellm model string, e.g. 'gpt-5-nano' or 'openai/<name>'.")
    api_base: str | None = Field(default=None, description="OpenAI-compatible endpoint (…/v1) for openai/<name> models.")
    api_key: str | None = Field(default=None, repr=False, description="API key; use dg.EnvVar so it is never stored in config.")
    concurrency: int = Field(default=16, description="Requests in flight per batch.")
    timeout_s: float | None = Field(
        default=None,
        description="Per-request timeout (seconds). None: derived from each request's max_tokens, "
        "max(60, 30 + max_tokens / 20) (distil_platform.llm.chat.request_timeout_s); a task's ModelRef.timeout_s "
        "overrides it for that model.")
    max_retries: int = Field(default=5, description="Retries on 429/5xx/timeouts, with backoff and Retry-After.")
    max_timeout_retries: int = Field(
        default=2, description="Of those, at most this many after a timeout (a timed-out attempt may have been billed).")
    max_error_rate: float = Field(default=0.5, description="Stop a batch when more than this share of items fail.")
    max_usd: float | None = Field(
        default=None,
        description="Explicit budget cap per client: stop before spending more (a model with no known price is then "
        "an error). Set, it replaces max_usd_per_run.",
    )
    max_usd_per_run: float | None = Field(
        default=DEFAULT_MAX_USD_PER_RUN,
        description="Default spend cap per Dagster run (USD), for models with a known price: each client gets what "
        "the run has not yet spent on billed calls, and a batch that could pass it stops with BudgetExceeded "
        "(completed items cached). Raise it on purpose for a larger run; None turns it off.",
    )
    spill_dir: str | None = Field(
        default=None,
        description="Where a batch whose results store keeps refusing writes spills the answers it could not "
        "write (JSONL, loaded into the store by the next batch). None: $DAGSTER_HOME/llm-spill.")
    fast_path: bool = Field(default=True, description="Direct aiohttp for openai/<name> + api_base (litellm for providers).")
    use_pricing_file: bool = Field(default=True, description="Price from the platform pricing file, then litellm's map.")
    identity: str | None = Field(
        default=None,
        description="What answers at the configured api_base (checkpoint, engine, dtype...): part of the cache key. "
        "None: the api_base URL.",
    )

    def client(
        self,
        model: str | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        *,
        store: Any | None = None,
        price_lookup: Callable[[str], tuple[float, ...] | None] | None = None,
        log: Callable[[str], None] | None = None,
        run_id: str | None = None,
        task: str | None = None,
        stage: str | None = None,
        token_counter: Callable[[list, str], tuple[int, int]] | None = None,
        concurrency: int | None = None,
        max_usd: float | None = None,
        timeout_s: float | None = None,
        identity: str | dict[str, Any] | None = None,
        request_extra: dict[str, Any] | None = None,
        abort_check: Callable[[], str | None] | None = None,
    ):
        """An ``LLMClient`` for ``model`` (default: the configured one) recording into the results store
        (``store``, else the configured ``results_store``).

        An explicit ``model`` without ``api_base``/``api_key``/``identity`` does not inherit the
        configured endpoint, key or identity (they belong to the configured model). Keys of a task's
        ``ModelRef`` come from ``os.environ[ref.api_key_env]`` at the call site. ``identity`` names
        what answers (for a local server: ``server.identity``; see ``LLMClient``). ``timeout_s``
        (else the configured one; None: derived per request from its max_tokens) and
        ``request_extra`` (parameters sent with every request, e.g. ``reasoning_effort``) go to the client.
        """
        from distil_platform.llm import LLMClient, default_price_lookup

        chosen = model or self.model
        if not chosen:
            raise ValueError("LLMResource: no model given and none configured (set `model` or pass model=...)")
        inherit = model is None or model == self.model
        if price_lookup is None:
            price_lookup = default_price_lookup(_platform_price_lookup(log) if self.use_pricing_file else None)
        store = store if store is not None else self.results_store.store()
        cap = max_usd if max_usd is not None else self.max_usd
        client_class: type[LLMClient] = LLMClient
        run_cap: dict[str, Any] = {}
        if cap is None and self.max_usd_per_run is not None and price_lookup(chosen) is not None:
            # The default cap: what this run has not yet spent (a model with no known price, such as a
            # local server, bills nothing we can count and is not capped by default).
            spent = run_spent_usd(store, run_id)
            cap = max(0.0, self.max_usd_per_run - spent)
            client_class = _run_capped_client_class()
            run_cap = {"run_cap_usd": self.max_usd_per_run, "run_spent_before_usd": spent}
        client = client_class(
            chosen,
            api_base=api_base if api_base is not None else (self.api_base if inherit else None),
            api_key=api_key if api_key is not None else (self.api_key if inherit else None),
            store=store,
            concurrency=concurrency or self.concurrency,
            timeout_s=timeout_s or self.timeout_s,
            max_retries=self.max_retries,
            max_timeout_retries=self.max_timeout_retries,
            request_extra=request_extra,
            max_error_rate=self.max_error_rate,
            max_usd=cap,
            price_lookup=price_lookup,
            log=log,
            run_id=run_id,
            task=task,
            stage=stage,
            token_counter=token_counter,
            fast_path=self.fast_path,
            # The configured identity describes the configured endpoint only.
            identity=identity if identity is not None else (
                self.identity if inherit and api_base in (None, self.api_base) else None),
            abort_check=abort_check,
            spill_dir=self.spill_dir or _default_spill_dir(),
        )
        for name, value in run_cap.items():
            setattr(client, name, value)
        return client

    def client_for_ref(self, ref: Any, **context: Any):
        """Client for a task's ``ModelRef`` (``model``, ``api_base``, ``api_key_env``, and its per-model
        ``timeout_s`` and ``reasoning_effort``); the key is read from ``os.environ[ref.api_key_env]``
        now, and a missing key is a clear error naming the variable."""
        import os

        api_key = None
        if getattr(ref, "api_key_env", None):
            api_key = os.environ.get(ref.api_key_env)
            if not api_key:
                raise ValueError(f"model {ref.model!r} needs an API key in env var {ref.api_key_env}, which is not set")
        context.setdefault("timeout_s", getattr(ref, "timeout_s", None))
        context.setdefault("request_extra", ref_request_extra(ref))
        return self.client(model=ref.model, api_base=getattr(ref, "api_base", None), api_key=api_key, **context)


def _default_spill_dir() -> str | None:
    import os

    home = os.environ.get("DAGSTER_HOME")
    return str(Path(home) / "llm-spill") if home else None


def ref_request_extra(ref: Any) -> dict[str, Any]:
    """The parameters a task's ``ModelRef`` sends with every request: ``reasoning_effort`` when set
    (litellm passes it to OpenAI, and maps it to Gemini's thinking budget and Anthropic's thinking)."""
    effort = getattr(ref, "reasoning_effort", None)
    return {"reasoning_effort": effort} if effort else {}


def run_spent_usd(store: Any, run_id: str | None) -> float:
    """USD the run ``run_id`` has spent so far on billed LLM calls (fresh answers recorded in the
    results store's ``llm_requests``; cache hits bill nothing). 0 without a run id."""
    if not run_id:
        return 0.0
    from sqlalchemy import func, select

    from distil_platform.storage.store import llm_requests

    stmt = select(func.coalesce(func.sum(llm_requests.c.cost_usd), 0.0)).where(
        llm_requests.c.run_id == run_id, llm_requests.c.cache_hit.is_not(True))
    with store.engine.connect() as conn:
        return float(conn.execute(stmt).scalar() or 0.0)


@functools.lru_cache(maxsize=1)
def _run_capped_client_class():
    """``LLMClient`` under the default per-run cap: a budget stop says which setting to raise."""
    from distil_platform.llm import BudgetExceeded, LLMClient

    class RunCappedClient(LLMClient):
        run_cap_usd = DEFAULT_MAX_USD_PER_RUN
        run_spent_before_usd = 0.0

        async def achat_batch(self, requests):
            try:
                return await super().achat_batch(requests)
            except BudgetExceeded as exc:
                raise BudgetExceeded(
                    f"{exc}. This is the per-run spend cap LLMResource.max_usd_per_run=${self.run_cap_usd:g} (the "
                    f"run had spent ${self.run_spent_before_usd:.4f} before this client): raise max_usd_per_run in "
                    "the `llm` resource's config on purpose to spend more in one run",
                    exc.results,
                ) from exc

    return RunCappedClient


def _platform_price_lookup(log: Callable[[str], None] | None):
    """The pricing file's lookup; None (litellm's map only) when the file is absent or invalid."""
    try:
        from distil_platform.economics.pricing_file import price_lookup
    except ImportError:
        return None
    try:
        return price_lookup()
    except Exception as exc:  # noqa: BLE001 - a broken pricing file is reported by the pricing asset
        if log:
            log(f"pricing file not usable for LLM costs ({type(exc).__name__}: {exc}); using litellm's price map")
        return None


class ServingResource(dg.ConfigurableResource):
    """Starts an OpenAI-compatible server for a checkpoint (``vllm`` or ``transformers serve``).

    vLLM runs from the serving environment (``make serving-venv`` builds ``.venv-vllm``; or set
    ``vllm_python`` / env ``DISTIL_VLLM_PYTHON``), never inside the Dagster process. Device flags are
    chosen per machine (:func:`distil_platform.serving.launch.vllm_device_settings`) and reported by the
    server (``Server.settings``)."""

    backend: str = Field(default="auto", description="auto (vllm when the serving env exists) | vllm | transformers")
    vllm_python: str | None = Field(
        default=None, description="Python of the vLLM serving env (None: env DISTIL_VLLM_PYTHON, else <repo>/.venv-vllm)."
    )
    dtype: str = Field(default="auto", description="Compute dtype of the server: auto (the hardware's native one: "
                       "bf16 where the CPU/GPU has it, fp32 on CPUs without native bf16, fp16 on pre-Ampere "
                       "GPUs; distil_platform.precision), bf16, fp16 or fp32.")
    quantization: str | None = Field(default=None, description="None or 'fp8' (vllm on an fp8-capable GPU only).")
    max_num_seqs: int | None = Field(default=None, description="vllm --max-num-seqs")
    gpu_memory_utilization: float | None = Field(default=0.85, description="vllm --gpu-memory-utilization (GPU only)")
    max_model_len: int | None = Field(default=None, description="vllm --max-model-len (None: CPU min(4096, model's))")
    enforce_eager: bool | None = Field(default=None, description="vllm --enforce-eager (None: on for CPU, off for GPU)")
    enable_prefix_caching: bool = Field(default=True, description="vllm automatic prefix caching")
    kv_cache_gib: float | None = Field(default=None, description="vLLM-CPU KV cache, GiB (VLLM_CPU_KVCACHE_SPACE; None: 2)")
    cpu_threads_bind: str | None = Field(
        default=None, description="vLLM-CPU VLLM_CPU_OMP_THREADS_BIND (None: vLLM's 'auto', one core kept for the frontend)"
    )
    continuous_batching: bool = Field(default=True, description="transformers serve --continuous-batching")
    cb_num_blocks: int | None = Field(default=80, description="KV-cache blocks (caps the cache's memory on CPU).")
    cb_max_memory_percent: float | None = Field(default=None, description="transformers --cb-max-memory-percent")
    device: str = Field(default="auto", description="transformers serve --device")
    startup_timeout_s: float = Field(default=600.0, description="Seconds to wait for the server to be healthy.")
    server_threads: int | None = Field(
        default=None, description="OMP/MKL threads of a CPU server (None: the library default)."
    )

    @contextlib.contextmanager
    def serve(self, model_dir: str | Path, **overrides: Any) -> Iterator[Any]:
        """``with serving.serve(dir) as server:`` -> ``distil_platform.serving.server.Server``.

        Keyword arguments override the configured knobs for this one server.
        """
        from distil_platform.serving.server import serve

        settings: dict[str, Any] = {
            "backend": self.backend, "vllm_python_path": self.vllm_python, "dtype": self.dtype,
            "quantization": self.quantization, "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization, "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager, "enable_prefix_caching": self.enable_prefix_caching,
            "kv_cache_gib": self.kv_cache_gib, "cpu_threads_bind": self.cpu_threads_bind,
            "continuous_batching": self.continuous_batching,
            "cb_num_blocks": self.cb_num_blocks, "cb_max_memory_percent": self.cb_max_memory_percent,
            "device": self.device, "startup_timeout_s": self.startup_timeout_s,
        }
        if self.server_threads:
            threads = str(self.server_threads)
            settings["env"] = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        settings.update(overrides)
        with serve(model_dir, **settings) as server:
            yield server

    def identity_for(self, model_dir: str | Path, served_model_name: str | None = None) -> dict:
        """The cache identity a server of ``model_dir`` started by this resource would have
        (equals ``Server.identity``), without starting one."""
        from distil_platform.serving.launch import default_served_name, server_identity

        path = Path(model_dir).resolve()
        return server_identity(path, served_model_name or default_served_name(path), self.resolved_backend(),
                               self.precision().dtype, self.quantization)

    def precision(self):
        """The dtype a server started by this resource would run in, and why
        (:class:`distil_platform.precision.Precision`), without starting one."""
        from distil_platform.serving.hardware import server_on_gpu, serving_precision

        return serving_precision(self.dtype, server_on_gpu(self.resolved_backend(), self.vllm_python, self.device))

    def resolved_backend(self) -> str:
        """The backend a server would use here (``auto`` resolved; no server is started)."""
        from distil_platform.serving.launch import choose_backend

        return choose_backend(self.backend, self.vllm_python)

    def served_model_name(self, model_dir: str | Path) -> str:
        """The name a server of ``model_dir`` answers to when no ``served_model_name`` is given."""
        from distil_platform.serving.launch import default_served_name

        return default_served_name(Path(model_dir))

    def litellm_model_for(self, model_dir: str | Path) -> str:
        """``openai/<served name>``: the LLM-cache model string of answers from this checkpoint."""
        return f"openai/{self.served_model_name(model_dir)}"


class ModelStoreResource(dg.ConfigurableResource):
    """Resolves base-model names (tiny-qwen3, smollm2-135m-instruct, HF hub ids, local dirs) to weights."""

    def resolve(self, name: str) -> Path:
        from distil_platform.storage.modelstore import resolve_model

        return resolve_model(name)
