"""Decoding on the bridges and the LM through their :class:`DecodingSpec`: greedy ``generate`` equals a naive
token-by-token argmax loop over ``caption_logits``; a Hugging Face LM's start and end come from what its
tokenizer adds; ``coembed caption`` runs on a bridge checkpoint with a coembed LM and with a tiny GPT-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import coembed
from coembed.cli.main import main
from coembed.generation import caption, decoding_spec, generate
from coembed.generation.spec import DecodingSpec, tokenizer_specials
from coembed.interop.hf_tokenizer import read_hf_tokenizer
from coembed.loading import save
from coembed.models.causal_lm import CausalLM, CausalLMConfig, LMConfig
from coembed.models.flamingo import Flamingo, FlamingoConfig
from coembed.models.llava import Llava, LlavaConfig
from coembed.models.qformer import QFormer, QFormerConfig
from coembed.tokenizer import Tokenizer
from coembed.transforms import load_image
from tests.models.bridge_helpers import TINY_VISION, add_word_tokenizer, gpt2_folder, images

BRIDGE = {"vision": TINY_VISION, "context_length": 12}


@pytest.fixture(scope="module")
def tokenizer(shapes_data: Path) -> Tokenizer:
    lines = (shapes_data / "train" / "captions.jsonl").read_text().splitlines()
    return Tokenizer.train((c for line in lines for c in json.loads(line)["captions"]), vocab_size=300)


def build(name: str, vocab: int, context: int = 12) -> torch.nn.Module:
    """A tiny random ``name`` (the LM alone or a bridge to it) over ``vocab`` ids, ``context`` caption tokens."""
    torch.manual_seed(0)
    bridge = {**BRIDGE, "context_length": context}
    shape = {"vocab_size": vocab, "context_length": 40, "width": 32, "layers": 2, "heads": 2}
    lm = LMConfig(**shape)
    models = {
        "lm": lambda: CausalLM(CausalLMConfig(**shape)),
        "llava": lambda: Llava(LlavaConfig(lm=lm, **bridge)),
        "flamingo": lambda: Flamingo(FlamingoConfig(lm=lm, num_latents=4, resampler_layers=1, **bridge)),
        "qformer-2": lambda: QFormer(QFormerConfig(lm=lm, num_queries=3, width=32, layers=2, vocab_size=vocab, stage=2, **bridge)),
    }
    model = models[name]().eval()
    with torch.no_grad():
        for block in getattr(model, "gated_cross_attn", []):  # open Flamingo's gates, so the image matters
            block.attn_gate.fill_(1.0)
    return model


def naive_greedy(model, pics: torch.Tensor, prompt: list[int], length: int, eos: int | None, pad: int) -> list[list[int]]:
    """One image at a time, argmax of the last position until ``eos`` or ``length`` tokens."""
    rows = []
    for i in range(pics.shape[0]):
        memory = model.caption_memory(pics[i : i + 1])
        row = list(prompt)
        while len(row) < length:
            row.append(int(model.caption_logits(memory, torch.tensor([row]))[0, -1].argmax()))
            if row[-1] == eos:
                break
        rows.append(row)
    width = max(map(len, rows))
    return [r + [pad] * (width - len(r)) for r in rows]


@pytest.mark.parametrize("name", ["lm", "llava", "flamingo", "qformer-2"])
def test_greedy_equals_a_naive_argmax_loop(name: str, tokenizer: Tokenizer) -> None:
    model = build(name, tokenizer.vocab_size)
    spec = decoding_spec(model, tokenizer)
    assert spec == DecodingSpec((tokenizer.sot_id,), tokenizer.eot_id, tokenizer.pad_id, spec.max_length)
    with torch.no_grad():
        eos = int(model.caption_logits(model.caption_memory(images(1)), torch.tensor([[1, 9]]))[0, -1].argmax())
    spec = DecodingSpec(spec.start_ids, eos, spec.pad_id, spec.max_length)  # an end the random model emits at once
    pics = images(3)
    for prompt in ([1], [1, 9]):
        with torch.no_grad():
            got = generate(model, pics, spec=spec, prompt=prompt, max_length=10)
            want = naive_greedy(model, pics, prompt, 10, eos, spec.pad_id)
        assert got.tolist() == want


def test_hugging_face_lm_decodes_from_a_prompt_to_the_length(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = gpt2_folder(tmp_path, positions=40)
    add_word_tokenizer(folder)
    tok = read_hf_tokenizer(folder)
    torch.manual_seed(0)
    model = Llava(LlavaConfig(lm=LMConfig(path=str(folder)), **BRIDGE)).eval()
    spec = decoding_spec(model, tok)
    assert spec.start_ids == () and spec.eos_id is None  # GPT-2-like: the tokenizer adds nothing
    with pytest.raises(ValueError, match="prompt is required"):
        spec.prompt_ids(tok, None)
    prompt = spec.prompt_ids(tok, "a small")
    from tokenizers import Tokenizer as Backend

    assert prompt == Backend.from_file(str(folder / "tokenizer.json")).encode("a small").ids
    pics = images(2)
    with torch.no_grad():
        got = generate(model, pics, spec=spec, prompt=prompt, max_length=9)
        assert got.shape == (2, 9)
        assert got.tolist() == naive_greedy(model, pics, prompt, 9, None, spec.pad_id)
    texts = caption(model, pics, tok, prompt="a small", max_length=9)
    assert all(t.startswith("a small") for t in texts)


def test_specials_are_what_the_tokenizer_adds() -> None:
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors

    backend = Backend(models.WordLevel({"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "a": 4}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    bert = type("Tok", (), {"to_str": lambda self: backend.to_str()})()
    assert tokenizer_specials(bert) == ((1,), 2)


def _captions(argv: list[str], capsys) -> tuple[int, dict | str]:
    code = main(["caption", *argv, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_caption_cli_on_a_bridge_with_a_coembed_lm(shapes_data: Path, tokenizer: Tokenizer, tmp_path: Path, capsys) -> None:
    save(tmp_path / "llava", build("llava", tokenizer.vocab_size), tokenizer)
    paths = [str(p) for p in sorted((shapes_data / "test").rglob("*.png"))[:2]]
    code, out = _captions(["--checkpoint", str(tmp_path / "llava"), *paths, "--max-length", "12"], capsys)
    assert code == 0
    model, preprocess, tok = coembed.load(tmp_path / "llava")
    batch = torch.stack([preprocess(load_image(p)) for p in paths])
    assert [c["caption"] for c in out["captions"]] == caption(model, batch, tok, max_length=12)
    code, out = _captions(["--checkpoint", str(tmp_path / "llava"), *paths, "--max-length", "12", "--prompt", "a small"], capsys)
    assert code == 0 and out["prompt"] == "a small"
    assert [c["caption"] for c in out["captions"]] == caption(model, batch, tok, prompt="a small", max_length=12)
    assert all(c["caption"].startswith("a small") for c in out["captions"])
    code, err = _captions(["--checkpoint", str(tmp_path / "llava"), *paths, "--max-length", "13"], capsys)
    assert code == 2 and "--max-length must be in [2, 12]" in err


def test_caption_cli_on_a_bridge_with_a_hugging_face_gpt2(shapes_data: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("transformers")
    folder = gpt2_folder(tmp_path, positions=40)
    add_word_tokenizer(folder)
    torch.manual_seed(0)
    save(tmp_path / "llava", Llava(LlavaConfig(lm=LMConfig(path=str(folder)), **BRIDGE)), read_hf_tokenizer(folder))
    paths = [str(p) for p in sorted((shapes_data / "test").rglob("*.png"))[:2]]
    code, err = _captions(["--checkpoint", str(tmp_path / "llava"), *paths], capsys)
    assert code == 2 and "--prompt" in err and "prompt is required" in err
    code, out = _captions(["--checkpoint", str(tmp_path / "llava"), *paths, "--prompt", "a big", "--max-length", "8"], capsys)
    assert code == 0
    model, preprocess, tok = coembed.load(tmp_path / "llava")
    batch = torch.stack([preprocess(load_image(p)) for p in paths])
    assert [c["caption"] for c in out["captions"]] == caption(model, batch, tok, prompt="a big", max_length=8)
    assert all(c["caption"].startswith("a big") for c in out["captions"])
