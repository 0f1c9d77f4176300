"""The causal_lm family and the bridges' LM section: against transformers' GPT-2, masking, training, folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coembed.errors import ConfigError
from coembed.models.causal_lm import CausalLM, CausalLMConfig, LMConfig, build_lm, causal_attention_mask, lm_tokenizer, load_lm_weights
from coembed.presets import apply_overrides, get_preset
from tests.models.bridge_helpers import TINY_LM, gpt2_folder, tokens_with_padding

transformers = pytest.importorskip("transformers")


def gpt2_with_our_weights(model: CausalLM):
    """transformers' GPT2LMHeadModel with ``model``'s weights (Conv1D weights are transposed Linears)."""
    cfg = model.cfg
    config = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.width, n_layer=cfg.layers,
                                     n_head=cfg.heads, activation_function="gelu", layer_norm_epsilon=cfg.ln_eps,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ref = transformers.GPT2LMHeadModel(config).eval()
    sd = {"transformer.wte.weight": model.token_embedding.weight, "transformer.wpe.weight": model.positional_embedding,
          "transformer.ln_f.weight": model.ln_final.weight, "transformer.ln_f.bias": model.ln_final.bias}
    for i, block in enumerate(model.transformer.resblocks):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": block.ln_1.weight, p + "ln_1.bias": block.ln_1.bias,
                   p + "ln_2.weight": block.ln_2.weight, p + "ln_2.bias": block.ln_2.bias,
                   p + "attn.c_attn.weight": block.attn.in_proj_weight.T, p + "attn.c_attn.bias": block.attn.in_proj_bias,
                   p + "attn.c_proj.weight": block.attn.out_proj.weight.T, p + "attn.c_proj.bias": block.attn.out_proj.bias,
                   p + "mlp.c_fc.weight": block.mlp.c_fc.weight.T, p + "mlp.c_fc.bias": block.mlp.c_fc.bias,
                   p + "mlp.c_proj.weight": block.mlp.c_proj.weight.T, p + "mlp.c_proj.bias": block.mlp.c_proj.bias})
    missing, unexpected = ref.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # lm_head is tied to wte
    return ref


def small_lm(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(CausalLMConfig(**TINY_LM)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters: a term left out would show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(std=0.3)
    return model


def test_logits_equal_transformers_gpt2_with_the_same_weights() -> None:
    model = small_lm()
    ref = gpt2_with_our_weights(model)
    tokens = tokens_with_padding()
    full = tokens[[0, 2]]  # rows without padding: GPT-2 attends to every position before
    with torch.no_grad():
        assert torch.allclose(model(full), ref(full).logits, atol=1e-5)
        # padding: HF's attention_mask hides the pad keys; the real positions must agree
        ours, theirs = model(tokens), ref(tokens, attention_mask=(tokens != 0).long()).logits
        real = tokens != 0
        assert torch.allclose(ours[real], theirs[real], atol=1e-5)
        # an offset start: GPT-2 with explicit position ids
        assert torch.allclose(model(full, offset=7), ref(full, position_ids=torch.arange(7, 7 + full.shape[1])[None]).logits, atol=1e-5)


def test_causal_and_padding_invariant() -> None:
    model = small_lm()
    tokens = tokens_with_padding()
    with torch.no_grad():
        base = model(tokens)
        later = tokens.clone()
        later[:, 6:] = 9  # change every token after position 5
        assert torch.equal(model(later)[:, :6], base[:, :6])
        padded = torch.nn.functional.pad(tokens, (0, 4))  # more padding columns change no real position
        real = tokens != 0
        assert torch.allclose(model(padded)[:, : tokens.shape[1]][real], base[real], atol=1e-6)


def test_attention_mask_against_a_naive_construction() -> None:
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    got = causal_attention_mask(mask)[:, 0]
    for b in range(2):
        for i in range(4):
            for j in range(4):
                assert bool(got[b, i, j]) == ((j <= i and bool(mask[b, j])) or i == j)


def test_embeds_interface_matches_the_token_forward_and_the_caption_interface() -> None:
    model = small_lm()
    tokens = tokens_with_padding()
    with torch.no_grad():
        direct = model(tokens)
        assert torch.equal(model.forward_embeds(model.embed_tokens(tokens), tokens != 0), direct)
        memory = model.caption_memory(torch.zeros(3, 3, 16, 16))
        assert memory.shape == (3, 0, 32) and torch.equal(model.caption_logits(memory, tokens), direct)


def test_context_length_is_enforced() -> None:
    with pytest.raises(ValueError, match="exceeds the LM's context_length 40"):
        small_lm()(torch.ones(1, 41, dtype=torch.long))


@pytest.mark.parametrize(("field", "value", "match"), [("width", 31, "width .31. must be divisible by heads"),
                                                       ("layers", 0, "layers must be a positive int"),
                                                       ("pad_id", 64, "pad_id must be in")])
def test_config_errors_name_the_field(field, value, match) -> None:
    with pytest.raises(ValueError, match=match):
        CausalLMConfig(**{**TINY_LM, field: value})


def test_hf_lm_logits_equal_the_hf_model_own_forward(tmp_path: Path) -> None:
    folder = gpt2_folder(tmp_path)
    cfg = LMConfig(path=str(folder))
    assert cfg.kind == "hf" and cfg.hf["model_type"] == "gpt2"
    lm = build_lm(cfg)
    load_lm_weights(lm, cfg)
    lm.train()  # frozen: stays in eval mode, no dropout
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokens = tokens_with_padding()
    mask = tokens != 0
    with torch.no_grad():
        want = ref(tokens, attention_mask=mask.long()).logits
        assert torch.equal(lm(tokens, mask), want)
        assert torch.equal(lm.forward_embeds(lm.embed_tokens(tokens), mask), want)
    assert not any(p.requires_grad for p in lm.parameters())
    assert lm.decoder_layers() is lm.model.transformer.h


def test_hf_lm_before_block_hook_sees_each_block_once(tmp_path: Path) -> None:
    lm = build_lm(LMConfig(path=str(gpt2_folder(tmp_path, layers=3))))
    seen = []
    tokens = tokens_with_padding()
    with torch.no_grad():
        plain = lm(tokens, tokens != 0)
        hooked = lm.forward_embeds(lm.embed_tokens(tokens), tokens != 0, before_block=lambda i, h: seen.append(i) or h)
        shifted = lm.forward_embeds(lm.embed_tokens(tokens), tokens != 0, before_block=lambda i, h: h + (i == 1))
    assert seen == [0, 1, 2] and torch.equal(hooked, plain) and not torch.allclose(shifted, plain)
    assert not lm.model.transformer.h[0]._forward_pre_hooks  # removed after the call


def test_lm_section_is_read_from_a_coembed_run(tmp_path: Path, shapes_data: Path) -> None:
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    out = tmp_path / "lm"
    model = {"width": 32, "layers": 1, "heads": 2, "context_length": 64}
    result = train(TrainConfig(data=str(shapes_data), out=str(out), preset="lm-tiny", model=model, batch_size=16, max_steps=3,
                               workers=0, precision="fp32", progress=False, val_samples=16))
    assert "val_caption_loss" in result.last_val
    cfg = LMConfig(path=str(out))
    saved = json.loads((out / "checkpoint" / "config.json").read_text())["model"]
    assert cfg.kind == "coembed" and (cfg.width, cfg.layers, cfg.vocab_size) == (32, 1, saved["vocab_size"])
    lm = build_lm(cfg)
    load_lm_weights(lm, cfg)
    from coembed import load

    trained = load(out).model
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), trained.state_dict().values()))
    assert lm_tokenizer(cfg).to_str() == (out / "checkpoint" / "tokenizer.json").read_text()
    # a bridge preset given lm.path re-reads the LM's kind and shape from it
    bridge = apply_overrides(get_preset("llava-tiny"), {"lm.path": str(out)})
    assert (bridge.lm.kind, bridge.lm.width) == ("coembed", 32)


def test_lm_path_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lm.path .* is not a folder"):
        LMConfig(path=str(tmp_path / "nope"))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"format_version": 1, "model": {"family": "mae"}}))
    with pytest.raises(ConfigError, match="is a coembed 'mae' checkpoint"):
        LMConfig(path=str(tmp_path / "x"))


def test_lm_tiny_trains_and_resumes_exactly(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.models.bridge_helpers import check_trains_and_resumes_exactly

    val = check_trains_and_resumes_exactly(shapes_data, tmp_path, monkeypatch, "lm-tiny",
                                           {"width": 32, "layers": 1, "heads": 2, "context_length": 64})
    assert 0 < val["val_caption_loss"] < 8


def test_the_objective_reads_no_image() -> None:
    from coembed.objectives import FusionBatch
    from coembed.objectives.causal_lm import compute_losses

    model = small_lm()
    tokens = tokens_with_padding()
    losses = [compute_losses(model, FusionBatch(images, tokens, torch.arange(3)), progress=0.0, weights={},
                             generator=torch.Generator().manual_seed(0))["lm"] for images in (torch.zeros(3, 3, 16, 16),
                                                                                                torch.full((3, 3, 16, 16), float("nan")))]
    assert torch.equal(losses[0], losses[1]) and torch.isfinite(losses[0])
