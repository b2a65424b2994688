"""The compute dtype follows the hardware: decided on recorded /proc/cpuinfo flag sets, not only on the
machine the test runs on (tests/fixtures/cpuinfo/)."""

from pathlib import Path

import pytest

from distil_platform.precision import (
    DTYPE_ENV,
    choose_precision,
    detect_precision,
    normalise_dtype,
    parse_cpu_flags,
    read_cpu_flags,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"


def _flags(name: str) -> set[str]:
    return parse_cpu_flags((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("fixture", "machine", "dtype", "short"),
    [
        # AVX2/FMA only: bf16 is emulated (340 s vs 14 s per make-run LoRA step, cpu-notes).
        ("amd-epyc-zen3-avx2.txt", "x86_64", "float32", "fp32"),
        # AVX512-BF16 without AMX (this project's Zen 5 VM).
        ("amd-epyc-zen5-avx512bf16.txt", "x86_64", "bfloat16", "bf16"),
        # AMX + AVX512-BF16 (Sapphire Rapids).
        ("intel-xeon-sapphire-rapids-amx.txt", "x86_64", "bfloat16", "bf16"),
        ("aws-graviton3-arm64-bf16.txt", "aarch64", "bfloat16", "bf16"),
        ("aws-graviton2-arm64.txt", "aarch64", "float32", "fp32"),
    ],
)
def test_cpu_dtype_from_recorded_flags(fixture, machine, dtype, short):
    flags = _flags(fixture)
    assert flags, f"{fixture}: no flags parsed"
    choice = choose_precision(device="cpu", cpu_flags=flags, machine=machine)
    assert (choice.dtype, choice.short, choice.source, choice.device) == (dtype, short, "cpu_flags", "cpu")
    assert choice.reason  # shown in the UI beside the dtype


def test_reasons_name_the_deciding_flags():
    amx = choose_precision(device="cpu", cpu_flags=_flags("intel-xeon-sapphire-rapids-amx.txt"), machine="x86_64")
    assert "avx512_bf16" in amx.reason and "amx_bf16" in amx.reason
    avx2 = choose_precision(device="cpu", cpu_flags=_flags("amd-epyc-zen3-avx2.txt"), machine="x86_64")
    assert "no native bf16" in avx2.reason and "avx2" in avx2.reason


def test_a_flag_only_in_a_substring_does_not_count():
    # "avx512_bf16" must be a whole flag: the Zen 3 set has avx2 and sha_ni but nothing named *bf16*.
    assert choose_precision(device="cpu", cpu_flags={"avx2", "avx512_bf16x"}, machine="x86_64").dtype == "float32"


@pytest.mark.parametrize(("capability", "dtype"), [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((8, 9), "bfloat16"),
                                                    ((7, 5), "float16"), ((7, 0), "float16")])
def test_gpu_dtype_from_compute_capability(capability, dtype):
    choice = choose_precision(device="cuda", cuda_capability=capability)
    assert (choice.dtype, choice.source, choice.device) == (dtype, "cuda_capability", "cuda")
    assert f"{capability[0]}.{capability[1]}" in choice.reason


def test_setting_overrides_the_hardware():
    avx2 = _flags("amd-epyc-zen3-avx2.txt")
    forced = choose_precision(device="cpu", cpu_flags=avx2, machine="x86_64", setting="bf16", setting_name="X")
    assert (forced.dtype, forced.source) == ("bfloat16", "setting") and "X=bf16" in forced.reason
    assert choose_precision(device="cpu", cpu_flags=avx2, machine="x86_64", setting="auto").dtype == "float32"
    with pytest.raises(ValueError, match="compute dtype 'int8'"):
        choose_precision(device="cpu", cpu_flags=avx2, setting="int8")


@pytest.mark.parametrize(("name", "canonical"), [("bf16", "bfloat16"), ("BFloat16", "bfloat16"), ("fp16", "float16"),
                                                 ("half", "float16"), ("fp32", "float32"), ("float", "float32"),
                                                 ("auto", "auto")])
def test_normalise_dtype(name, canonical):
    assert normalise_dtype(name) == canonical


def test_env_setting_applies_when_the_caller_says_auto(monkeypatch):
    monkeypatch.setenv(DTYPE_ENV, "fp32")
    choice = detect_precision("cpu", "auto")
    assert (choice.dtype, choice.source) == ("float32", "setting") and DTYPE_ENV in choice.reason
    # An explicit setting (a profile's or a resource's) wins over the environment.
    assert detect_precision("cpu", "bfloat16").dtype == "bfloat16"
    monkeypatch.delenv(DTYPE_ENV)
    here = detect_precision("cpu", None)
    assert here.source == "cpu_flags"
    assert here.dtype == choose_precision(device="cpu", cpu_flags=read_cpu_flags()).dtype


@pytest.mark.parametrize(("fixture", "short"), [("amd-epyc-zen3-avx2.txt", "fp32"),
                                                ("amd-epyc-zen5-avx512bf16.txt", "bf16"),
                                                ("intel-xeon-sapphire-rapids-amx.txt", "bf16")])
def test_serving_dtype_variant_name_and_cache_identity_follow_the_cpu(fixture, short, monkeypatch, tmp_path):
    """With the flags of another machine, a CPU server of the same checkpoint runs in that machine's
    dtype, its variant is named after it, and its answers are cached under another identity."""
    from distil_platform.assets.throughput import no_prefix_cache_variant
    from distil_platform.resources.models import ServingResource

    from distil_platform import precision
    from distil_platform.serving import hardware
    from distil_platform.serving import server as serving

    monkeypatch.setattr(precision, "read_cpu_flags", lambda path="/proc/cpuinfo": _flags(fixture))
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    chosen = hardware.serving_precision("auto", on_gpu=False)
    assert chosen.short == short
    handle = serving.Server(base_url="http://127.0.0.1:1/v1", model="m", backend="transformers", pid=0,
                            hardware_description="cpu", hardware_key="cpu", command=[], log_path=tmp_path / "log",
                            on_gpu=False, precision=chosen)
    assert handle.precision_label == short and no_prefix_cache_variant(short) == f"{short}_no_prefix_cache"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    resource = ServingResource(backend="transformers", device="cpu")
    identity = resource.identity_for(ckpt, "m")
    assert identity["dtype"] == chosen.dtype
    # An explicit dtype on the resource wins over the flags, and changes the cache identity.
    pinned = ServingResource(backend="transformers", device="cpu", dtype="fp32" if short == "bf16" else "bf16")
    assert pinned.identity_for(ckpt, "m") != identity
