"""Distinguishing databases for a gold query: the test-suite search and its cache.

``distinguishing_suite`` is the search of Zhong et al. (2020): it runs the gold and every
:func:`~distil_platform.evaluation.scoring.sql.neighbours.neighbour_queries` neighbour on candidate databases
(boundary ones first, :mod:`distil_platform.evaluation.scoring.sql.boundary`, then random ones) and keeps each
candidate that distinguishes a neighbour not yet distinguished. Neighbours no candidate
distinguishes are recorded as possibly equivalent. The result is cached per (schema, gold, seed)
in-process and, when ``DAGSTER_HOME`` is set, as JSON under ``$DAGSTER_HOME/sql_suites/`` (the
chosen database specs; databases are rebuilt from them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot

from distil_platform.evaluation.scoring.sql.boundary import boundary_database, gold_literals
from distil_platform.evaluation.scoring.sql.database import build_database
from distil_platform.evaluation.scoring.sql.neighbours import Neighbour, neighbour_queries
from distil_platform.evaluation.scoring.sql.results import has_top_level_order_by, results_match
from distil_platform.evaluation.scoring.sql.sandbox import (
    MAX_VALUE_BYTES,
    SQLSandboxError,
    run_sandboxed,
    setup_authorizer,
)

SUITE_VERSION = 1  # bump when generation or search changes: old cache entries are then ignored
N_BOUNDARY_CANDIDATES = 6
N_RANDOM_CANDIDATES = 10
_NEIGHBOUR_TIMEOUT_S = 1.0
_BUILD_BUDGET_S = 30.0
_MEMORY_CACHE_SIZE = 512


# -- the search -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistinguishingSuite:
    """Databases chosen for one (schema, gold, seed), with the gold's result on each."""

    specs: tuple[tuple[str, int], ...]  # ("boundary" | "random", index) of each chosen database
    databases: tuple[bytes, ...] = field(repr=False)  # serialized SQLite databases
    gold_results: tuple[tuple[int, list[tuple]], ...] = field(repr=False)
    n_neighbours: int = 0
    possibly_equivalent: tuple[Neighbour, ...] = ()
    build_s: float = 0.0


def _candidate(schema_sql: str, gold_sql: str, kind: str, index: int, seed: int) -> sqlite3.Connection:
    if kind == "boundary":
        return boundary_database(schema_sql, gold_sql, seed=seed, index=index)
    return build_database(schema_sql, gold_literals(gold_sql), seed=seed, index=200 + index)


def _run(conn: sqlite3.Connection, sql: str, timeout_s: float) -> tuple[int, list[tuple]] | None:
    try:
        return run_sandboxed(conn, sql, timeout_s=timeout_s)
    except SQLSandboxError:
        return None


def _search(schema_sql: str, gold_sql: str, seed: int) -> tuple[list[tuple[str, int]], int, list[Neighbour]]:
    try:
        neighbours = neighbour_queries(gold_sql)
    except ValueError:
        neighbours = []
    ordered = has_top_level_order_by(gold_sql)
    alive = list(neighbours)
    chosen: list[tuple[str, int]] = []
    candidates = [("boundary", k) for k in range(N_BOUNDARY_CANDIDATES)] + [
        ("random", k) for k in range(N_RANDOM_CANDIDATES)
    ]
    started = time.perf_counter()
    for kind, index in candidates:
        if not alive or time.perf_counter() - started > _BUILD_BUDGET_S:
            break
        conn = _candidate(schema_sql, gold_sql, kind, index, seed)
        try:
            gold = _run(conn, gold_sql, 10.0)
            if gold is None:
                continue
            killed = []
            for neighbour in alive:
                result = _run(conn, neighbour.sql, _NEIGHBOUR_TIMEOUT_S)
                if result is None or not results_match(gold, result, ordered=ordered):
                    killed.append(neighbour)
        finally:
            conn.close()
        if killed:
            chosen.append((kind, index))
            alive = [n for n in alive if n not in killed]
    return chosen, len(neighbours), alive


_memory: OrderedDict[str, DistinguishingSuite] = OrderedDict()
_lock = threading.Lock()


def _key(schema_sql: str, gold_sql: str, seed: int) -> str:
    text = json.dumps([SUITE_VERSION, sqlglot.__version__, schema_sql, gold_sql, seed])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _disk_path(key: str) -> Path | None:
    home = os.environ.get("DAGSTER_HOME")
    if not home or not os.path.isabs(home) or not os.path.isdir(home):
        return None
    return Path(home) / "sql_suites" / f"{key}.json"


def _materialise(schema_sql, gold_sql, seed, specs, n_neighbours, alive, build_s) -> DistinguishingSuite:
    databases, results = [], []
    for kind, index in specs:
        conn = _candidate(schema_sql, gold_sql, kind, index, seed)
        try:
            gold = _run(conn, gold_sql, 10.0)
            if gold is None:
                continue
            databases.append(conn.serialize())
            results.append(gold)
        finally:
            conn.close()
    return DistinguishingSuite(
        tuple(specs), tuple(databases), tuple(results), n_neighbours, tuple(alive), build_s
    )


def distinguishing_suite(schema_sql: str, gold_sql: str, *, seed: int = 0) -> DistinguishingSuite:
    """The cached distinguishing databases of ``gold_sql`` on ``schema_sql`` (see module docstring)."""
    key = _key(schema_sql, gold_sql, seed)
    with _lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    path = _disk_path(key)
    suite = None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            alive = [Neighbour(**n) for n in data["possibly_equivalent"]]
            specs = [(k, int(i)) for k, i in data["specs"]]
            suite = _materialise(
                schema_sql, gold_sql, seed, specs, data["n_neighbours"], alive, data["build_s"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            suite = None
    if suite is None:
        started = time.perf_counter()
        specs, n_neighbours, alive = _search(schema_sql, gold_sql, seed)
        build_s = round(time.perf_counter() - started, 3)
        suite = _materialise(schema_sql, gold_sql, seed, specs, n_neighbours, alive, build_s)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "version": SUITE_VERSION,
                            "specs": specs,
                            "n_neighbours": n_neighbours,
                            "possibly_equivalent": [n.__dict__ for n in alive],
                            "build_s": build_s,
                        }
                    ),
                    encoding="utf-8",
                )
                os.replace(tmp, path)
            except OSError:
                pass
    with _lock:
        _memory[key] = suite
        while len(_memory) > _MEMORY_CACHE_SIZE:
            _memory.popitem(last=False)
    return suite


def open_suite_database(data: bytes) -> sqlite3.Connection:
    """A fresh in-memory connection holding one serialized suite database (with the sandbox limits)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.deserialize(data)  # before the authorizer, which would deny it
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(setup_authorizer)
    return conn
