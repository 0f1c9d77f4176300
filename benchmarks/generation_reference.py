"""The reference rows of `coembed eval --task generation` without a generator: real test images of the
prompts (ceiling), real images of other prompts of the same layout (shuffled) and noise (floors).

    python benchmarks/generation_reference.py DATA READER SCORER [FUSION] > table.txt
"""

from __future__ import annotations

import sys

import torch

from coembed.cli.eval_generation import _scorer
from coembed.data.splits import split_root
from coembed.eval.attribute_reader import load_reader
from coembed.eval.generation import GenerationEval, canonical_captions, select_prompts, summary_table


def main(data: str, reader: str, scorer: str, fusion: str | None = None) -> None:
    torch.set_num_threads(1)
    root = split_root(data, "test")
    prompts = select_prompts(root, per_layout=50, seed=0)
    evaluation = GenerationEval(prompts, canonical_captions(root), load_reader(reader), _scorer(scorer, "scorer"),
                                _scorer(fusion, "fusion") if fusion else None, distractors=99, seed=0)
    results, _ = evaluation.run(None)
    print(summary_table(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
