"""Pricing file validation, litellm fallback, snapshot hashing and the store's current snapshot."""

from __future__ import annotations

from datetime import date

import pytest
import yaml

from distil_platform.economics.hardware_keys import gpu_hardware_key, pricing_hardware_key
from distil_platform.economics.litellm_prices import (
    bundled_litellm_price_map,
    litellm_version,
    price_from_litellm_map,
)
from distil_platform.economics.pricing import PriceSnapshot, build_snapshot, current_snapshot, store_snapshot
from distil_platform.economics.pricing_file import (
    DEFAULT_PRICING_FILE,
    ORIGIN_FILE,
    ORIGIN_LITELLM_BUNDLED,
    ORIGIN_LITELLM_HOSTED,
    PricingError,
    load_pricing_file,
    price_lookup,
    pricing_file,
)
from distil_platform.storage.store import ResultsStore, price_snapshot_activations, price_snapshots
from distil_platform.tasks.spec import load_tasks


def _write(tmp_path, data, name="pricing.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _base():
    return yaml.safe_load(DEFAULT_PRICING_FILE.read_text())


# The seed benchmark's ten frontier models and the provider key each needs.
BENCHMARK_MODELS = {
    "openai/gpt-5-nano": "OPENAI_API_KEY", "openai/gpt-5-mini": "OPENAI_API_KEY", "openai/gpt-5.2": "OPENAI_API_KEY",
    "gemini/gemini-2.5-flash-lite": "GEMINI_API_KEY", "gemini/gemini-2.5-flash": "GEMINI_API_KEY",
    "anthropic/claude-haiku-4-5": "ANTHROPIC_API_KEY", "anthropic/claude-sonnet-4-6": "ANTHROPIC_API_KEY",
    "anthropic/claude-opus-4-6": "ANTHROPIC_API_KEY", "xai/grok-4-1-fast-reasoning": "XAI_API_KEY",
    "xai/grok-4": "XAI_API_KEY",
}


def test_shipped_file_is_valid_and_prices_every_task_model():
    priced = load_pricing_file()
    assert priced.hardware["h100"].usd_per_hour == 2.40
    assert any(k.startswith("cpu-") for k in priced.hardware)
    models = {ref.model for spec in load_tasks().values() for ref in spec.comparison_models}
    snap = build_snapshot(models_needed=models)
    # Every model is priced by the file with a dated source, or declared unpriced with a reason.
    assert set(snap.unpriced) == set(snap.declared_unpriced) == {"xai/grok-4", "xai/grok-4-1-fast-reasoning"}
    for m in set(models) - set(snap.unpriced):
        price = snap.model_price(m)
        assert price.origin == ORIGIN_FILE and price.as_of and "litellm bundled map" in price.source


def test_every_task_lists_the_ten_benchmark_models_with_keys_and_price_tiers():
    snap = build_snapshot()
    for spec in load_tasks().values():
        refs = {ref.model: ref for ref in spec.comparison_models}
        assert {m: r.api_key_env for m, r in refs.items()} == BENCHMARK_MODELS, spec.name
        for model, ref in refs.items():
            price = snap.find_model(model)
            if price is not None:  # mid-tier means under $1 per million input tokens
                assert (ref.tier == "mid_tier") == (price.input_per_mtok < 1.0), (spec.name, model)
            else:
                assert model in snap.declared_unpriced


def test_file_prices_agree_with_the_litellm_map_they_cite():
    """The shipped prices were read from litellm's bundled map: they must still be what it says."""
    bundled = bundled_litellm_price_map()
    for name, price in load_pricing_file().models.items():
        entry = price.source.split("entry '")[1].split("'")[0]
        mapped = price_from_litellm_map(entry, bundled, ORIGIN_LITELLM_BUNDLED)
        assert mapped is not None, name
        assert (mapped.input_per_mtok, mapped.output_per_mtok) == (price.input_per_mtok, price.output_per_mtok), name


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
    # A model nobody prices is an error naming it, not a silent gap ...
    with pytest.raises(PricingError, match="no price known for nobody/knows"):
        build_snapshot(path, ["openai/gpt-4o-mini", "nobody/knows"], price_map=(fake_map, "litellm_bundled"))
    snap = build_snapshot(path, ["openai/gpt-4o-mini", "nobody/knows"], price_map=(fake_map, "litellm_bundled"),
                          allow_unpriced=True)
    price = snap.model_price("openai/gpt-4o-mini")
    assert price.origin == ORIGIN_LITELLM_BUNDLED
    assert (price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok) == (0.15, 0.6, 0.075)
    assert snap.unpriced == ("nobody/knows",)
    # The real bundled map (read from disk, no network) knows a common model too: its price says
    # where it came from (the map and litellm's version), and is not stamped with the file's date.
    real = build_snapshot(path, ["openai/gpt-4o-mini"])
    found = real.model_price("openai/gpt-4o-mini")
    assert found.origin == ORIGIN_LITELLM_BUNDLED
    assert found.source == f"litellm bundled map {litellm_version()}, entry 'gpt-4o-mini'"
    assert found.as_of == "" and real.as_of == load_pricing_file(path).as_of != ""
    with pytest.raises(PricingError, match="nobody/knows"):
        snap.model_price("nobody/knows")
    # ... unless the file declares it unpriced, with the reason.
    data = _base()
    data["unpriced"] = {"nobody/knows": "no public price"}
    declared = build_snapshot(_write(tmp_path, data, "declared.yaml"), ["nobody/knows"], price_map=(fake_map, "x"))
    assert declared.declared_unpriced["nobody/knows"] == "no public price" and declared.unpriced == ("nobody/knows",)
    data["unpriced"] = {"openai/gpt-5-nano": "clash"}
    with pytest.raises(PricingError, match="unpriced.openai/gpt-5-nano: also priced"):
        load_pricing_file(_write(tmp_path, data, "clash.yaml"))


class _Response:
    def __init__(self, payload):
        self.payload = payload

    def raise_for_status(self):
        return None

    def json(self):
        return self.payload


def test_refresh_that_falls_back_to_the_bundled_map_warns(tmp_path, monkeypatch):
    import httpx

    def offline(*args, **kwargs):
        raise httpx.ConnectError("no route to host")

    monkeypatch.setattr(httpx, "get", offline)
    path = _write(tmp_path, _base())
    snap = build_snapshot(path, ["openai/gpt-4o-mini"], refresh_hosted=True)
    assert len(snap.warnings) == 1 and "ConnectError: no route to host" in snap.warnings[0]
    assert "fell back to the litellm bundled map" in snap.warnings[0]
    assert snap.model_price("openai/gpt-4o-mini").origin == ORIGIN_LITELLM_BUNDLED
    assert build_snapshot(path, ["openai/gpt-4o-mini"]).warnings == ()  # no refresh asked: nothing to warn
    assert snap.hash == build_snapshot(path, ["openai/gpt-4o-mini"]).hash  # warnings are not prices

    monkeypatch.setattr(httpx, "get", lambda *a, **k: _Response({"tiny": {}}))
    assert "implausible" in build_snapshot(path, refresh_hosted=True).warnings[0]

    # A hosted map that was read: prices carry the day it was read; file prices it disagrees with are named.
    hosted = {f"filler-{i}": {} for i in range(600)}
    hosted["gpt-4o-mini"] = {"input_cost_per_token": 2e-7, "output_cost_per_token": 8e-7}
    hosted["gpt-5-nano"] = {"input_cost_per_token": 1e-7, "output_cost_per_token": 4e-7}
    monkeypatch.setattr(httpx, "get", lambda *a, **k: _Response(hosted))
    fresh = build_snapshot(path, ["openai/gpt-4o-mini"], refresh_hosted=True)
    price = fresh.model_price("openai/gpt-4o-mini")
    assert price.origin == ORIGIN_LITELLM_HOSTED and price.as_of == date.today().isoformat()
    assert [w for w in fresh.warnings if "openai/gpt-5-nano" in w and "$0.1/$0.4" in w]


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


def test_concurrent_writers_of_one_snapshot_all_succeed(tmp_path):
    """Runs re-pricing at once store the same snapshot (its hash is its content's): every writer
    succeeds, the snapshot is stored once, and each writer's activation is recorded. Before the fix the
    check-then-insert raced: losers failed with an IntegrityError on the primary key."""
    import threading

    base = build_snapshot(_write(tmp_path, _base())).content()
    snapshots = [PriceSnapshot.from_content({**base, "as_of": f"2030-01-{i + 1:02d}"}) for i in range(20)]
    assert len({s.hash for s in snapshots}) == 20
    store = ResultsStore()
    writers = 6
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        for snapshot in snapshots:
            barrier.wait()  # all writers race on this snapshot
            try:
                store_snapshot(store, snapshot, f"run-{n}")
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(r["hash"] for r in store.select(price_snapshots)) == sorted(s.hash for s in snapshots)
    assert len(store.select(price_snapshot_activations)) == writers * len(snapshots)


def test_price_lookup_for_llm_client_and_cpu_hardware_key():
    lookup = price_lookup()
    # (input, output, cached input) per token: the client bills cached prompt tokens at the third.
    assert lookup("anthropic/claude-haiku-4-5") == pytest.approx((1e-6, 5e-6, 1e-7))
    assert lookup("unknown/model") is None
    assert pricing_hardware_key("cpu", "AMD EPYC 9R14, 2 cores") == "cpu-2core"
    assert pricing_hardware_key("h100", "1x NVIDIA H100 80GB HBM3") == "h100"


def test_hardware_names_match_exactly_gh200_is_not_h200():
    assert gpu_hardware_key("NVIDIA GH200 480GB") == "gh200"
    assert gpu_hardware_key("NVIDIA H200") == "h200"
    assert gpu_hardware_key("NVIDIA A100-SXM4-80GB") == "a100"
    assert gpu_hardware_key("NVIDIA L40S") == "l40s" and gpu_hardware_key("NVIDIA L4") == "l4"
    assert gpu_hardware_key("AMD Instinct MI300X") == "mi300x" and gpu_hardware_key("NVIDIA RTX 4090") is None
    # A server key guessed by substring ("h200" inside "GH200") is corrected from the description ...
    assert pricing_hardware_key("h200", "1x NVIDIA GH200 480GB") == "gh200"
    # ... and a GH200 without a price is an error naming it, never the H200's price.
    with pytest.raises(PricingError, match="hardware 'gh200'"):
        build_snapshot().hardware_price("gh200")


def test_the_clients_cost_and_spend_bill_cached_tokens_at_the_pricing_files_cached_rate(tmp_path, monkeypatch):
    """Issue 32, finding 8: the pricing file's lookup returned (input, output) only, so a model priced
    there had its provider-cached prompt tokens billed at the full input price, per request and
    against the spend cap. Through the resource's default lookup (the pricing file first)."""
    from distil_platform.resources.models import LLMResource
    from test_llm_client import StubServer

    from distil_platform.llm import ChatRequest

    data = _base()
    data["models"]["openai/stub-priced"] = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0,
                                            "cached_input_per_mtok": 100.0, "source": "test", "as_of": "2026-12-01"}
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(_write(tmp_path, data)))
    stub = StubServer()  # "cached ..." prompts: 4 of the 10 prompt tokens cached, 5 completion tokens
    try:
        client = LLMResource(concurrency=1).client(model="openai/stub-priced", api_base=stub.api_base,
                                                   api_key="sk-test", max_usd=1.0)
        (result,) = client.chat_batch([ChatRequest(messages=[{"role": "user", "content": "cached prefix"}])])
    finally:
        stub.close()
    expected = 6 * 1e-3 + 4 * 1e-4 + 5 * 2e-3
    assert result.cached_prompt_tokens == 4 and result.cost_usd == pytest.approx(expected)
    assert client.spent_usd == pytest.approx(expected)
