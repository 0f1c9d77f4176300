"""``coembed train-reader``: train the ``shapes`` attribute reader that judges generated images.

Trains on the real images of the dataset's train split, measures its accuracy on the real test split
(the ceiling of the correctness it reports about generated images), prints the table and saves the
reader folder that ``coembed eval --task generation --reader DIR`` reads.
"""

from __future__ import annotations

import argparse

from coembed.cli.common import eprint, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-reader", help="train the shapes attribute reader for generated-image evaluation",
                       description="Train a small CNN on real shapes images to read each object's shape, colour, size "
                                   "and position; report its accuracy on the real test split.")
    p.add_argument("--data", required=True, help="shapes dataset folder (`coembed data shapes`), with train and test splits")
    p.add_argument("--out", required=True, help="reader folder to write (model.safetensors, config.json, metrics.json)")
    p.add_argument("--image-size", type=positive_int, default=64, help="side the reader works at (power of two; default 64)")
    p.add_argument("--steps", type=positive_int, default=3000, help="optimiser steps (default 3000)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and noise (default 0)")
    p.add_argument("--split", default="test", help="split to measure the accuracy on (default test)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from tqdm.auto import tqdm

    from coembed.data.splits import split_root
    from coembed.errors import ConfigError
    from coembed.eval import attribute_reader as ar

    try:
        config = ar.ReaderConfig(image_size=args.image_size)
        training = ar.ReaderTraining(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    images, targets = ar.load_split(split_root(args.data, "train"), args.image_size)
    test_images, test_targets = ar.load_split(split_root(args.data, args.split), args.image_size)
    eprint(f"train-reader: {len(targets)} train images, {len(test_targets)} {args.split} images at {args.image_size} px")
    bar = tqdm(total=training.steps, desc="train-reader", unit="step", dynamic_ncols=True)

    def progress(step: int, total: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0 or step == total:
            bar.set_postfix(loss=f"{loss:.3f}")

    start = time.perf_counter()
    reader = ar.train_reader(images, targets, config, training, progress)
    bar.close()
    seconds = time.perf_counter() - start
    metrics = ar.attribute_correctness(reader, ar.to_unit(test_images), test_targets)
    record = {"split": args.split, "data": str(args.data), "train_images": len(targets), "seconds": round(seconds, 1),
              "training": vars(training), "accuracy": metrics}
    ar.save_reader(reader, args.out, record)
    print(ar.reader_report(metrics))
    eprint(f"wrote {args.out} (trained in {seconds:.0f} s)")
    return 0
