"""coembed loads OpenCLIP's own models (random weights, saved the ways OpenCLIP saves) and gives the
same embeddings and logits; OpenCLIP loads what coembed writes and gives them too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import coembed
from coembed.interop import openclip as oc_interop
from interop_helpers import TOL, make_images, max_diff, randomize

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat", "a diagram of a red circle above a blue square", "🐱 &amp; café!"]


def _save_hf_style(model, name: str, folder: Path) -> Path:
    """What ``open_clip.push_to_hf_hub.save_for_hf`` writes, minus the tokenizer files."""
    from open_clip.push_to_hf_hub import save_config_for_hf

    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=open_clip.get_model_config(name))
    return folder


def _save_train_style(model, folder: Path) -> Path:
    """What ``open_clip_train`` writes: ``{"epoch", "name", "state_dict"}`` with DDP's ``module.`` prefix."""
    folder.mkdir(parents=True)
    path = folder / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


CASES = {
    # name: (how it is saved, quick_gelu stated by the user)
    "ViT-B-32": ("plain", False),
    "ViT-B-16": ("hf", None),
    "RN50": ("train", False),
    "ViT-B-16-SigLIP": ("hf", None),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    name = request.param
    torch.manual_seed(0)
    ref = randomize(open_clip.create_model(name), seed=1)
    how, quick = CASES[name]
    folder = tmp_path_factory.mktemp(name)
    if how == "hf":
        path = _save_hf_style(ref, name, folder / "hf")
    elif how == "train":
        path = _save_train_style(ref, folder / "train")
    else:
        path = folder / "model.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = coembed.load(path, quick_gelu=quick)
    size = ours.preprocess.image_size
    images = make_images(size)
    if ours.model.text_cfg.vocab_size == 49408:
        tokens = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    else:
        tokens = torch.randint(2, ours.model.text_cfg.vocab_size, (3, ours.model.text_cfg.context_length),
                               generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = {"image": ref.encode_image(images), "text": ref.encode_text(tokens), "logits": ref.get_logits(images, tokens)[0]}
    return name, ref, ours, images, tokens, want


@torch.no_grad()
def test_embeddings_and_logits_match(case) -> None:
    name, _, ours, images, tokens, want = case
    img, txt = ours.model.encode_image(images), ours.model.encode_text(tokens)
    scale, bias = ours.model.logit_scale.exp(), ours.model.logit_bias
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T + (bias if bias is not None else 0)
    diffs = {"image": max_diff(img, want["image"]), "text": max_diff(txt, want["text"]),
             "logits": max_diff(logits, want["logits"])}
    print(f"\nparity OpenCLIP {name}: {diffs}")
    assert all(d <= TOL for d in diffs.values()), diffs
    assert max_diff(want["image"][0], want["image"][1]) > 1e-3  # the reference is not degenerate


def test_tokenizer_matches_for_clip_vocabularies(case) -> None:
    _, _, ours, _, tokens, _ = case
    if ours.model.text_cfg.vocab_size == 49408:
        assert torch.equal(ours.tokenizer(TEXTS), tokens)


@torch.no_grad()
def test_openclip_loads_what_coembed_writes(case, tmp_path: Path) -> None:
    _, ref, ours, images, tokens, want = case
    oc_interop.write(tmp_path / "out", ours.model, ours.preprocess)
    again = open_clip.create_model(f"local-dir:{tmp_path / 'out'}").eval()
    theirs, written = ref.state_dict(), again.state_dict()
    assert set(written) == set(theirs)
    assert all(torch.equal(written[k], theirs[k]) for k in theirs)
    assert max_diff(again.encode_image(images), want["image"]) <= TOL
    assert max_diff(again.encode_text(tokens), want["text"]) <= TOL


def test_patch_dropout_keeps_the_same_patches_as_openclip(tmp_path: Path) -> None:
    """FLIP patch dropout travels in the config and, with the same seed, drops what OpenCLIP drops."""
    ours = coembed.create_model("tiny-patch", **{"vision.patch_dropout": 0.5})
    oc_interop.write(tmp_path / "pd", ours, coembed.loading.default_preprocess(ours))
    ref = open_clip.create_model(f"local-dir:{tmp_path / 'pd'}")
    assert ref.visual.patch_dropout.prob == 0.5
    with pytest.warns(UserWarning, match="no tokenizer"):
        assert oc_interop.read(tmp_path / "pd").config.vision.patch_dropout == 0.5
    images = make_images(64)
    ours.train(), ref.train()
    torch.manual_seed(3)
    got = ours.encode_image(images)
    torch.manual_seed(3)
    want = ref.encode_image(images)
    assert max_diff(got, want) <= TOL
    ours.eval(), ref.eval()
    assert max_diff(ours.encode_image(images), ref.encode_image(images)) <= TOL
    torch.manual_seed(4)
    assert max_diff(ours.train().encode_image(images), got) > 1e-3  # another draw keeps other patches
