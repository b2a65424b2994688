"""litellm's price map: the bundled copy (read from disk) or the hosted one (``refresh_hosted``), and a
model's :class:`~distil_platform.economics.pricing_file.ModelPrice` from it, marked with the map's
origin, version and the date it was read — for models the pricing file does not list.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from distil_platform.economics.pricing_file import (
    ORIGIN_LITELLM_BUNDLED,
    ORIGIN_LITELLM_HOSTED,
    ModelPrice,
    PricingError,
    model_keys,
)


def litellm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return "unknown"


def bundled_litellm_price_map() -> dict[str, Any]:
    """litellm's bundled copy of its price map, read from disk (litellm itself is not imported)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise PricingError("litellm is not installed: cannot price models missing from the pricing file")
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    return json.loads(path.read_text(encoding="utf-8"))


HOSTED_PRICE_MAP_URL = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"


@dataclass(frozen=True)
class PriceMap:
    """litellm's price map as read: where from, and (hosted) when; ``warning`` when a refresh fell back."""

    table: Mapping[str, Any]
    origin: str
    label: str  # "litellm bundled map 1.110.2" / "litellm hosted map (<url>)"
    read_on: str = ""  # ISO date the hosted map was fetched; "" for the bundled copy (undated)
    warning: str | None = None


def load_price_map(refresh_hosted: bool = False, timeout_s: float = 10.0) -> PriceMap:
    """The hosted map when asked for and reachable, else the bundled copy — with a warning saying
    why when a refresh was asked for and did not happen."""
    bundled_label = f"litellm bundled map {litellm_version()}"
    warning = None
    if refresh_hosted:
        try:
            import httpx

            response = httpx.get(HOSTED_PRICE_MAP_URL, timeout=timeout_s, follow_redirects=True)
            response.raise_for_status()
            hosted = response.json()
            # A truncated or hijacked response must not wipe out prices: require a plausible map.
            if isinstance(hosted, dict) and len(hosted) > 500:
                return PriceMap(hosted, ORIGIN_LITELLM_HOSTED, f"litellm hosted map ({HOSTED_PRICE_MAP_URL})",
                                read_on=datetime.now().astimezone().date().isoformat())
            warning = (f"the hosted litellm price map looked implausible ({type(hosted).__name__}, "
                       f"{len(hosted) if isinstance(hosted, dict) else 0} entries)")
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed: see `warning`
            warning = f"fetching the hosted litellm price map failed: {type(exc).__name__}: {exc}"
        warning += f"; fell back to the {bundled_label}"
    return PriceMap(bundled_litellm_price_map(), ORIGIN_LITELLM_BUNDLED, bundled_label, warning=warning)


def litellm_price_map(refresh_hosted: bool = False, timeout_s: float = 10.0) -> tuple[dict[str, Any], str]:
    """(price map, origin) — see :func:`load_price_map`, which also says when a refresh fell back."""
    loaded = load_price_map(refresh_hosted, timeout_s)
    return dict(loaded.table), loaded.origin


def price_from_litellm_map(model: str, price_map: Mapping[str, Any], origin: str, *, label: str | None = None,
                           read_on: str = "") -> ModelPrice | None:
    """A model's price from litellm's map; ``source`` names the map (and its version) and the entry,
    ``as_of`` is the date the map was read ("" for the undated bundled copy)."""
    label = label or ("litellm bundled map " + litellm_version() if origin == ORIGIN_LITELLM_BUNDLED
                      else f"litellm map ({origin})")
    for key in model_keys(model):
        info = price_map.get(key)
        if not isinstance(info, dict):
            continue
        inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if not isinstance(inp, (int, float)) or not isinstance(out, (int, float)):
            continue
        cached = info.get("cache_read_input_token_cost")
        cached = cached if isinstance(cached, (int, float)) else inp
        return ModelPrice(
            model=model,
            input_per_mtok=round(float(inp) * 1e6, 9),
            output_per_mtok=round(float(out) * 1e6, 9),
            cached_input_per_mtok=round(float(cached) * 1e6, 9),
            source=f"{label}, entry {key!r}",
            as_of=read_on,
            origin=origin,
        )
    return None
