"""The shapes attribute reader: targets, loss, position rule, scoring, training on real images, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from coembed.errors import CheckpointError
from coembed.eval import attribute_reader as ar
from coembed.eval.attribute_reader import HEAD_SLOTS, IGNORE, Reading, SceneTarget


def _lines(root: Path) -> list[dict]:
    return [json.loads(s) for s in (root / "test" / "captions.jsonl").read_text().splitlines()]


def test_labels_address_only_the_heads_of_the_layout(shapes32: Path) -> None:
    for line in _lines(shapes32)[:40]:
        target = SceneTarget.from_line(line)
        labels = target.labels()
        assert len(labels) == 2 + 3 * len(HEAD_SLOTS)
        used = [k for k, (layout, _) in enumerate(HEAD_SLOTS) if layout == target.layout]
        for k in range(len(HEAD_SLOTS)):
            assert (labels[2 + 3 * k] != IGNORE) == (k in used)
        # The labels, read back as if they were the reader's answers, give the line's objects.
        pred = [0 if v == IGNORE else v for v in labels]
        reading = ar._reading(pred, target.layout)
        assert reading.objects == tuple((o["shape"], o["color"], o["size"]) for o in line["objects"])
        assert reading.layout == line["layout"]
        if line["layout"] == "single":
            assert reading.position == line["position"]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"layout": "diagonal", "objects": ()}, "layout"),
    ({"layout": "horizontal", "objects": (("circle", "red", "small"),)}, "objects"),
    ({"layout": "single", "objects": (("circle", "mauve", "small"),), "position": "left"}, "color"),
    ({"layout": "single", "objects": (("circle", "red", "small"),)}, "position"),
])
def test_scene_target_names_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SceneTarget(**kwargs)


def test_reader_loss_matches_a_naive_per_head_cross_entropy() -> None:
    torch.manual_seed(0)
    sizes = [4, 3, 8, 8, 2]
    logits = [torch.randn(6, n) for n in sizes]
    labels = torch.stack([torch.randint(0, n, (6,)) for n in sizes], dim=1)
    labels[::2, 1] = IGNORE
    labels[:, 4] = IGNORE  # a head no image uses adds nothing
    expected = 0.0
    for k, head in enumerate(logits):
        rows = [i for i in range(6) if labels[i, k] != IGNORE]
        if rows:
            expected += sum(-torch.log_softmax(head[i], -1)[labels[i, k]] for i in rows) / len(rows)
    assert torch.allclose(ar.reader_loss(logits, labels), torch.as_tensor(expected), atol=1e-6)


RED, BLUE = ("circle", "red", "large"), ("star", "blue", "small")


def test_position_needs_the_layout_and_the_order() -> None:
    target = SceneTarget("horizontal", (RED, BLUE))
    assert ar.position_correct(Reading("horizontal", "left", (RED, BLUE)), target)
    assert not ar.position_correct(Reading("horizontal", "left", (BLUE, RED)), target)  # drawn swapped
    assert not ar.position_correct(Reading("vertical", "left", (RED, BLUE)), target)  # stacked, not side by side
    # One attribute misread still leaves the order recognisable; reading both objects alike does not.
    assert ar.position_correct(Reading("horizontal", "left", (("circle", "red", "small"), BLUE)), target)
    assert not ar.position_correct(Reading("horizontal", "left", (RED, RED)), target)
    single = SceneTarget("single", (RED,), "middle")
    assert ar.position_correct(Reading("single", "middle", (BLUE,)), single)
    assert not ar.position_correct(Reading("single", "right", (RED,)), single)


class _Oracle(ar.AttributeReader):
    """Answers the given labels with certainty (images only fix the batch size)."""

    def __init__(self, labels: list[list[int]]) -> None:
        super().__init__(ar.ReaderConfig(image_size=32))
        self.labels = labels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows = []
        for labels in self.labels[: images.shape[0]]:
            rows.append(torch.cat([F.one_hot(torch.tensor(max(v, 0)), n).float() for v, n in zip(labels, self.sizes)]))
        return torch.stack(rows) * 10


def test_attribute_correctness_counts_like_a_naive_loop(shapes32: Path) -> None:
    targets = [SceneTarget.from_line(line) for line in _lines(shapes32)[:60]]
    shown = list(targets)  # the oracle reads each image as the next scene of the same layout
    for layout in {t.layout for t in targets}:
        members = [i for i, t in enumerate(targets) if t.layout == layout]
        for k, i in enumerate(members):
            shown[i] = targets[members[(k + 1) % len(members)]]
    reader = _Oracle([t.labels() for t in shown])
    images = torch.zeros(len(targets), 3, 32, 32)
    metrics = ar.attribute_correctness(reader, images, targets)
    for layout in {t.layout for t in targets}:
        pairs = [(s, t) for s, t in zip(shown, targets) if t.layout == layout]
        objects = [(a, b) for s, t in pairs for a, b in zip(s.objects, t.objects)]
        for k, name in enumerate(("shape", "color", "size")):
            assert metrics[layout][name] == pytest.approx(sum(a[k] == b[k] for a, b in objects) / len(objects))
        both = sum(a[:2] == b[:2] for a, b in objects) / len(objects)
        assert metrics[layout]["shape_color"] == pytest.approx(both)
        if layout == "single":
            assert metrics[layout]["position"] == pytest.approx(sum(s.position == t.position for s, t in pairs) / len(pairs))
    assert metrics["overall"]["shape"] < 0.5  # the neighbours' attributes match only by chance
    perfect = ar.attribute_correctness(_Oracle([t.labels() for t in targets]), images, targets)
    assert all(m[k] == 1.0 for m in perfect.values() for k in ("shape", "color", "size", "position", "all"))
    assert perfect["overall"]["n"] == 60


def test_trained_reader_reads_real_images_and_not_mismatched_ones(shapes32: Path, trained_reader) -> None:
    # 300 steps on 1500 images (what a test can afford) teach the layout, the single object's third
    # and the size; shape and colour need the full training (docs/generation_eval.md: 0.98 / 0.99).
    images, targets = ar.load_split(shapes32 / "test")
    real = ar.attribute_correctness(trained_reader, ar.to_unit(images), targets)
    mismatched = ar.attribute_correctness(trained_reader, ar.to_unit(images).flip(0), targets)
    assert real["single"]["position"] > 0.8, real
    assert real["single"]["position"] > mismatched["single"]["position"] + 0.5
    assert real["overall"]["size"] > mismatched["overall"]["size"] + 0.2


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reader = ar.AttributeReader(ar.ReaderConfig(image_size=64, width=8, hidden=32)).eval()
    folder = ar.save_reader(reader, tmp_path / "reader", {"note": 1})
    loaded = ar.load_reader(folder)
    x = torch.rand(3, 3, 64, 64)
    assert torch.equal(loaded(x), reader(x))
    assert loaded.config == reader.config
    # Any square size is resized to the reader's own.
    assert loaded(torch.rand(2, 3, 32, 32)).shape == (2, sum(reader.sizes))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "kind": "other"}))
    with pytest.raises(CheckpointError, match="not an attribute reader"):
        ar.load_reader(folder)
    (folder / "config.json").write_text(json.dumps({**config, "hidden": 64}))
    with pytest.raises(CheckpointError, match="do not match"):
        ar.load_reader(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        ar.load_reader(tmp_path / "nowhere")


@pytest.mark.parametrize(("kwargs", "field"), [({"image_size": 48}, "image_size"), ({"width": 12}, "width"),
                                               ({"hidden": 0}, "hidden")])
def test_reader_config_names_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ar.ReaderConfig(**kwargs)
