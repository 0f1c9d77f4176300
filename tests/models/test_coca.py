"""CoCa against OpenCLIP's own CoCa (same tiny config, same weights), plus the properties a captioner
must have: causal logits, padding invariance, and a tiny model that overfits a few captions and then
greedy-decodes them exactly."""

from __future__ import annotations

import pytest
import torch

from coembed.generation import generate
from coembed.losses.captioning import caption_loss
from coembed.models.coca import Coca, CocaConfig, CocaTextConfig
from coembed.objectives.coca import compute_losses
from coembed.objectives import FusionBatch
from coembed.towers.vit import VisionConfig

VOCAB, CONTEXT, WIDTH = 50, 12, 32


def _config(**kw) -> CocaConfig:
    vision = VisionConfig(image_size=32, patch_size=8, width=WIDTH, layers=1, heads=2)
    text = CocaTextConfig(vocab_size=VOCAB, context_length=CONTEXT, width=WIDTH, heads=2, layers=1, decoder_layers=1)
    return CocaConfig(**{"embed_dim": WIDTH, "vision": vision, "text": text, "caption_queries": 4, "pooler_heads": 2, **kw})


def _tokens() -> torch.Tensor:
    rows = [[1, 7, 9, 11, 2], [1, 12, 2], [1, 30, 31, 32, 33, 34, 2]]
    out = torch.zeros(len(rows), CONTEXT, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def _open_clip_coca():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.coca_model import CoCa, MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(image_size=32, patch_size=8, width=WIDTH, layers=1, head_width=16, attentional_pool="parallel",
                           attn_pooler_queries=4, attn_pooler_heads=2, output_tokens=True)
    text = CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=2, layers=1, embed_cls=True, output_tokens=True)
    multimodal = MultimodalCfg(context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=2, layers=1, attn_pooler_heads=2)
    model = CoCa(WIDTH, multimodal, text, vision).eval()
    model.text.correct_cls_mask = True  # OpenCLIP's default (legacy) CLS mask is shifted by one key
    with torch.no_grad():  # OpenCLIP leaves its decoder's LM projection as torch.empty (garbage) until weights load
        model.text_decoder.text_projection.normal_(std=WIDTH**-0.5)
    return model, open_clip


# OpenCLIP keeps the poolers and the pooled projection inside its ViT; coembed's ViT has none.
_RENAMES = {"visual.attn_pool_contrastive.": "attn_pool_contrastive.", "visual.attn_pool.": "attn_pool.", "visual.proj": "image_projection"}


def _to_coembed(name: str) -> str:
    for old, new in _RENAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def test_forward_equals_open_clip_coca() -> None:
    torch.manual_seed(0)
    theirs, _ = _open_clip_coca()
    ours = Coca(_config()).eval()
    state = {_to_coembed(k): v for k, v in theirs.state_dict().items()}
    assert set(state) == set(ours.state_dict())  # every tensor has a counterpart, none left over
    ours.load_state_dict(state, strict=True)
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()
    with torch.no_grad():
        out = theirs(images, tokens)
        image_emb = ours.encode_image(images, normalize=True)
        text_emb = ours.encode_text(tokens, normalize=True)
        logits = ours(images, tokens)
    torch.testing.assert_close(image_emb, out["image_features"][:, 0], atol=1e-5, rtol=1e-5)  # (B, 1, D) in "parallel" mode
    torch.testing.assert_close(text_emb, out["text_features"], atol=1e-5, rtol=1e-5)
    real = (tokens[:, 1:] != 0)  # OpenCLIP decodes tokens[:, :-1]; compare where a real token is predicted
    torch.testing.assert_close(logits[:, :-1][real], out["logits"][real], atol=1e-4, rtol=1e-4)
    assert ours.temperature().item() == pytest.approx(out["logit_scale"].item())


def test_logits_at_t_ignore_later_tokens() -> None:
    torch.manual_seed(1)
    model = Coca(_config()).eval()
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()[:, :7]
    changed = tokens.clone()
    changed[:, 4:] = torch.randint(5, VOCAB, (3, 3))
    with torch.no_grad():
        a, b = model(images, tokens), model(images, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_padding_changes_neither_embeddings_nor_logits() -> None:
    torch.manual_seed(2)
    model = Coca(_config()).eval()
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()
    short = tokens[:, :7]  # the longest caption is 7 tokens: same captions, less padding
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), model.encode_text(short))
        alone = model.encode_text(short[1:2, :3])  # a single caption without any padding
        torch.testing.assert_close(alone, model.encode_text(tokens)[1:2])
        torch.testing.assert_close(model(images, tokens)[:, :7], model(images, short))


def test_caption_memory_has_one_token_per_query() -> None:
    model = Coca(_config())
    assert model.caption_memory(torch.randn(2, 3, 32, 32)).shape == (2, 4, WIDTH)


def test_objective_returns_the_clip_and_caption_terms() -> None:
    torch.manual_seed(3)
    model = Coca(_config())
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()
    terms = compute_losses(model, FusionBatch(images, tokens, torch.arange(3)), progress=0.0, weights={}, generator=torch.Generator())
    assert set(terms) == {"contrastive", "caption"}
    with torch.no_grad():
        want = caption_loss(model(images, tokens), tokens, 0)
    assert terms["caption"].item() == pytest.approx(want.item(), rel=1e-5)


def test_a_tiny_coca_overfits_four_captions_and_greedy_decodes_them() -> None:
    torch.manual_seed(4)
    model = Coca(_config())
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.zeros(4, CONTEXT, dtype=torch.long)
    for i, words in enumerate([[5, 6, 7], [8, 9], [10, 11, 12, 13], [5, 14]]):
        tokens[i, : len(words) + 2] = torch.tensor([1, *words, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(60):
        terms = compute_losses(model, FusionBatch(images, tokens, torch.arange(4)), progress=0.0, weights={}, generator=torch.Generator())
        optimizer.zero_grad()
        (terms["contrastive"] + 2 * terms["caption"]).backward()
        optimizer.step()
    assert terms["caption"].item() < 0.05
    for method in ("greedy", "beam"):
        out = generate(model, images, method, max_length=CONTEXT)
        assert torch.equal(out, tokens[:, : out.shape[1]]), method


@pytest.mark.parametrize(("kw", "match"), [({"caption_queries": 0}, "caption_queries"), ({"pooler_heads": 3}, "pooler_heads"),
                                           ({"init_temperature": 0.0}, "init_temperature")])
def test_bad_config_names_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _config(**kw)


def test_bad_text_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="text.eot_id"):
        CocaTextConfig(vocab_size=10, eot_id=10)
