"""Deterministic augmentation of text2sql seeds (an option, never reported as teacher output): new
rows made by swapping a literal that appears in both the question and the SQL."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from distil_platform.tasks.spec import TaskSpec

_INT_RE = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


def _swap_int(text: str, old: str, new: str) -> str:
    return _INT_RE.sub(lambda m: new if m.group(1) == old else m.group(1), text)


def literal_swap_augment(
    spec: TaskSpec, seeds: Sequence[dict[str, Any]], per_seed: int = 2, rng_seed: int = 0
) -> list[dict[str, Any]]:
    """text2sql only: new rows made from seeds by swapping a literal that appears verbatim in both
    the question and the SQL (a quoted string for another value of the same column seen in other
    seeds, or an integer for a nearby one). Deterministic, no model involved; rows are marked
    ``origin="literal_swap"`` and still go through validation, dedup and decontamination.
    """
    if spec.type != "text2sql":
        return []
    import sqlglot
    from sqlglot import exp

    rng = random.Random(rng_seed)
    # Column name -> string literals compared with it anywhere in the seeds.
    values: dict[str, set[str]] = {}
    parsed: list[list[tuple[str, str]]] = []
    for s in seeds:
        pairs = []
        try:
            tree = sqlglot.parse_one(s["answer"], read="sqlite")
        except Exception:  # noqa: BLE001 - an unparsable seed simply is not augmented
            parsed.append([])
            continue
        for eq in tree.find_all(exp.EQ, exp.NEQ, exp.Like):
            col, lit = eq.args.get("this"), eq.args.get("expression")
            if isinstance(col, exp.Column) and isinstance(lit, exp.Literal) and lit.is_string:
                values.setdefault(col.name.lower(), set()).add(lit.this)
                pairs.append((col.name.lower(), lit.this))
        parsed.append(pairs)
    out: list[dict[str, Any]] = []
    for s, pairs in zip(seeds, parsed):
        made: set[tuple[str, str]] = set()
        options: list[tuple[str, str, str]] = []  # (kind, old, new)
        for col, old in pairs:
            if s["question"].count(old) == 1 and s["answer"].count(f"'{old}'") == 1:
                for new in sorted(values.get(col, set()) - {old}):
                    if "'" not in new:
                        options.append(("str", old, new))
        for m in set(_INT_RE.findall(s["question"])):
            if len(_INT_RE.findall(s["answer"])) and _INT_RE.findall(s["answer"]).count(m) == 1 \
                    and _INT_RE.findall(s["question"]).count(m) == 1:
                n = int(m)
                for new in {n + 1, n * 2, max(1, n // 2)} - {n}:
                    options.append(("int", m, str(new)))
        rng.shuffle(options)
        for kind, old, new in options[:per_seed]:
            if (old, new) in made:
                continue
            made.add((old, new))
            if kind == "str":
                question = s["question"].replace(old, new)
                answer = s["answer"].replace(f"'{old}'", f"'{new}'")
            else:
                question, answer = _swap_int(s["question"], old, new), _swap_int(s["answer"], old, new)
            out.append({"question": question, "answer": answer, "context": s.get("context") or "",
                        "origin": "literal_swap", "seed_ids": str(s.get("id", ""))})
    return out
