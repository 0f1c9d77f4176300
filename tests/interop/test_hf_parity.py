"""coembed loads transformers' own CLIPModel / SiglipModel (random weights, ``save_pretrained``) and
gives the same embeddings and logits; transformers loads what coembed writes and gives them too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import coembed
from coembed.interop import hf as hf_interop
from interop_helpers import TOL, make_images, max_diff, randomize

transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a cat", "a diagram of a red circle above a blue square", "🐱 &amp; café!"]
SMALL = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


def _clip(act: str):
    return transformers.CLIPModel(transformers.CLIPConfig(
        text_config={**SMALL, "hidden_act": act},
        vision_config={**SMALL, "hidden_act": act, "image_size": 64, "patch_size": 16}, projection_dim=32))


def _siglip():
    return transformers.SiglipModel(transformers.SiglipConfig(
        text_config={**SMALL, "vocab_size": 1000, "max_position_embeddings": 16},
        vision_config={**SMALL, "image_size": 32, "patch_size": 8}))


CASES = {"clip-quickgelu": lambda: _clip("quick_gelu"), "clip-gelu": lambda: _clip("gelu"), "siglip": _siglip}


def _features(out) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize(CASES[request.param](), seed=1)
    folder = tmp_path_factory.mktemp(request.param) / "hf"
    ref.save_pretrained(folder)
    ours = coembed.load(folder)
    images = make_images(ours.preprocess.image_size)
    if request.param == "siglip":
        tokens = torch.randint(2, 1000, (3, 16), generator=torch.Generator().manual_seed(3))
    else:
        tokens = ours.tokenizer(TEXTS)
    with torch.no_grad():
        out = ref(input_ids=tokens, pixel_values=images)
        want = {"image": _features(ref.get_image_features(pixel_values=images)),
                "text": _features(ref.get_text_features(input_ids=tokens)), "logits": out.logits_per_image}
    return request.param, ref, ours, images, tokens, want


@torch.no_grad()
def test_embeddings_and_logits_match(case) -> None:
    name, _, ours, images, tokens, want = case
    img, txt = ours.model.encode_image(images), ours.model.encode_text(tokens)
    logits = ours.model.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    if ours.model.logit_bias is not None:
        logits = logits + ours.model.logit_bias
    diffs = {"image": max_diff(img, want["image"]), "text": max_diff(txt, want["text"]), "logits": max_diff(logits, want["logits"])}
    print(f"\nparity transformers {name}: {diffs}")
    assert all(d <= TOL for d in diffs.values()), diffs
    assert max_diff(want["image"][0], want["image"][1]) > 1e-3


@torch.no_grad()
def test_transformers_loads_what_coembed_writes(case, tmp_path: Path) -> None:
    name, ref, ours, images, tokens, want = case
    hf_interop.write(tmp_path / "out", ours.model, ours.preprocess, ours.tokenizer)
    cls = transformers.SiglipModel if name == "siglip" else transformers.CLIPModel
    again = cls.from_pretrained(tmp_path / "out").eval()
    theirs, written = ref.state_dict(), again.state_dict()
    assert set(written) == set(theirs)
    assert all(torch.equal(written[k], theirs[k]) for k in theirs), [k for k in theirs if not torch.equal(written[k], theirs[k])]
    assert max_diff(_features(again.get_image_features(pixel_values=images)), want["image"]) <= TOL
    assert max_diff(_features(again.get_text_features(input_ids=tokens)), want["text"]) <= TOL


def test_clip_tokenizer_files_load_in_transformers(case, tmp_path: Path) -> None:
    name, _, ours, _, _, _ = case
    if name == "siglip":
        pytest.skip("the SigLIP reference has no tokenizer offline")
    hf_interop.write(tmp_path / "out", ours.model, ours.preprocess, ours.tokenizer)
    reloaded = coembed.load(tmp_path / "out").tokenizer
    assert torch.equal(reloaded(TEXTS), ours.tokenizer(TEXTS))
    hf_tok = transformers.CLIPTokenizer.from_pretrained(tmp_path / "out")
    plain = ["a photo of a cat", "two dogs"]
    ids = hf_tok(plain, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ours_ids = ours.tokenizer(plain)
    assert torch.equal(ids[ours_ids != 0], ours_ids[ours_ids != 0])
