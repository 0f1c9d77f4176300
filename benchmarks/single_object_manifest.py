"""A single-object-heavy copy of a `shapes` folder for text-to-image training: the train split keeps every
single-object scene plus a third as many two-object (horizontal / vertical) scenes; val and test keep
single-object scenes only (the generation bar is on single-object prompts). Images are symlinked.

    python benchmarks/single_object_manifest.py SRC DST [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for split in ("train", "val", "test"):
        (args.dst / split).mkdir(parents=True, exist_ok=True)
        os.symlink((args.src / split / "images").resolve(), args.dst / split / "images")
        lines = [json.loads(line) for line in (args.src / split / "captions.jsonl").read_text().splitlines()]
        single = [x for x in lines if x["layout"] == "single"]
        two = [x for x in lines if x["layout"] in ("horizontal", "vertical")]
        keep = single + rng.sample(two, len(single) // 3) if split == "train" else single
        rng.shuffle(keep)
        (args.dst / split / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
        print(f"{split}: {len(keep)} images")
    shutil.copy(args.src / "meta.json", args.dst / "meta.json")


if __name__ == "__main__":
    main()
