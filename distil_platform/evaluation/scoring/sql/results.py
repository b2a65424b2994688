"""Whether two query results agree: same width and row count, and equal rows up to column order,
as multisets or, when the reference has a top-level ORDER BY (:func:`has_top_level_order_by`), as
lists; floats compare to 10 significant digits.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from itertools import islice
from typing import Any

import sqlglot

_MAX_PERMUTATIONS = 5_000  # column-order permutations tried when comparing results


def _normalize_value(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return float(f"{value:.10g}")  # AVG vs SUM/COUNT may differ in the last bits
    return value


def results_match(
    reference: tuple[int, list[tuple]], prediction: tuple[int, list[tuple]], *, ordered: bool
) -> bool:
    """Whether two results agree: same width and row count, and some column permutation of the
    prediction makes the rows equal as a multiset (as a list when ``ordered``)."""
    (ref_width, ref_rows), (pred_width, pred_rows) = reference, prediction
    if ref_width != pred_width or len(ref_rows) != len(pred_rows):
        return False
    ref_rows = [tuple(_normalize_value(v) for v in r) for r in ref_rows]
    pred_rows = [tuple(_normalize_value(v) for v in r) for r in pred_rows]
    if not ref_rows:
        return True
    ref_cols = [Counter(r[j] for r in ref_rows) for j in range(ref_width)]
    pred_cols = [Counter(r[j] for r in pred_rows) for j in range(pred_width)]
    candidates = [[k for k in range(pred_width) if pred_cols[k] == ref_cols[j]] for j in range(ref_width)]
    if any(not c for c in candidates):
        return False
    ref_target: Any = ref_rows if ordered else Counter(ref_rows)

    def permutations(j: int, used: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
        if j == ref_width:
            yield used
            return
        for k in candidates[j]:
            if k not in used:
                yield from permutations(j + 1, used + (k,))

    # Bound the work (permutations x rows) so a wide result of look-alike columns stays cheap.
    budget = max(10, min(_MAX_PERMUTATIONS, 2_000_000 // len(pred_rows)))
    for perm in islice(permutations(0, ()), budget):
        permuted = [tuple(r[k] for k in perm) for r in pred_rows]
        if (permuted if ordered else Counter(permuted)) == ref_target:
            return True
    return False


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost query has ORDER BY (then row order is part of the answer)."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
        return tree is not None and tree.args.get("order") is not None
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        pass
    depth, upper = 0, sql.upper()
    for i, ch in enumerate(upper):  # fallback: ORDER BY outside all parentheses
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and upper.startswith("ORDER", i) and re.match(r"ORDER\s+BY\b", upper[i:]):
            return True
    return False
