"""The GPU catalog: coverage, consistency of its figures, loose name resolution."""

from __future__ import annotations

import re

import pytest

from planner.gpus import GPUS, PRICES_AS_OF, GiB, UnknownGPU, bigger_cards, get_gpu, match_nvml


def test_catalog_covers_consumer_to_datacenter():
    keys = {g.key for g in GPUS}
    assert len(GPUS) >= 25
    for needed in ["rtx-3060-12gb", "rtx-4090", "rtx-5090", "rtx-a6000", "t4", "l4", "a10g",
                   "l40s", "v100-16gb", "a100-40gb", "a100-80gb", "h100-pcie", "h100-sxm", "h200", "b200"]:
        assert needed in keys
    assert len(keys) == len(GPUS), "duplicate keys"
    assert re.fullmatch(r"\d{4}-\d{2}", PRICES_AS_OF)


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.key)
def test_every_entry_is_complete_and_consistent(gpu):
    assert 8 * GiB <= gpu.memory_bytes <= 200 * GiB
    assert gpu.bf16_tflops and gpu.bandwidth_gbs and gpu.price_per_hour
    assert gpu.compute_capability is not None
    # bf16 exists from Ampere (compute capability 8.0) on; Turing and Volta have none.
    assert gpu.bf16 == (gpu.compute_capability >= (8, 0))
    assert gpu.bf16 == (gpu.arch not in ("turing", "volta"))
    assert gpu.interconnect in ("pcie", "nvlink")
    assert get_gpu(gpu.key) is gpu
    assert get_gpu(gpu.name) is gpu


def test_relations_between_cards():
    # Figures are vendor datasheet numbers: check orderings that must hold, not the values.
    g = {x.key: x for x in GPUS}
    assert g["h100-sxm"].bf16_tflops > g["a100-80gb"].bf16_tflops > g["rtx-4090"].bf16_tflops > g["rtx-3090"].bf16_tflops
    assert g["b200"].bf16_tflops > g["h200"].bf16_tflops
    assert g["h200"].memory_bytes > g["h100-sxm"].memory_bytes > g["a100-40gb"].memory_bytes
    assert g["a100-80gb"].bandwidth_gbs > g["a100-40gb"].bandwidth_gbs
    assert g["h100-sxm"].price_per_hour > g["rtx-4090"].price_per_hour > g["rtx-3060-12gb"].price_per_hour
    assert not g["t4"].bf16 and not g["v100-32gb"].bf16 and g["rtx-3060-12gb"].bf16


@pytest.mark.parametrize(
    "name,key",
    [
        ("4090", "rtx-4090"), ("RTX 4090", "rtx-4090"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("a100-80", "a100-80gb"), ("A100 80GB", "a100-80gb"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("A100 40GB", "a100-40gb"), ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
        ("H100 SXM", "h100-sxm"), ("h100", "h100-sxm"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("h100 pcie", "h100-pcie"), ("rtx-3060-12gb", "rtx-3060-12gb"), ("3060", "rtx-3060-12gb"),
        ("Tesla T4", "t4"), ("a10g", "a10g"), ("NVIDIA A10", "a10"), ("4060 ti", "rtx-4060-ti-16gb"),
        ("RTX 6000 Ada", "rtx-6000-ada"), ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
    ],
)
def test_loose_names_resolve(name, key):
    assert get_gpu(name).key == key


@pytest.mark.parametrize("name", ["4900", "a1000", "h1000", "rtx 4009"])
def test_unknown_names_suggest_close_ones(name):
    with pytest.raises(UnknownGPU) as info:
        get_gpu(name)
    assert info.value.suggestions
    assert name in str(info.value)


def test_unknown_without_close_match_still_says_what_to_do():
    with pytest.raises(UnknownGPU, match="unknown GPU 'potato'"):
        get_gpu("potato")


def test_nvml_names_pick_the_variant_by_memory():
    mib = 1024**2
    assert match_nvml("NVIDIA A100-SXM4-40GB", 40960 * mib).key == "a100-40gb"
    assert match_nvml("Tesla V100-SXM2-32GB", 32510 * mib).key == "v100-32gb"
    assert match_nvml("Tesla V100-SXM2-16GB", 16160 * mib).key == "v100-16gb"
    # An RTX 3060 8GB is not the 12GB card in the catalog.
    assert match_nvml("NVIDIA GeForce RTX 3060", 8192 * mib) is None
    assert match_nvml("Some Future GPU", 80 * 1024 * mib) is None


def test_bigger_cards_are_sorted_by_memory():
    cards = bigger_cards(24 * GiB)
    assert cards and all(c.memory_bytes > 24 * GiB for c in cards)
    assert [c.memory_bytes for c in cards] == sorted(c.memory_bytes for c in cards)
