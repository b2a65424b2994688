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

A file that fails validation raises ``PricingError`` naming the file and each bad entry; no
snapshot is built, so the previously stored one stays current. Reading and validating the file is
:mod:`~distil_platform.economics.pricing_file`, litellm's map :mod:`~distil_platform.economics.litellm_prices`,
the hardware keys :mod:`~distil_platform.economics.hardware_keys`; this module builds, hashes and stores snapshots.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.economics.litellm_prices import PriceMap, load_price_map, price_from_litellm_map
from distil_platform.economics.pricing_file import (
    ORIGIN_LITELLM_HOSTED,
    HardwarePrice,
    ModelPrice,
    PricingError,
    load_pricing_file,
    model_keys,
)


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
        for key in model_keys(model):
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
    missing = [m for m in needed if not any(k in models for k in model_keys(m))]
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
    undeclared = [m for m in unpriced if not any(k in priced.unpriced for k in model_keys(m))]
    if undeclared and not allow_unpriced:
        raise PricingError(
            f"{priced.path}: no price known for {', '.join(undeclared)} (not in the pricing file, not in "
            f"{loaded.label if loaded else 'litellm'}): add models.<name> with a dated source, or declare "
            "unpriced.<name>: <reason> to show it as 'price unknown'")
    declared = {m: next(priced.unpriced[k] for k in model_keys(m) if k in priced.unpriced)
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
