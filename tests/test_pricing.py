"""Pricing file validation, litellm fallback, snapshot hashing and the store's current snapshot."""

from __future__ import annotations

import pytest
import yaml

from distil_platform.pricing import (
    DEFAULT_PRICING_FILE,
    ORIGIN_FILE,
    ORIGIN_LITELLM_BUNDLED,
    PricingError,
    build_snapshot,
    current_snapshot,
    load_pricing_file,
    price_lookup,
    pricing_file,
    pricing_hardware_key,
    store_snapshot,
)
from distil_platform.store import ResultsStore
from distil_platform.taskspec import load_tasks


def _write(tmp_path, data, name="pricing.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _base():
    return yaml.safe_load(DEFAULT_PRICING_FILE.read_text())


def test_shipped_file_is_valid_and_prices_every_task_model():
    priced = load_pricing_file()
    assert priced.hardware["h100"].usd_per_hour == 2.40
    assert any(k.startswith("cpu-") for k in priced.hardware)
    models = {ref.model for spec in load_tasks().values() for ref in spec.comparison_models}
    snap = build_snapshot(models_needed=models)
    assert not snap.unpriced
    assert all(snap.model_price(m).origin == ORIGIN_FILE for m in models)


def test_env_overrides_the_pricing_file(tmp_path, monkeypatch):
    path = _write(tmp_path, _base())
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(path))
    assert pricing_file() == path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["models"]["openai/gpt-5-nano"].update(input_per_mtok=-0.05),
         "models.openai/gpt-5-nano.input_per_mtok: must not be negative"),
        (lambda d: d["models"]["anthropic/claude-haiku-4-5"].pop("output_per_mtok"),
         "models.anthropic/claude-haiku-4-5.output_per_mtok: missing"),
        (lambda d: d["models"]["gemini/gemini-2.5-flash"].update(output_per_mtok="cheap"),
         "models.gemini/gemini-2.5-flash.output_per_mtok: must be a number"),
        (lambda d: d["hardware"].update({"h10": {"usd_per_hour": 2.0}}), "hardware.h10: unknown hardware"),
        (lambda d: d["hardware"]["h100"].update(usd_per_hour=True), "hardware.h100.usd_per_hour: must be a number"),
        (lambda d: d["models"]["openai/gpt-5-nano"].update(as_of="last week"),
         "models.openai/gpt-5-nano.as_of: must be a date"),
        (lambda d: d["models"]["openai/gpt-5-nano"].update(input_price=1), "models.openai/gpt-5-nano.input_price: unknown"),
    ],
)
def test_invalid_entries_are_named(tmp_path, mutate, expected):
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(PricingError) as err:
        load_pricing_file(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    data = _base()
    data["models"]["openai/gpt-5-nano"]["input_per_mtok"] = -1
    data["hardware"]["h100"]["usd_per_hour"] = "x"
    with pytest.raises(PricingError, match=r"2 problem\(s\)"):
        load_pricing_file(_write(tmp_path, data))


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(PricingError, match="not valid YAML"):
        load_pricing_file(_write(tmp_path, "models: [unclosed"))
    with pytest.raises(PricingError, match="not found"):
        load_pricing_file(tmp_path / "nope.yaml")


def test_hardware_shorthand_and_cached_default(tmp_path):
    data = {"as_of": "2026-10-01", "models": {"x/m": {"input_per_mtok": 2, "output_per_mtok": 4, "source": "quote"}},
            "hardware": {"h100": 2.4}}
    priced = load_pricing_file(_write(tmp_path, data))
    assert priced.hardware["h100"].usd_per_hour == 2.4
    assert priced.models["x/m"].cached_input_per_mtok == 2  # cached billed as input when unknown
    assert priced.models["x/m"].as_of == "2026-10-01"


def test_missing_models_fall_back_to_litellm_map_marked_as_such(tmp_path):
    path = _write(tmp_path, _base())
    fake_map = {"gpt-4o-mini": {"input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7,
                                "cache_read_input_token_cost": 7.5e-8}}
    snap = build_snapshot(path, ["openai/gpt-4o-mini", "nobody/knows"], price_map=(fake_map, "litellm_bundled"))
    price = snap.model_price("openai/gpt-4o-mini")
    assert price.origin == ORIGIN_LITELLM_BUNDLED
    assert (price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok) == (0.15, 0.6, 0.075)
    assert snap.unpriced == ("nobody/knows",)
    # The real bundled map (read from disk, no network) knows a common model too.
    real = build_snapshot(path, ["openai/gpt-4o-mini"])
    assert real.model_price("openai/gpt-4o-mini").origin == ORIGIN_LITELLM_BUNDLED
    with pytest.raises(PricingError, match="nobody/knows"):
        snap.model_price("nobody/knows")


def test_snapshot_hash_tracks_prices_not_comments(tmp_path):
    data = _base()
    a = build_snapshot(_write(tmp_path, data, "a.yaml"))
    b = build_snapshot(_write(tmp_path, "# a comment\n" + yaml.safe_dump(data), "b.yaml"))
    assert a.hash == b.hash and len(a.hash) == 64
    data["hardware"]["h100"]["usd_per_hour"] = 2.41
    c = build_snapshot(_write(tmp_path, data, "c.yaml"))
    assert c.hash != a.hash
    with pytest.raises(PricingError, match="hardware 'l40s'"):
        c.hardware_price("l40s")


def test_store_keeps_previous_snapshot_current_after_invalid_edit_and_revert(tmp_path):
    store = ResultsStore()
    data = _base()
    path = _write(tmp_path, data)
    first = build_snapshot(path)
    store_snapshot(store, first, "run1")
    assert current_snapshot(store).hash == first.hash
    data["hardware"]["h100"]["usd_per_hour"] = -1
    _write(tmp_path, data)
    with pytest.raises(PricingError):
        build_snapshot(path)  # nothing stored
    assert current_snapshot(store).hash == first.hash
    data["hardware"]["h100"]["usd_per_hour"] = 3.0
    second = build_snapshot(_write(tmp_path, data))
    store_snapshot(store, second, "run2")
    assert current_snapshot(store).hash == second.hash
    store_snapshot(store, first, "run3")  # reverted content becomes current again
    restored = current_snapshot(store)
    assert restored.hash == first.hash and restored.hardware_price("h100").usd_per_hour == 2.40


def test_price_lookup_for_llm_client_and_cpu_hardware_key():
    lookup = price_lookup()
    assert lookup("anthropic/claude-haiku-4-5") == pytest.approx((1e-6, 5e-6))
    assert lookup("unknown/model") is None
    assert pricing_hardware_key("cpu", "AMD EPYC 9R14, 2 cores") == "cpu-2core"
    assert pricing_hardware_key("h100", "1x NVIDIA H100 80GB HBM3") == "h100"
