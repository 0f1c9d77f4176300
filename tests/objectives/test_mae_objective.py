"""MAE's objective: one "mae" term, the masked-patch MSE of the model's output, masked by the step's generator;
the validation loss under a fixed mask."""

from __future__ import annotations

import torch

from coembed.losses.reconstruction import masked_patch_mse
from coembed.models.mae import MAE, MAEConfig
from coembed.objectives import FusionBatch
from coembed.objectives.mae import compute_losses, validation_loss
from coembed.towers.vit import VisionConfig


def test_one_term_from_the_generator() -> None:
    torch.manual_seed(0)
    model = MAE(MAEConfig(vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2), decoder_width=16,
                          norm_pix_loss=False))
    batch = FusionBatch(images=torch.randn(4, 3, 32, 32), tokens=torch.zeros(4, 2, dtype=torch.long), image_ids=torch.arange(4))
    run = lambda seed: compute_losses(model, batch, progress=0.0, weights={}, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    terms = run(3)
    assert set(terms) == {"mae"}
    out = model.forward_features(batch.images, torch.Generator().manual_seed(3))
    assert torch.equal(terms["mae"], masked_patch_mse(out.pred, out.target, out.mask, norm_pix=False))
    assert torch.equal(run(3)["mae"], terms["mae"]) and not torch.equal(run(4)["mae"], terms["mae"])


def test_validation_loss_is_fixed_by_its_seed_and_tracks_training() -> None:
    torch.manual_seed(0)
    model = MAE(MAEConfig(vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2), decoder_width=16))
    images = torch.randn(4, 3, 32, 32)
    before = validation_loss(model, images)
    assert not model.training and validation_loss(model, images) == before != validation_loss(model, images, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = FusionBatch(images=images, tokens=torch.zeros(4, 2, dtype=torch.long), image_ids=torch.arange(4))
    for step in range(15):
        loss = compute_losses(model.train(), batch, progress=0.0, weights={}, generator=torch.Generator().manual_seed(step))["mae"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert validation_loss(model, images) < before
