"""Model resolution: catalog, local folders, and the Hub faked only at huggingface_hub's functions."""

from __future__ import annotations

import json
from types import SimpleNamespace

import huggingface_hub
import httpx2
import pytest
from huggingface_hub import errors as hub_errors

from planner import catalog
from tuneplan.errors import UserError
from tuneplan.services.models import resolve_model

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}


def _response(status: int, repo: str = "owner/model") -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", f"https://huggingface.co/{repo}/resolve/main/config.json"))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Fake `huggingface_hub.hf_hub_download` / `model_info`: serve configs from a dict or raise."""
    state = SimpleNamespace(configs={}, raise_on_download=None, info=None, calls=[])

    def hf_hub_download(repo_id, filename, *, token=None, **kwargs):
        state.calls.append(("download", repo_id, filename, token))
        if state.raise_on_download is not None:
            raise state.raise_on_download
        path = tmp_path / "hub" / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state.configs[repo_id]))
        return str(path)

    def model_info(repo_id, *, expand=None, token=None, timeout=None, **kwargs):
        state.calls.append(("model_info", repo_id, tuple(expand or ()), token))
        if state.info is None:
            raise hub_errors.OfflineModeIsEnabled("offline")
        return state.info

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    return state


# -- catalog ------------------------------------------------------------------------------
def test_catalog_name_resolves_offline():
    r = resolve_model("Llama-3.1-8B")
    assert r.kind == "catalog" and r.name == "llama-3.1-8b"
    assert r.source == r.hub_id == "meta-llama/Llama-3.1-8B"
    assert r.spec.parameter_count() == 8_030_261_248
    assert r.gated is True and r.license == "llama3.1"
    assert any("gated" in n for n in r.notes)


def test_catalog_hub_id_needs_no_network(hub):
    r = resolve_model("Qwen/Qwen2.5-7B")
    assert r.kind == "catalog" and r.name == "qwen2.5-7b"
    assert hub.calls == []


def test_typo_gets_suggestions():
    with pytest.raises(UserError) as err:
        resolve_model("lama-3.1-8b")
    assert "lama-3.1-8b" in str(err.value) and "llama-3.1-8b" in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_ref():
    with pytest.raises(UserError, match="no model given"):
        resolve_model("  ")


def test_multimodal_catalog_model_says_so():
    r = resolve_model("gemma-3-12b")
    assert any("vision tower" in n for n in r.notes)


# -- local folders ------------------------------------------------------------------------
def test_local_folder_with_config(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    r = resolve_model(str(folder))
    assert r.kind == "local" and r.local_path == folder.resolve() and r.source == str(folder.resolve())
    assert r.name == "my-model" and r.hub_id is None and r.gated is None
    assert r.spec.num_layers == 2 and r.config["hidden_size"] == 256
    # a config.json path works too
    assert resolve_model(str(folder / "config.json")).spec == r.spec


def test_local_folder_named_like_a_catalog_model_stays_local(tmp_path, monkeypatch):
    folder = tmp_path / "qwen2.5-0.5b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("./qwen2.5-0.5b").kind == "local"
    assert resolve_model("qwen2.5-0.5b").kind == "catalog"  # a bare name is the catalog's


def test_local_folder_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path / "weights"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="'./missing' does not exist"):
        resolve_model("./missing")  # named as the user typed it


def test_lora_adapter_folder_points_at_its_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-7B", "r": 16}))
    with pytest.raises(UserError, match="LoRA adapter.*--model Qwen/Qwen2.5-7B"):
        resolve_model(str(tmp_path))


def test_local_bad_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        resolve_model(str(tmp_path))


def test_local_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(UserError) as err:
        resolve_model(str(tmp_path))
    message = str(err.value)
    assert "'gpt_neox'" in message and "llama" in message and "qwen3_moe" in message and "own modeling code" in message


def test_local_safetensors_index_cross_check(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    spec = resolve_model(str(tmp_path)).spec
    index = {"metadata": {"total_size": 2 * spec.parameter_count()}, "weight_map": {}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not any("parameters" in n for n in resolve_model(str(tmp_path)).notes)
    index["metadata"]["total_size"] += 2 * 1000
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert any("safetensors index counts" in n for n in resolve_model(str(tmp_path)).notes)


# -- the Hub --------------------------------------------------------------------------------
def test_hub_id_fetches_config_only(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.configs["someone/tiny-llama"] = TINY_LLAMA
    expected = resolve_model.__globals__["spec_from_config"](TINY_LLAMA, "x").parameter_count()
    hub.info = SimpleNamespace(
        safetensors=SimpleNamespace(total=expected, parameters={"BF16": expected}),
        gated=False,
        card_data=SimpleNamespace(license="apache-2.0"),
    )
    r = resolve_model("someone/tiny-llama", token="hf_secret")
    assert r.kind == "hub" and r.source == r.hub_id == "someone/tiny-llama"
    assert r.hub_parameters == expected and r.license == "apache-2.0" and r.gated is False
    assert not r.notes
    assert hub.calls[0] == ("download", "someone/tiny-llama", "config.json", "hf_secret")
    assert "hf_secret" not in repr(r)


def test_hub_parameter_mismatch_is_a_note_not_an_error(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.configs["someone/tiny-llama"] = TINY_LLAMA
    hub.info = SimpleNamespace(safetensors=SimpleNamespace(total=123, parameters={"BF16": 123}), gated="manual", card_data=None)
    r = resolve_model("someone/tiny-llama")
    assert r.gated is True and r.hub_parameters == 123
    assert any("safetensors metadata counts 123" in n for n in r.notes)


def test_hub_metadata_unavailable_is_fine(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.configs["someone/tiny-llama"] = TINY_LLAMA
    r = resolve_model("someone/tiny-llama")  # model_info raises: no cross-check
    assert r.hub_parameters is None and r.kind == "hub"


def test_hub_offline_skips_the_api(hub):
    hub.configs["someone/tiny-llama"] = TINY_LLAMA  # served from the (fake) cache
    r = resolve_model("someone/tiny-llama")
    assert [c[0] for c in hub.calls] == ["download"]
    assert r.hub_parameters is None


@pytest.mark.parametrize("token, expect", [(None, "log in"), ("hf_x", "no access yet")])
def test_gated_repo(hub, monkeypatch, token, expect):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    hub.raise_on_download = hub_errors.GatedRepoError("Access to model owner/model is restricted", response=_response(403))
    with pytest.raises(UserError) as err:
        resolve_model("owner/model", token=token)
    message = str(err.value)
    assert "gated" in message and expect in message and "https://huggingface.co/owner/model" in message
    assert "hf_x" not in message


def test_repo_not_found(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    hub.raise_on_download = hub_errors.RepositoryNotFoundError("404 Repository Not Found", response=_response(404))
    with pytest.raises(UserError) as err:
        resolve_model("owner/Llama-3.1-8B-typo")
    message = str(err.value)
    assert "no model 'owner/Llama-3.1-8B-typo'" in message and "HF_TOKEN" in message


def test_offline_without_cache(hub, monkeypatch):
    hub.raise_on_download = hub_errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
    with pytest.raises(UserError) as err:
        resolve_model("owner/model")
    assert "HF_HUB_OFFLINE" in str(err.value) and "not in the local Hub cache" in str(err.value)


def test_hub_retry_chatter_is_silenced(hub, monkeypatch, caplog):
    import logging

    def noisy(repo_id, filename, *, token=None, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise hub_errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", noisy)
    with caplog.at_level(logging.WARNING), pytest.raises(UserError):
        resolve_model("owner/model")
    assert "Retrying" not in caplog.text
    assert logging.getLogger("huggingface_hub").level != logging.ERROR  # restored


def test_connection_error(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.raise_on_download = ConnectionError("Failed to resolve 'huggingface.co'")
    with pytest.raises(UserError, match="cannot be reached"):
        resolve_model("owner/model")


def test_repo_without_config_json(hub):
    hub.raise_on_download = hub_errors.RemoteEntryNotFoundError("404 Entry Not Found", response=_response(404))
    with pytest.raises(UserError, match="no config.json on the Hub"):
        resolve_model("owner/model")


def test_bad_token(hub):
    hub.raise_on_download = hub_errors.HfHubHTTPError("401 Unauthorized", response=_response(401))
    with pytest.raises(UserError, match="rejected your token"):
        resolve_model("owner/model")


def test_unsupported_hub_architecture(hub):
    hub.configs["owner/falcon"] = {"model_type": "falcon", "architectures": ["FalconForCausalLM"]}
    with pytest.raises(UserError, match="'falcon'.*not supported"):
        resolve_model("owner/falcon")


def test_hub_object_can_be_passed_in():
    class FakeHub:
        def hf_hub_download(self, repo_id, filename, *, token=None):
            raise hub_errors.GatedRepoError("restricted", response=_response(403))

    with pytest.raises(UserError, match="gated"):
        resolve_model("owner/model", hub=FakeHub())


def test_real_library_offline_and_uncached(tmp_path, monkeypatch):
    """No fake: huggingface_hub itself, offline (conftest) with an empty cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        resolve_model("tuneplan-tests/not-cached-anywhere")


def test_every_catalog_entry_resolves():
    for name in catalog.names():
        assert resolve_model(name).spec.parameter_count() > 0


def test_source_mode_finds_what_resolve_model_finds_without_modelling_it(tmp_path):
    """One resolver: the launcher and the trainer take `resolve_source`, which finds a model as
    `resolve_model` does but builds no spec, so an architecture the planner does not model
    still trains."""
    from tuneplan.services.models import resolve_source

    assert resolve_source("llama-3.1-8b") == resolve_model("llama-3.1-8b").source == catalog.find("llama-3.1-8b").hub_id
    assert resolve_source("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"
    folder = tmp_path / "unmodelled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "some-new-arch", "hidden_size": 64,
                                                     "num_hidden_layers": 2}))
    with pytest.raises(UserError):
        resolve_model(str(folder))  # the planner cannot model it ...
    assert resolve_source(str(folder)) == str(folder.resolve())  # ... but training can load it
    for bad, words in ((str(tmp_path / "missing"), "does not exist"), (str(tmp_path), "has no config.json"),
                       ("lama-3.1-8b", "did you mean")):
        with pytest.raises(UserError, match=words) as exc:
            resolve_source(bad)
        assert "\n" not in str(exc.value)
