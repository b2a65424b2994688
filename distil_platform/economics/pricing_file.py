"""The pricing file: per model USD per million tokens and per serving hardware USD per hour, each
with a ``source`` and ``as_of``, validated entry by entry (:func:`parse_pricing`, :class:`PricingError`
naming the file and each bad entry) into :class:`ModelPrice` and :class:`HardwarePrice` records.

The file is ``distil_platform/config/pricing.yaml``, or env ``DISTIL_PRICING_FILE``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from distil_platform.economics.hardware_keys import KNOWN_GPUS, is_known_hardware
from distil_platform.storage.paths import PACKAGE_DIR

DEFAULT_PRICING_FILE = PACKAGE_DIR / "config" / "pricing.yaml"
PRICING_FILE_ENV = "DISTIL_PRICING_FILE"

ORIGIN_FILE = "pricing_file"
ORIGIN_LITELLM_BUNDLED = "litellm_bundled"
ORIGIN_LITELLM_HOSTED = "litellm_hosted"

_MODEL_FIELDS = {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "source", "as_of"}
_HARDWARE_FIELDS = {"usd_per_hour", "source", "as_of"}
_TOP_FIELDS = {"as_of", "models", "hardware", "unpriced"}


class PricingError(ValueError):
    """The pricing file (or a lookup in a snapshot) is wrong. The message names file and entry."""


@dataclass(frozen=True)
class ModelPrice:
    model: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float
    source: str
    as_of: str
    origin: str = ORIGIN_FILE  # pricing_file / litellm_bundled / litellm_hosted

    @property
    def usd_per_input_token(self) -> float:
        return self.input_per_mtok / 1e6

    @property
    def usd_per_output_token(self) -> float:
        return self.output_per_mtok / 1e6

    @property
    def usd_per_cached_input_token(self) -> float:
        return self.cached_input_per_mtok / 1e6


@dataclass(frozen=True)
class HardwarePrice:
    key: str
    usd_per_hour: float
    source: str
    as_of: str


def model_keys(model: str) -> list[str]:
    # "anthropic/claude-haiku-4-5" is keyed without its provider prefix in litellm's map.
    keys = [model]
    if "/" in model:
        keys.append(model.split("/", 1)[1])
    return keys


def pricing_file() -> Path:
    value = os.environ.get(PRICING_FILE_ENV)
    return Path(value).expanduser() if value else DEFAULT_PRICING_FILE


def _number(value: Any, where: str, errors: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{where}: must be a number (USD), got {value!r}")
        return None
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        errors.append(f"{where}: must be a finite number, got {value!r}")
        return None
    if value < 0:
        errors.append(f"{where}: must not be negative, got {value!r}")
        return None
    return value


def _date_text(value: Any, where: str, errors: list[str]) -> str | None:
    if isinstance(value, (date, datetime)):
        return value.isoformat()[:10]
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            pass
    errors.append(f"{where}: must be a date YYYY-MM-DD, got {value!r}")
    return None


def _text(value: Any, where: str, errors: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{where}: must be a non-empty string, got {value!r}")
        return None
    return value.strip()


@dataclass(frozen=True)
class PricingFile:
    path: str
    as_of: str
    models: dict[str, ModelPrice]
    hardware: dict[str, HardwarePrice]
    file_sha256: str
    unpriced: dict[str, str] = field(default_factory=dict)  # model -> why no price is known


def parse_pricing(raw: Any, path: str, file_sha256: str = "") -> PricingFile:
    """Validate the parsed YAML of a pricing file. Every problem is reported, each naming its entry."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise PricingError(f"{path}: a pricing file must be a mapping with `models` and `hardware`, "
                           f"got {type(raw).__name__}")
    for key in sorted(set(raw) - _TOP_FIELDS):
        errors.append(f"`{key}`: unknown top-level field (expected {', '.join(sorted(_TOP_FIELDS))})")
    file_as_of = _date_text(raw.get("as_of"), "`as_of`", errors) if "as_of" in raw else None

    models: dict[str, ModelPrice] = {}
    raw_models = raw.get("models", {}) or {}
    if not isinstance(raw_models, dict):
        errors.append(f"`models`: must be a mapping of model -> prices, got {type(raw_models).__name__}")
        raw_models = {}
    for name, entry in raw_models.items():
        where = f"models.{name}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be a mapping with input_per_mtok, output_per_mtok, source, as_of")
            continue
        for key in sorted(set(entry) - _MODEL_FIELDS):
            errors.append(f"{where}.{key}: unknown field (expected {', '.join(sorted(_MODEL_FIELDS))})")
        values = {}
        for key in ("input_per_mtok", "output_per_mtok"):
            if key not in entry:
                errors.append(f"{where}.{key}: missing")
            else:
                values[key] = _number(entry[key], f"{where}.{key}", errors)
        # Without a cached-input price, cached tokens are billed as ordinary input (the safe side).
        values["cached_input_per_mtok"] = (
            _number(entry["cached_input_per_mtok"], f"{where}.cached_input_per_mtok", errors)
            if "cached_input_per_mtok" in entry else values.get("input_per_mtok")
        )
        source = _text(entry.get("source"), f"{where}.source", errors)
        as_of = (_date_text(entry["as_of"], f"{where}.as_of", errors) if "as_of" in entry
                 else file_as_of or _missing(f"{where}.as_of", errors))
        if None in values.values() or len(values) < 3 or source is None or as_of is None:
            continue
        models[str(name)] = ModelPrice(model=str(name), source=source, as_of=as_of, **values)

    hardware: dict[str, HardwarePrice] = {}
    raw_hw = raw.get("hardware", {}) or {}
    if not isinstance(raw_hw, dict):
        errors.append(f"`hardware`: must be a mapping of hardware -> usd_per_hour, got {type(raw_hw).__name__}")
        raw_hw = {}
    for key, entry in raw_hw.items():
        where = f"hardware.{key}"
        key = str(key)
        if not is_known_hardware(key):
            errors.append(f"{where}: unknown hardware (expected one of {', '.join(KNOWN_GPUS)} or cpu-<N>core)")
            continue
        if not isinstance(entry, dict):  # shorthand `h100: 2.40`
            entry = {"usd_per_hour": entry}
        for extra in sorted(set(entry) - _HARDWARE_FIELDS):
            errors.append(f"{where}.{extra}: unknown field (expected {', '.join(sorted(_HARDWARE_FIELDS))})")
        if "usd_per_hour" not in entry:
            errors.append(f"{where}.usd_per_hour: missing")
            continue
        price = _number(entry["usd_per_hour"], f"{where}.usd_per_hour", errors)
        source = _text(entry["source"], f"{where}.source", errors) if "source" in entry else "pricing file"
        as_of = (_date_text(entry["as_of"], f"{where}.as_of", errors) if "as_of" in entry
                 else file_as_of or _missing(f"{where}.as_of", errors))
        if price is None or source is None or as_of is None:
            continue
        hardware[key] = HardwarePrice(key=key, usd_per_hour=price, source=source, as_of=as_of)

    unpriced: dict[str, str] = {}
    raw_unpriced = raw.get("unpriced", {}) or {}
    if not isinstance(raw_unpriced, dict):
        errors.append(f"`unpriced`: must be a mapping of model -> reason, got {type(raw_unpriced).__name__}")
        raw_unpriced = {}
    for name, reason in raw_unpriced.items():
        text = _text(reason, f"unpriced.{name}", errors)
        if str(name) in models:
            errors.append(f"unpriced.{name}: also priced under models.{name}")
        elif text is not None:
            unpriced[str(name)] = text

    if errors:
        shown = "\n".join(f"  {e}" for e in errors)
        raise PricingError(f"{path}: invalid pricing file ({len(errors)} problem(s)):\n{shown}")
    dates = [m.as_of for m in models.values()] + [h.as_of for h in hardware.values()]
    return PricingFile(path=path, as_of=file_as_of or (max(dates) if dates else ""), models=models,
                       hardware=hardware, file_sha256=file_sha256, unpriced=unpriced)


def _missing(where: str, errors: list[str]) -> None:
    errors.append(f"{where}: missing (or set a top-level `as_of`)")


def load_pricing_file(path: str | Path | None = None) -> PricingFile:
    path = Path(path) if path else pricing_file()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PricingError(f"{path}: pricing file not found (set {PRICING_FILE_ENV} or restore it)") from None
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PricingError(f"{path}: not valid YAML: {exc}") from exc
    return parse_pricing(raw, str(path), hashlib.sha256(data).hexdigest())


def price_lookup(path: str | Path | None = None):
    """``callable(model) -> (usd_per_input_token, usd_per_output_token, usd_per_cached_input_token) |
    None`` from the pricing file, for the LLM client's per-request ``cost_usd`` and spend cap (cached
    prompt tokens billed at the cached rate: the file's ``cached_input_per_mtok``, which defaults to
    the input price); litellm's map is its own fallback (``distil_platform.llm.prices``)."""
    priced = load_pricing_file(path)

    def lookup(model: str) -> tuple[float, float, float] | None:
        for key in model_keys(model):
            price = priced.models.get(key)
            if price is not None:
                return price.usd_per_input_token, price.usd_per_output_token, price.usd_per_cached_input_token
        return None

    return lookup
