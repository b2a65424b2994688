"""The response cache: endpoint identities, the cache key of a request, the payload a cached answer
keeps, and the buffered writer of ``llm_cache`` / ``llm_requests`` rows (one transaction per flush)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distil_platform.llm.chat import ChatRequest, ChatResult, StoreUnavailable
from distil_platform.redact import redact_text


def normalise_identity(identity: str | Mapping[str, Any] | None) -> str | None:
    """The canonical string form of an endpoint identity (mappings as sorted compact JSON)."""
    if identity is None:
        return None
    if isinstance(identity, Mapping):
        if not identity:
            raise ValueError("identity must not be an empty mapping")
        return json.dumps(dict(identity), sort_keys=True, separators=(",", ":"), default=str)
    identity = str(identity).strip()
    if not identity:
        raise ValueError("identity must not be empty")
    return identity


def default_identity(model: str, api_base: str | None) -> str | None:
    """Identity when the caller gives none: the endpoint URL for ``api_base`` models (two servers
    are never assumed to be the same model), none for provider models (the model string names it)."""
    return api_base.rstrip("/") if api_base else None


def serving_identity(
    *,
    served_model: str,
    checkpoint_hash: str,
    backend: str,
    dtype: str | None = None,
    quantization: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The identity a local server should give its clients: everything that changes the answer
    (checkpoint content, serving engine, dtype, quantization, and ``extra`` such as the engine
    version or max model length). Two servers with equal identities share cache entries."""
    out = {"served_model": served_model, "checkpoint_hash": checkpoint_hash, "backend": backend,
           "dtype": dtype, "quantization": quantization}
    out.update(extra)
    return out


def cache_key(model: str, request: ChatRequest, identity: str | Mapping[str, Any] | None = None,
              request_extra: Mapping[str, Any] | None = None) -> str:
    """Response-cache key of ``request`` to ``model`` served by ``identity`` (see :class:`LLMClient`);
    ``request_extra``: the client's parameters sent with every request (e.g. ``reasoning_effort``),
    under the request's own ``extra``."""
    payload = {
        "model": model,
        "messages": request.messages,
        "tools": request.tools,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "extra": {**(request_extra or {}), **request.extra},
        "repeat": request.repeat,
    }
    identity = normalise_identity(identity)
    if identity is not None:  # provider models without one keep their keys from before identities
        payload["identity"] = identity
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def cache_payload(result: ChatResult) -> dict[str, Any]:
    return {"text": result.text, "tool_calls": result.tool_calls, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "tokens_counted": result.tokens_counted,
            "latency_s": result.latency_s, "cached_prompt_tokens": result.cached_prompt_tokens,
            "logprobs": result.logprobs, "finish_reason": result.finish_reason,
            "reasoning_tokens": result.reasoning_tokens}


class StoreWriter:
    """Writes llm_requests / llm_cache rows as answers arrive, and never loses one.

    Persist what is received: every answer wakes the writer, which writes everything pending in one
    transaction; answers arriving during a write go in the next one (group commit), so a SIGKILL loses
    at most the answers in flight, and hundreds of answers per second do not serialise on commits.

    A failed write keeps its rows and is retried with backoff (a Postgres restart, a locked SQLite
    file). After ``max_failures`` failures in a row the writer gives up: ``failed`` is set (the client
    stops calling: nothing more would be cached), and the rows not written, and any that arrive after,
    are spilled to a JSONL file in ``spill_dir`` that the next batch's writer loads into the store
    (:meth:`replay_spills`) before it looks anything up. Without a ``spill_dir`` they stay only on the
    batch's results (the error says so).
    """

    def __init__(self, store, spill_dir: str | os.PathLike | None = None, max_failures: int = 5,
                 retry_base_s: float = 0.2, log: Callable[[str], None] | None = None):
        self.store = store
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.max_failures, self.retry_base_s = max_failures, retry_base_s
        self.log = log or (lambda message: None)
        self.requests: list[dict[str, Any]] = []
        self.cache: dict[str, dict[str, Any]] = {}
        self.failed: BaseException | None = None
        self.spilled_to: Path | None = None
        self.written = 0
        self._closed = False
        self._wake = asyncio.Event() if store is not None else None

    def lookup(self, keys: set[str]) -> dict[str, dict[str, Any]]:
        from sqlalchemy import select

        from distil_platform.storage.store import llm_cache

        found: dict[str, dict[str, Any]] = {}
        key_list = sorted(keys)
        with self.store.engine.connect() as conn:
            for start in range(0, len(key_list), 500):  # SQLite caps bound parameters per statement
                chunk = key_list[start:start + 500]
                for row in conn.execute(select(llm_cache.c.key, llm_cache.c.response).where(llm_cache.c.key.in_(chunk))):
                    found[row.key] = row.response
        return found

    def add_request(self, row: dict[str, Any]) -> None:
        if self.store is None:
            return
        self.requests.append(row)
        self._wake.set()

    def add_cache(self, key: str, model: str, payload: dict[str, Any], identity: str | None = None) -> None:
        if self.store is None:
            return
        self.cache[key] = {"key": key, "model": model, "identity": identity, "response": payload}
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        if self.store is None:
            return
        failures = 0
        while True:
            if not (self.requests or self.cache or self._closed):
                await self._wake.wait()
            self._wake.clear()
            requests, cache = self.requests, self.cache
            self.requests, self.cache = [], {}
            if (requests or cache) and self.failed is None:
                try:
                    # Shielded: a cancelled batch still records what it already paid for.
                    await asyncio.shield(asyncio.to_thread(self._write, requests, list(cache.values())))
                    failures = 0
                    self.written += len(requests)
                except Exception as exc:  # noqa: BLE001 - any store error: keep the rows, retry, then spill
                    failures += 1
                    self.requests, self.cache = requests + self.requests, {**cache, **self.cache}
                    self.log(f"llm cache: write to the results store failed ({failures}/{self.max_failures}): "
                             f"{type(exc).__name__}: {redact_text(str(exc))[:200]}")
                    if failures >= self.max_failures:
                        self.failed = exc
                    else:
                        await asyncio.sleep(self.retry_base_s * 2 ** (failures - 1))
                    continue
            elif requests or cache:  # given up: every row from now on goes to the spill file
                await asyncio.to_thread(self._spill, requests, list(cache.values()))
            if self.failed is not None and (self.requests or self.cache):
                continue
            if self._closed and not self.requests and not self.cache:
                return

    def _write(self, requests: list[dict[str, Any]], cache: list[dict[str, Any]]) -> None:
        from sqlalchemy import insert

        from distil_platform.storage.store import llm_cache, llm_requests

        with self.store.engine.begin() as conn:
            if cache:
                conn.execute(insert_ignore(conn, llm_cache), cache)
            if requests:
                conn.execute(insert(llm_requests), requests)

    def _spill(self, requests: list[dict[str, Any]], cache: list[dict[str, Any]]) -> None:
        if self.spill_dir is None:
            return
        if self.spilled_to is None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            self.spilled_to = self.spill_dir / f"{uuid.uuid4().hex}.jsonl"
        with self.spilled_to.open("a", encoding="utf-8") as f:
            for table, rows in (("llm_cache", cache), ("llm_requests", requests)):
                for row in rows:
                    f.write(json.dumps({"table": table, "row": row}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def replay_spills(self) -> int:
        """Load the spill files a writer that gave up left behind into the store; returns rows loaded.
        Each file is claimed by an atomic rename first, so two batches never load one file twice."""
        if self.spill_dir is None or not self.spill_dir.is_dir():
            return 0
        loaded = 0
        for path in sorted(self.spill_dir.glob("*.jsonl")):
            claimed = path.with_suffix(f".loading-{os.getpid()}")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another batch took it
            rows: dict[str, list[dict[str, Any]]] = {"llm_cache": [], "llm_requests": []}
            for line in claimed.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    rows[record["table"]].append(record["row"])
            try:
                self._write(rows["llm_requests"], rows["llm_cache"])  # the writer's own transaction
            except Exception:
                claimed.rename(path)  # the store is still unwell: leave the file for the next batch
                raise
            claimed.unlink()
            loaded += len(rows["llm_cache"]) + len(rows["llm_requests"])
        return loaded


def store_unavailable(model: str, writer: StoreWriter) -> StoreUnavailable:
    """The error of a batch whose store gave up, saying where the unwritten answers are."""
    kept = (f"the answers not written are in {writer.spilled_to or writer.spill_dir} and are loaded into the "
            "store by the next batch" if writer.spill_dir is not None else
            "the answers not written are only on this batch's results (no spill_dir)")
    return StoreUnavailable(
        f"{model!r}: the results store refused {writer.max_failures} writes in a row "
        f"({type(writer.failed).__name__}: {redact_text(str(writer.failed))[:300]}); calls stopped; {kept}")


def insert_ignore(conn, table):
    """INSERT that skips rows whose primary key exists (another run cached the same answer)."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy import insert

        return insert(table).prefix_with("IGNORE")  # MySQL/MariaDB
    return dialect_insert(table).on_conflict_do_nothing()
