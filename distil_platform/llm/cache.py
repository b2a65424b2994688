"""The response cache: endpoint identities, the cache key of a request, the payload a cached answer
keeps, and the buffered writer of ``llm_cache`` / ``llm_requests`` rows (one transaction per flush)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from distil_platform.llm.chat import ChatRequest, ChatResult


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
    """Buffers llm_requests / llm_cache rows and writes them in one transaction per flush."""

    def __init__(self, store, flush_every_s: float = 0.25, flush_rows: int = 256):
        self.store = store
        self.flush_every_s, self.flush_rows = flush_every_s, flush_rows
        self.requests: list[dict[str, Any]] = []
        self.cache: dict[str, dict[str, Any]] = {}
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
        if len(self.requests) >= self.flush_rows:
            self._wake.set()

    def add_cache(self, key: str, model: str, payload: dict[str, Any], identity: str | None = None) -> None:
        if self.store is None:
            return
        self.cache[key] = {"key": key, "model": model, "identity": identity, "response": payload}

    def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        if self.store is None:
            return
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_every_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            requests, cache = self.requests, list(self.cache.values())
            self.requests, self.cache = [], {}
            if requests or cache:
                # Shielded: a cancelled batch still records what it already paid for.
                await asyncio.shield(asyncio.to_thread(self._write, requests, cache))
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
