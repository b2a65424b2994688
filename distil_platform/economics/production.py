"""The model a task's production traces logged ("your current model"): its name in the cost table
and its price in a snapshot under the names traces log it by. Its row is ``costs.production_row``;
its logged usage and scored answers are gathered by ``cost_inputs.production_model``."""

from __future__ import annotations

import re

from distil_platform.economics.pricing import PriceSnapshot

PRODUCTION_PREFIX = "your current model: "
PRODUCTION_VARIANT = "traces"  # its scored answers' variant (stage frontier_evals): no model call made them
_DATED_RE = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def production_label(model: str) -> str:
    """The cost-table and prediction-row name of the production model ``model``."""
    return PRODUCTION_PREFIX + (model or "model not logged")


def production_price(snapshot: PriceSnapshot, model: str):
    """The snapshot's price of a model as traces log it (``gpt-5-mini-2025-08-07``): the entry of that
    name, else of that name without a provider prefix or date suffix (``openai/gpt-5-mini``); the
    pricing file's entries first. None when none matches."""
    names = {model, _DATED_RE.sub("", model)}
    names |= {n.split("/", 1)[1] for n in list(names) if "/" in n}
    matches = [(k, p) for k, p in sorted(snapshot.models.items())
               if k in names or k.split("/", 1)[-1] in names or _DATED_RE.sub("", k.split("/", 1)[-1]) in names]
    matches.sort(key=lambda kp: (kp[1].origin != "pricing_file", kp[0] != model))
    return matches[0][1] if matches else None
