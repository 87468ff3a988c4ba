"""The long-context path (tuneplan/training/long_context.py): the tiled MLP gives the plain
MLP's gradients, trl's activation offloading runs on the CPU, the host embedding looks tokens up
as `nn.Embedding` does, and a real tiny run with every long-context knob on trains, resumes and
matches the losses of the same run without them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tiny_runs import tiny_config


def _tiny_llama(seed=0, **config):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, **config)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def test_shards_follow_ceil_tokens_over_hidden():
    from tuneplan.training.long_context import mlp_shard_tokens, mlp_shards

    assert mlp_shards(4096, 4096) == 1 and mlp_shards(4097, 4096) == 2
    assert mlp_shards(131072, 4096) == 32 and mlp_shard_tokens(131072, 4096) == 4096
    assert mlp_shards(131072, 8192) == 16  # 70B
    assert mlp_shards(100, 32) == 4 and mlp_shard_tokens(100, 32) == 25
    assert mlp_shards(1, 4096) == 1


@pytest.mark.parametrize("full", [False, True])
def test_tiled_mlp_with_offloading_gives_the_plain_gradients(full):
    """Checkpointing on both sides; one side tiles its MLPs (4 shards of 25 positions) and
    offloads the saved tensors through trl's manager built for the CPU."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneplan.training import long_context as lc

    plain, tiled = _tiny_llama(), _tiny_llama()
    models = []
    for m in (plain, tiled):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.config.use_cache = False
        if not full:
            m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
            m.enable_input_require_grads()
        m.train()
        models.append(m)
    plain, tiled = models
    tiled.load_state_dict(plain.state_dict())
    assert lc.apply_tiled_mlp(tiled) == 2
    ids = torch.randint(0, 100, (2, 100), generator=torch.Generator().manual_seed(1))
    loss_plain = plain(input_ids=ids, labels=ids).loss
    loss_plain.backward()
    manager = lc.offload_manager(tiled)
    with manager:
        loss_tiled = tiled(input_ids=ids, labels=ids).loss
        loss_tiled.backward()
    assert manager.tensor_id > 0  # the hooks saw the checkpointed inputs
    torch.testing.assert_close(loss_tiled, loss_plain, rtol=1e-6, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert grads
    for n, p in tiled.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_the_recomputation_draws_the_forward_dropout_masks():
    """Dropout draws its masks shard by shard; the backward's recomputation restores the RNG, so
    the gradient is the one of the output the forward produced: y = dropout(x) * w gives
    dL/dw = sum(y / w) for L = sum(y)."""
    import torch

    from tuneplan.training.long_context import TiledMLP

    w = torch.nn.Parameter(torch.tensor(1.5))
    x = torch.randn(2, 96, 8, requires_grad=True)  # 12 shards of 8 positions

    def fn(part):
        return torch.nn.functional.dropout(part, 0.5, training=True) * w

    y = TiledMLP.apply(fn, x, w)
    y.sum().backward()
    torch.testing.assert_close(w.grad, (y.detach() / w.detach()).sum())
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() * 2 * 1.5)


def test_offloading_implies_checkpointing_in_the_model_and_the_trainer():
    """A setup with offloading on and checkpointing off (the planner counts offloading as
    checkpointed: planner/memory.py) trains checkpointed, and says so."""
    from planner.setup import TrainSetup
    from tiny_runs import tiny_config
    from tuneplan.training.modeling import prepare_for_training
    from tuneplan.training.sft import sft_config

    setup = TrainSetup(method="full", grad_checkpointing=False, offload_activations=True)
    notes: list[str] = []
    model = prepare_for_training(_tiny_llama(), setup, notes)
    assert model.is_gradient_checkpointing
    assert any("implies checkpointing" in n for n in notes)
    config = tiny_config("unused", setup=dict(grad_checkpointing=False, offload_activations=True))
    assert sft_config(config).gradient_checkpointing
    assert not sft_config(tiny_config("unused")).gradient_checkpointing  # knobs off: as before


def test_knobs_off_leave_the_model_as_it_was():
    from planner.setup import TrainSetup
    from tuneplan.training.modeling import prepare_for_training

    model = prepare_for_training(_tiny_llama(), TrainSetup(method="full", grad_checkpointing=True), [])
    assert not any(getattr(m, "_tuneplan_tiled", False) for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())


def _losses(run_dir):
    from tuneplan.events import read_events

    return {e.step: e.loss for e in read_events(run_dir) if e.kind == "log"}


@pytest.mark.slow
def test_every_long_context_knob_trains_resumes_and_matches_the_plain_run(tiny_model, runs_root):
    """Offloading + tiled MLP + chunked RMSNorm + host embedding + trl's chunked loss + checkpointing against no
    checkpointing and transformers' loss: packed rows of 4 x 256 tokens (16 MLP shards and 16 norm
    chunks of the tiny model's hidden size 64), 8 steps, then the same run resumed from its step-4 checkpoint."""
    import torch

    from tuneplan.services.launcher import prepare_run
    from tuneplan.training.runner import run_worker

    def train(run_dir):
        # the adapters are initialised from the global RNG before the trainer seeds it: start
        # every in-process run from the same state, as every real run starts in a new process
        torch.manual_seed(0)
        return run_worker(run_dir, install_signals=False)

    common = dict(seq_len=256, packing=True, lora_dropout=0.0)
    training = dict(max_steps=8, save_steps=4, logging_steps=2, eval_steps=4)  # in-process evaluation too
    plain_cfg = tiny_config(tiny_model, setup=dict(common, grad_checkpointing=False, fused_ce=False),
                            training=training)
    long_cfg = tiny_config(tiny_model, setup=dict(common, grad_checkpointing=True, fused_ce=True,
                                                  offload_activations=True, tiled_mlp=True, chunked_norm=True,
                                                  offload_embedding=True),
                         training=training)
    plain_dir = prepare_run(plain_cfg, runs_root)
    assert train(plain_dir).exit_code == 0
    long_dir = prepare_run(long_cfg, runs_root)
    long = train(long_dir)
    assert long.exit_code == 0
    from trl.models.activation_offloading import OffloadActivations

    assert isinstance(long.trainer.maybe_activation_offload_context, OffloadActivations)
    assert sum(getattr(m, "_tuneplan_tiled", False) for m in long.trainer.model.modules()) == 2
    # the two layers' norms and the final one, 16 chunks of 64 positions
    assert sum(getattr(m, "_tuneplan_chunked", False) for m in long.trainer.model.modules()) == 5
    # the tiny model's table is untied (tuneplan/data/tiny_llama_config.json): it left the parameters
    from tuneplan.events import read_events
    from tuneplan.training.long_context import HostEmbedding

    emb = long.trainer.model.get_input_embeddings()
    assert type(emb) is HostEmbedding and "weight" not in emb._parameters
    table = emb.weight.numel() * 4  # fp32
    texts = [getattr(e, "text", "") for e in read_events(long_dir)]
    assert any(t.startswith("embedding offload: the input embedding table") for t in texts), texts
    assert all(p is not emb.weight for p in long.trainer.model.parameters()) and table > 0
    plain, longer = _losses(plain_dir), _losses(long_dir)
    assert sorted(plain) == sorted(longer) == [2, 4, 6, 8]
    for step in plain:
        assert longer[step] == pytest.approx(plain[step], rel=1e-5), (step, plain, longer)
    assert longer[8] < longer[2]  # it learns
    evals = [{e.step: e.eval_loss for e in read_events(d) if e.kind == "eval"} for d in (plain_dir, long_dir)]
    assert sorted(evals[0]) == sorted(evals[1]) == [4, 8]
    for step in evals[0]:
        assert evals[1][step] == pytest.approx(evals[0][step], rel=1e-5), (step, evals)

    resumed_cfg = replace(long_cfg, resume_from=str(long_dir / "checkpoints" / "checkpoint-4"))
    resumed_dir = prepare_run(resumed_cfg, runs_root)
    assert train(resumed_dir).exit_code == 0
    resumed = _losses(resumed_dir)
    assert sorted(resumed) == [6, 8]
    for step in resumed:
        assert resumed[step] == pytest.approx(longer[step], rel=1e-5), (step, resumed, longer)


# -- chunked RMSNorm ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_chunked_norm_gives_llama_rmsnorm_outputs_and_gradients(dtype, weight_grad):
    """`ChunkedRMSNorm` against transformers' `LlamaRMSNorm` on (2, 100, 32) inputs: 7 chunks of
    29 positions, the last 26 (planner.memory.norm_chunk_tokens), forward and the input and weight gradients,
    equal up to float rounding."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from planner.memory import norm_chunk_tokens
    from tuneplan.training import long_context as lc

    dt = getattr(torch, dtype)
    assert norm_chunk_tokens(200, 32) == 29 and norm_chunk_tokens(32, 32) == 32  # ceil(200 / 7), one chunk
    gen = torch.Generator().manual_seed(0)
    ref = LlamaRMSNorm(32, eps=1e-5).to(dt)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(32, generator=gen) + 0.5)
    ref.weight.requires_grad_(weight_grad)
    ours = LlamaRMSNorm(32, eps=1e-5).to(dt)
    ours.load_state_dict(ref.state_dict())
    ours.weight.requires_grad_(weight_grad)
    assert lc.is_llama_rmsnorm(ours)
    ours.forward = lambda x: lc.ChunkedRMSNorm.apply(x, ours.weight, ours.variance_epsilon)
    x = (torch.randn(2, 100, 32, generator=gen) * 3).to(dt)
    grad = torch.randn(2, 100, 32, generator=gen).to(dt)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((ref, ours), xs)]
    assert outs[0].dtype == outs[1].dtype and outs[0].shape == outs[1].shape
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(outs[1], outs[0], **tol)
    for o in outs:
        o.backward(grad)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, **tol)
    if weight_grad:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **{**tol, "atol": 1e-4 if dtype == "float32" else 0.5})


def test_chunked_norm_routes_llama_norms_and_leaves_gemma_alone():
    """Every decoder layer's two norms and the final norm of a Llama; none of Gemma's `(1 + w)`
    norms (a different forward)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from tuneplan.training import long_context as lc

    llama = _tiny_llama()
    assert lc.apply_chunked_norm(llama) == 2 * 2 + 1
    assert lc.apply_chunked_norm(llama) == 0  # once only
    gemma = Gemma2ForCausalLM(Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=100))
    assert lc.apply_chunked_norm(gemma) == 0
    ids = torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(1))
    plain = _tiny_llama()
    torch.testing.assert_close(llama(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


# -- host embedding ----------------------------------------------------------------------------
def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_host_embedding_looks_tokens_up_as_nn_embedding_does(dtype):
    """The same rows (bit for bit) and logits, the padding index kept; the table leaves the
    parameters (and `model.to()`'s reach) but stays in `state_dict` under its key."""
    import torch

    from tuneplan.training import long_context as lc

    dt = getattr(torch, dtype)
    plain = _frozen(_tiny_llama(pad_token_id=0).to(dt))
    host = _frozen(_tiny_llama(pad_token_id=0).to(dt))
    emb = host.get_input_embeddings()
    keys = list(host.state_dict())
    table = emb.weight
    assert lc.apply_host_embedding(host) == 100 * 32 * table.element_size()
    assert host.get_input_embeddings() is emb and type(emb) is lc.HostEmbedding
    assert emb.padding_idx == 0 and emb.weight is not table and torch.equal(emb.weight, table)
    assert emb.weight.device == torch.device(lc.HOST_DEVICE) and emb.weight.dtype == dt
    assert "weight" not in emb._parameters and all(p is not emb.weight for p in host.parameters())
    assert list(host.state_dict()) == keys
    ids = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(1))
    ids[0, :3] = 0
    assert torch.equal(emb(ids), plain.get_input_embeddings()(ids))
    torch.testing.assert_close(host(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises((AttributeError, KeyError)):  # read-only: nn.Module refuses to register over it
        emb.weight = torch.nn.Parameter(table.clone())
    with pytest.raises(AttributeError):
        emb.weight = table.clone()
    assert lc.apply_host_embedding(host) == 0  # once only
    assert lc.host_embedding_refusal(host) == "already in host RAM"
    # state_dict / load_state_dict keep the key: a plain model's weights load into it, strictly
    other = _frozen(_tiny_llama(seed=1, pad_token_id=0).to(dt))
    host.load_state_dict(other.state_dict())
    assert torch.equal(emb.weight, other.get_input_embeddings().weight)
    plain.load_state_dict(host.state_dict())
    assert torch.equal(plain.get_input_embeddings().weight, emb.weight)


def test_model_to_leaves_the_host_table_where_it_is():
    """`model.to(device / dtype)` (the Trainer's and accelerate's placement) moves parameters and
    buffers only: the table stays on the host in its dtype; `model.device` is the parameters'."""
    import torch

    from tuneplan.training import long_context as lc

    model = _frozen(_tiny_llama())
    assert lc.apply_host_embedding(model) > 0
    model.to("meta")
    emb = model.get_input_embeddings()
    assert emb.weight.device == torch.device(lc.HOST_DEVICE) and emb.weight.dtype == torch.float32
    assert model.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    model.to(torch.float64)
    assert emb.weight.dtype == torch.float32


def test_host_embedding_keeps_the_input_require_grads_hook():
    """`enable_input_require_grads()` (registered before the swap, as `prepare_for_training` does)
    still marks the embedding output, so checkpointed LoRA layers get gradients."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneplan.training import long_context as lc

    model = _frozen(_tiny_llama())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.train()
    assert lc.apply_host_embedding(model) == 100 * 32 * 4
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    ids = torch.randint(0, 100, (1, 20), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    assert seen == [True]
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_tied_subclassed_or_trained_embeddings_stay_on_the_card():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from planner.setup import TrainSetup
    from tuneplan.training import long_context as lc
    from tuneplan.training.modeling import prepare_for_training

    tied = _frozen(_tiny_llama(tie_word_embeddings=True))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert lc.apply_host_embedding(tied) == 0 and "tied" in lc.host_embedding_refusal(tied)
    gemma = _frozen(Gemma2ForCausalLM(Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                   vocab_size=100, tie_word_embeddings=False)))
    assert type(gemma.get_input_embeddings()) is not lc.HostEmbedding
    assert lc.apply_host_embedding(gemma) == 0 and "not a plain nn.Embedding" in lc.host_embedding_refusal(gemma)
    trained = _tiny_llama()
    assert lc.apply_host_embedding(trained) == 0 and "trained" in lc.host_embedding_refusal(trained)
    for m in (tied, gemma, trained):
        assert "weight" in m.get_input_embeddings()._parameters
    # through prepare_for_training: a note either way
    notes: list[str] = []
    model = prepare_for_training(_tiny_llama(), TrainSetup(method="full", offload_embedding=True), notes)
    assert "weight" in model.get_input_embeddings()._parameters
    assert any(n.startswith("embedding offload not applied: the input embedding is trained") for n in notes)
    notes = []
    model = prepare_for_training(_tiny_llama(), TrainSetup(method="lora", offload_embedding=True, num_gpus=2), notes)
    assert "weight" in model.get_input_embeddings()._parameters
    assert "embedding offload not applied: it is for one GPU (this run has 2)" in notes
    notes = []
    model = prepare_for_training(_tiny_llama(), TrainSetup(method="lora", offload_embedding=True), notes)
    assert type(model.get_input_embeddings()) is lc.HostEmbedding
    assert any(n.startswith("embedding offload: the input embedding table (0.0") for n in notes)
