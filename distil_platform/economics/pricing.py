"""Price snapshots: the pricing file, validated, overlaid on litellm's price map, hashed and stored.

The pricing file (``distil_platform/config/pricing.yaml``, or env ``DISTIL_PRICING_FILE``) gives per
model USD per million tokens (input, output, cached input) with a ``source`` and ``as_of``, and per
serving hardware USD per hour. Models a task uses that the file does not list are priced from
litellm's map (the bundled copy, or the hosted one when ``refresh_hosted`` and reachable) and
marked with that origin, the map's version and the date it was read — never with the file's
``as_of``. A model nobody prices is an error naming it, unless the file's ``unpriced`` section
declares it with the reason (the cost table then says "price unknown" and why). A refresh that
falls back to the bundled map says so in the snapshot's ``warnings``. A snapshot is identified by
the SHA-256 of its canonical JSON content, so every cost row can say exactly which prices it used.

A file that fails validation raises :class:`PricingError` naming the file and each bad entry; no
snapshot is built, so the previously stored one stays current.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from distil_platform.storage.paths import PACKAGE_DIR

DEFAULT_PRICING_FILE = PACKAGE_DIR / "config" / "pricing.yaml"
PRICING_FILE_ENV = "DISTIL_PRICING_FILE"

# Serving hardware the platform knows how to describe; a typo ("h10") must fail loudly rather
# than silently leave a student unpriced.
KNOWN_GPUS = ("h100", "h200", "gh200", "b200", "a100", "a100-40gb", "a100-80gb", "l4", "l40s", "a10g", "t4", "v100",
              "mi300x")
CPU_KEY_RE = re.compile(r"^cpu-(\d+)core$")

ORIGIN_FILE = "pricing_file"
ORIGIN_LITELLM_BUNDLED = "litellm_bundled"
ORIGIN_LITELLM_HOSTED = "litellm_hosted"

_MODEL_FIELDS = {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "source", "as_of"}
_HARDWARE_FIELDS = {"usd_per_hour", "source", "as_of"}
_TOP_FIELDS = {"as_of", "models", "hardware", "unpriced"}


class PricingError(ValueError):
    """The pricing file (or a lookup in a snapshot) is wrong. The message names file and entry."""


def is_known_hardware(key: str) -> bool:
    return key in KNOWN_GPUS or bool(CPU_KEY_RE.match(key))


def gpu_hardware_key(gpu_name: str) -> str | None:
    """The pricing key of a GPU by **exact** token match of its name (``"NVIDIA GH200 480GB"`` ->
    ``gh200``, never ``h200``; ``"NVIDIA A100-SXM4-80GB"`` -> ``a100``); None when no token is a known GPU."""
    tokens = [t for t in re.split(r"[\s_/(),-]+", gpu_name.lower()) if t]
    for token in tokens:
        if token in KNOWN_GPUS:
            return token
    return None


def cpu_hardware_key(cores: int) -> str:
    """Hardware key of a CPU instance with ``cores`` cores (what the local profile is priced as)."""
    return f"cpu-{int(cores)}core"


def pricing_hardware_key(server_key: str, description: str = "") -> str:
    """The pricing-file key for a server's hardware: GPU keys pass through; a CPU server (``cpu``)
    is priced as an instance with as many cores as the description (``"..., 2 cores"``) or this
    process's CPU affinity says."""
    if server_key != "cpu":
        # The description names the GPU ("1x NVIDIA GH200 480GB"): it wins over a key guessed by substring.
        name = re.sub(r"^\d+x\s+", "", description or "")
        return gpu_hardware_key(name) or server_key
    match = re.search(r"(\d+)\s+cores?\b", description or "")
    if match:
        return cpu_hardware_key(int(match.group(1)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpu_hardware_key(cores)


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


@dataclass(frozen=True)
class PriceSnapshot:
    as_of: str
    source: str
    models: dict[str, ModelPrice]
    hardware: dict[str, HardwarePrice]
    # Models asked for that neither the file nor litellm's map prices.
    unpriced: tuple[str, ...] = ()
    # Models the pricing file declares unpriced, with the reason (shown instead of a cost).
    declared_unpriced: dict[str, str] = field(default_factory=dict)
    # How the prices were read (e.g. a refresh that fell back to the bundled map); not hashed.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    hash: str = field(default="", compare=False)

    def content(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "source": self.source,
            "models": {k: asdict(v) for k, v in sorted(self.models.items())},
            "hardware": {k: asdict(v) for k, v in sorted(self.hardware.items())},
            "unpriced": sorted(self.unpriced),
            "declared_unpriced": dict(sorted(self.declared_unpriced.items())),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> PriceSnapshot:
        return _with_hash(cls(
            as_of=str(content["as_of"]),
            source=str(content["source"]),
            models={k: ModelPrice(**v) for k, v in content["models"].items()},
            hardware={k: HardwarePrice(**v) for k, v in content["hardware"].items()},
            unpriced=tuple(content.get("unpriced", ())),
            declared_unpriced=dict(content.get("declared_unpriced", {})),
            warnings=tuple(content.get("warnings", ())),
        ))

    def find_model(self, model: str) -> ModelPrice | None:
        for key in _model_keys(model):
            if key in self.models:
                return self.models[key]
        return None

    def model_price(self, model: str) -> ModelPrice:
        price = self.find_model(model)
        if price is None:
            raise PricingError(
                f"price snapshot {self.hash[:12]} ({self.source}) has no price for model {model!r}: "
                f"add models.{model} to the pricing file"
            )
        return price

    def hardware_price(self, key: str) -> HardwarePrice:
        if key not in self.hardware:
            raise PricingError(
                f"price snapshot {self.hash[:12]} ({self.source}) has no price for hardware {key!r}: "
                f"add hardware.{key}.usd_per_hour to the pricing file (known: {', '.join(sorted(self.hardware))})"
            )
        return self.hardware[key]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _with_hash(snapshot: PriceSnapshot) -> PriceSnapshot:
    # The hash identifies the prices, not where they were read from: the same prices under another
    # path (or after a comment-only edit) are the same snapshot.
    hashed = {k: v for k, v in snapshot.content().items() if k not in ("source", "warnings")}
    digest = hashlib.sha256(canonical_json(hashed).encode()).hexdigest()
    object.__setattr__(snapshot, "hash", digest)
    return snapshot


def _model_keys(model: str) -> list[str]:
    # "anthropic/claude-haiku-4-5" is keyed without its provider prefix in litellm's map.
    keys = [model]
    if "/" in model:
        keys.append(model.split("/", 1)[1])
    return keys


# -- the pricing file --------------------------------------------------------------------------
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


# -- litellm's price map -----------------------------------------------------------------------
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
    for key in _model_keys(model):
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


def build_snapshot(
    path: str | Path | None = None,
    models_needed: Iterable[str] = (),
    *,
    refresh_hosted: bool = False,
    price_map: tuple[Mapping[str, Any], str] | PriceMap | None = None,
    allow_unpriced: bool = False,
) -> PriceSnapshot:
    """Validate the pricing file and price every model in ``models_needed`` (file first, then litellm).

    A needed model that neither prices, and that the file's ``unpriced`` section does not declare,
    raises :class:`PricingError` naming it (``allow_unpriced`` lists it in ``unpriced`` instead).
    ``price_map`` = (map, origin) or a :class:`PriceMap` injects a map (tests); otherwise
    :func:`load_price_map` is used — with ``refresh_hosted`` always (the monthly refresh then also
    warns where a file price differs from the hosted map), else only when a model is missing.
    """
    priced = load_pricing_file(path)
    models = dict(priced.models)
    unpriced: list[str] = []
    warnings: list[str] = []
    needed = list(dict.fromkeys(models_needed))
    missing = [m for m in needed if not any(k in models for k in _model_keys(m))]
    loaded: PriceMap | None = None
    if isinstance(price_map, PriceMap):
        loaded = price_map
    elif price_map is not None:
        loaded = PriceMap(price_map[0], price_map[1], f"litellm map ({price_map[1]})")
    elif missing or refresh_hosted:
        loaded = load_price_map(refresh_hosted)
    if loaded is not None and loaded.warning:
        warnings.append(loaded.warning)
    for model in missing:
        found = price_from_litellm_map(model, loaded.table, loaded.origin, label=loaded.label,
                                       read_on=loaded.read_on) if loaded is not None else None
        if found is None:
            unpriced.append(model)
        else:
            models[model] = found
    if loaded is not None and loaded.origin == ORIGIN_LITELLM_HOSTED:
        for name, price in sorted(priced.models.items()):
            current = price_from_litellm_map(name, loaded.table, loaded.origin, label=loaded.label)
            if current and (current.input_per_mtok, current.output_per_mtok) != (price.input_per_mtok,
                                                                                  price.output_per_mtok):
                warnings.append(f"models.{name}: the pricing file says ${price.input_per_mtok:g}/${price.output_per_mtok:g} "
                                f"per MTok (as of {price.as_of}), {loaded.label} now says "
                                f"${current.input_per_mtok:g}/${current.output_per_mtok:g}: update the file")
    undeclared = [m for m in unpriced if not any(k in priced.unpriced for k in _model_keys(m))]
    if undeclared and not allow_unpriced:
        raise PricingError(
            f"{priced.path}: no price known for {', '.join(undeclared)} (not in the pricing file, not in "
            f"{loaded.label if loaded else 'litellm'}): add models.<name> with a dated source, or declare "
            "unpriced.<name>: <reason> to show it as 'price unknown'")
    declared = {m: next(priced.unpriced[k] for k in _model_keys(m) if k in priced.unpriced)
                for m in unpriced if m not in undeclared}
    declared.update({m: r for m, r in priced.unpriced.items() if m not in declared})
    source = str(priced.path)
    return _with_hash(PriceSnapshot(as_of=priced.as_of, source=source, models=models,
                                    hardware=dict(priced.hardware), unpriced=tuple(unpriced),
                                    declared_unpriced=declared, warnings=tuple(warnings)))


# -- the results store -------------------------------------------------------------------------
def store_snapshot(store: Any, snapshot: PriceSnapshot, run_id: str | None = None) -> None:
    """Record ``snapshot`` (once per content hash) and make it the current one.

    Two writers of the same snapshot at once (two runs re-pricing) both succeed: the hash is the
    content's, so the row the other one inserted first is this one's."""
    from sqlalchemy.exc import IntegrityError

    from distil_platform.storage.store import price_snapshot_activations, price_snapshots

    if not store.select(price_snapshots, hash=snapshot.hash):
        try:
            store.insert(price_snapshots, [{"hash": snapshot.hash, "as_of": snapshot.as_of or "",
                                            "source": snapshot.source, "content": snapshot.content()}])
        except IntegrityError:
            if not store.select(price_snapshots, hash=snapshot.hash):
                raise  # not the primary key race: another constraint failed
    store.insert(price_snapshot_activations, [{"hash": snapshot.hash, "run_id": run_id}])


def current_snapshot(store: Any) -> PriceSnapshot | None:
    """The snapshot most recently made current, or None when prices were never snapshotted."""
    from sqlalchemy import select

    from distil_platform.storage.store import price_snapshot_activations

    stmt = select(price_snapshot_activations.c.hash).order_by(price_snapshot_activations.c.id.desc()).limit(1)
    with store.engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return load_snapshot(store, row[0])


def load_snapshot(store: Any, snapshot_hash: str) -> PriceSnapshot:
    from distil_platform.storage.store import price_snapshots

    rows = store.select(price_snapshots, hash=snapshot_hash)
    if not rows:
        from distil_platform.redact import hide_password

        raise PricingError(f"price snapshot {snapshot_hash!r} is not in the results store ({hide_password(store.url)})")
    return PriceSnapshot.from_content(rows[0]["content"])


def price_lookup(path: str | Path | None = None):
    """``callable(model) -> (usd_per_input_token, usd_per_output_token) | None`` from the pricing
    file (for the LLM client's budget; litellm's map is its own fallback)."""
    priced = load_pricing_file(path)

    def lookup(model: str) -> tuple[float, float] | None:
        for key in _model_keys(model):
            price = priced.models.get(key)
            if price is not None:
                return price.usd_per_input_token, price.usd_per_output_token
        return None

    return lookup
