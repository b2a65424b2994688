"""Price lookups for :class:`~distil_platform.llm.client.LLMClient`.

A price lookup is ``callable(model) -> (usd_per_input_token, usd_per_output_token[,
usd_per_cached_input_token]) | None`` (two values: cached prompt tokens cost full input).
The platform's pricing file (``distil_platform/economics/pricing_file.py``) provides one; litellm's bundled map
(``LITELLM_LOCAL_MODEL_COST_MAP=True``: never fetched over the network) is the fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable

PriceLookup = Callable[[str], "tuple[float, ...] | None"]


def litellm_price_lookup(model: str) -> tuple[float, float, float] | None:
    """Per-token (input, output, cached input) prices from litellm's bundled model map, or None if
    litellm does not know ``model``. Without a cached-input price, cached tokens cost full input."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])  # "anthropic/claude-..." is keyed without prefix too
    for key in candidates:
        info = litellm.model_cost.get(key)
        if info and info.get("input_cost_per_token") is not None and info.get("output_cost_per_token") is not None:
            cached = info.get("cache_read_input_token_cost")
            inp = float(info["input_cost_per_token"])
            return inp, float(info["output_cost_per_token"]), float(cached) if cached is not None else inp
    return None


def chain_price_lookups(*lookups: PriceLookup | None) -> PriceLookup:
    """First lookup that knows the model wins (platform pricing file first, then litellm)."""
    active = [lookup for lookup in lookups if lookup is not None]

    def lookup(model: str) -> tuple[float, ...] | None:
        for candidate in active:
            price = candidate(model)
            if price is not None:
                return price
        return None

    return lookup


def default_price_lookup(platform_lookup: PriceLookup | None = None) -> PriceLookup:
    return chain_price_lookups(platform_lookup, litellm_price_lookup)
