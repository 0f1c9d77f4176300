"""coembed's BERT encoder and Hugging Face text tower against transformers' own BertModel and the
MiniLM folder: same states and pooled features (max abs diff <= 1e-5 in fp32), strict key checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from coembed.data.synthetic.shapes import ShapesConfig, generate
from coembed.errors import CheckpointError, ConfigError
from coembed.interop.hf_tokenizer import read_hf_tokenizer
from coembed.towers.bert import BertModel, load_bert_weights, read_bert_config, read_bert_state
from coembed.towers.hf_text import HFTextConfig, HFTextTower, mean_pool, resolve_folder

transformers = pytest.importorskip("transformers")
TOL = 1e-5
EXTRA = ["hello", "a", "the quick brown fox jumps over the lazy dog " * 8, "émoji 🙂 and punctuation!!! ??", "x y"]


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Real `shapes` captions and negatives (varied lengths, so batches carry padding), plus odd strings."""
    root = tmp_path_factory.mktemp("captions") / "shapes"
    generate(ShapesConfig(train=24, val=2, test=2, heldout=2, workers=1), root)
    texts = []
    for line in (root / "train" / "captions.jsonl").read_text().splitlines():
        obj = json.loads(line)
        texts += obj["captions"][:2] + obj.get("negatives", [])[:1]
    return texts + EXTRA


def reference(folder: Path, ids: torch.Tensor):
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != 0).long())


def tower(folder: Path, pooling: str) -> HFTextTower:
    t = HFTextTower(HFTextConfig(path=str(folder), pooling=pooling, context_length=128), 16)
    t.load_pretrained()
    return t.eval()


def st_mean_pooling(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' formula (models/Pooling.py), written out independently of coembed."""
    expanded = mask.unsqueeze(-1).expand(states.size()).float()
    return torch.sum(states * expanded, 1) / torch.clamp(expanded.sum(1), min=1e-9)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_states_and_pooling_match_transformers(which: str, tiny_bert_folder: Path, minilm_folder: Path, captions: list[str]) -> None:
    folder = tiny_bert_folder if which == "tiny" else minilm_folder
    ids = read_hf_tokenizer(folder)(captions, context_length=128)
    assert (ids == 0).any() and ids[:, -1].eq(0).any()  # padded rows are part of the test
    ref = reference(folder, ids)
    mask = ids != 0
    for pooling, want in (("mean", st_mean_pooling(ref.last_hidden_state, mask)), ("cls", ref.last_hidden_state[:, 0]),
                          ("pooler", ref.pooler_output)):
        with torch.no_grad():
            got = tower(folder, pooling).forward_features(ids)
        assert (got - want).abs().max().item() <= TOL, pooling
    model = tower(folder, "mean").transformer
    with torch.no_grad():
        states = model(ids, mask)
    diff = (states - ref.last_hidden_state[:, : states.shape[1]]).abs()[mask[:, : states.shape[1]]]
    assert diff.max().item() <= TOL  # every real token's state, not only the pooled ones


def test_mean_pool_is_sentence_transformers_formula() -> None:
    states, mask = torch.randn(3, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    torch.testing.assert_close(mean_pool(states, mask), st_mean_pooling(states, mask), rtol=0, atol=1e-7)


def test_padding_does_not_change_features(tiny_bert_folder: Path) -> None:
    tok = read_hf_tokenizer(tiny_bert_folder)
    t = tower(tiny_bert_folder, "mean")
    with torch.no_grad():
        alone = t.forward_features(tok(["a red circle"], context_length=16))
        batched = t.forward_features(tok(["a red circle", "a much longer caption about a large blue star"], context_length=64))
    torch.testing.assert_close(alone[0], batched[0], rtol=0, atol=1e-6)


def test_config_read_from_folder(minilm_folder: Path) -> None:
    cfg = read_bert_config(minilm_folder)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (384, 6, 12, 1536)
    assert cfg.layer_norm_eps == 1e-12 and cfg.hidden_act == "gelu" and cfg.pooler
    assert "embeddings.position_ids" in load_file(str(minilm_folder / "model.safetensors"))
    assert "embeddings.position_ids" not in read_bert_state(minilm_folder)  # a constant buffer, dropped on purpose


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_unknown_and_missing_keys_are_listed(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    sd = load_file(str(folder / "model.safetensors"))
    sd["cls.predictions.bias"] = torch.zeros(3)
    del sd["encoder.layer.1.output.dense.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    model = BertModel(read_bert_config(tiny_bert_folder))
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layer\.1\.output\.dense\.weight.*unexpected: cls\.predictions\.bias"):
        load_bert_weights(model, folder)


def test_bert_prefix_is_removed(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    sd = load_file(str(folder / "model.safetensors"))
    save_file({f"bert.{k}": v for k, v in sd.items()}, str(folder / "model.safetensors"))
    assert read_bert_state(folder).keys() == sd.keys()


def test_non_bert_folders_are_refused(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(CheckpointError, match="model_type 'roberta' is not supported"):
        read_bert_config(folder)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_folder(str(tmp_path / "nope"))


def test_frozen_tower_trains_only_the_projection(tiny_bert_folder: Path) -> None:
    t = HFTextTower(HFTextConfig(path=str(tiny_bert_folder), frozen=True), 16)
    ids = read_hf_tokenizer(tiny_bert_folder)(["a red circle", "two blue stars"], context_length=16)
    t(ids).square().sum().backward()
    assert t.proj.weight.grad is not None and t.proj.weight.requires_grad
    assert all(not p.requires_grad and p.grad is None for p in t.transformer.parameters())


def test_core_does_not_import_transformers(tiny_bert_folder: Path) -> None:
    code = ("import sys, coembed, torch\n"
            f"m = coembed.create_model('tiny', text={{'tower': 'hf', 'path': {str(tiny_bert_folder)!r}}})\n"
            "m.encode_text(torch.tensor([[101, 1037, 102]]))\n"
            "print(sorted(k for k in ('transformers', 'sentence_transformers') if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
