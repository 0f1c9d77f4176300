"""Synonym zero-shot: the synonyms really are unseen in `shapes` captions, and the task is computed
as prompt ensembling over every (synonym, template) pair."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

import coembed
from coembed.data.datasets import read_samples
from coembed.eval.features import embed_split, embed_texts
from coembed.eval.synonyms import SYNONYMS, synonym_class_embeddings, synonym_zeroshot, unseen_words, words


def test_synonyms_never_occur_in_shapes_captions(shapes_data: Path) -> None:
    captions = []
    for split in ("train", "val", "test", "heldout"):
        for line in (shapes_data / split / "captions.jsonl").read_text().splitlines():
            obj = json.loads(line)
            captions += obj["captions"] + obj.get("negatives", [])
    meta = json.loads((shapes_data / "meta.json").read_text())
    assert set(SYNONYMS["shape"]) == set(meta["shapes"]) and set(SYNONYMS["color"]) == set(meta["colors"])
    for synonyms in SYNONYMS.values():
        assert unseen_words(synonyms, captions) == synonyms
    assert unseen_words({"circle": ["disc", "round dot"]}, ["a red disc"]) == {"circle": ["round dot"]}
    assert words(["A Plus-sign!"]) == {"a", "plus", "sign"}


def test_synonym_zeroshot_is_prompt_ensembling(tiny_checkpoint: Path, shapes_data: Path) -> None:
    loaded = coembed.load(tiny_checkpoint)
    synonyms = {"red": ["crimson", "scarlet"], "blue": ["cobalt"]}
    emb = synonym_class_embeddings(loaded, synonyms, ["red", "blue"], ["a {} thing", "something {}"])
    want = F.normalize(embed_texts(loaded.model, loaded.tokenizer, ["a crimson thing", "something crimson",
                                                                    "a scarlet thing", "something scarlet"]).mean(0), dim=-1)
    torch.testing.assert_close(emb[0], want)
    root = shapes_data / "test"
    samples, _ = read_samples(root)
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess)
    meta = json.loads((shapes_data / "meta.json").read_text())
    task = synonym_zeroshot(loaded, feats, "color", meta["colors"], ["a {} object"])
    assert 0 <= task["acc1"] <= 1 and task["n"] == sum(len(s.meta["objects"]) == 1 for s in feats.samples)
