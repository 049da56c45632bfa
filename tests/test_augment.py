"""Training-time augmentation: flips, and the random rotation + shift done on the device in one op."""

import pytest
import torch

from astrovader.config import Config, ConfigError
from astrovader.feeding import augment, random_affine, random_flips


def _bar(n: int = 4, size: int = 32) -> torch.Tensor:
    x = torch.full((n, 1, size, size), 0.06)  # a sky level, like the simulated stamps
    x[:, :, 8:24, 15:17] = 1.0  # a vertical bar through the centre
    return x


def test_no_rotation_no_shift_is_identity():
    x = _bar()
    y = random_affine(x, torch.Generator().manual_seed(0), 0.0, 0.0)
    assert torch.allclose(y, x, atol=1e-5)


def test_rotation_keeps_flux_and_sky_and_turns_the_bar():
    x = _bar(64)
    y = random_affine(x, torch.Generator().manual_seed(1), 90.0, 0.0)
    # bilinear resampling of a rotated bar keeps its light to a few per cent; the border is sky, not black
    assert torch.allclose((y - 0.06).sum((1, 2, 3)), (x - 0.06).sum((1, 2, 3)), rtol=0.08)
    assert y.min() >= 0.06 - 1e-6
    # second moments: the bar's orientation varies from image to image (it started vertical in all)
    yy, xx = torch.meshgrid(torch.arange(32.0) - 15.5, torch.arange(32.0) - 15.5, indexing="ij")
    w = (y - 0.06).clamp_min(0)[:, 0]
    ratio = (w * xx**2).sum((1, 2)) / (w * yy**2).sum((1, 2))
    assert ratio.min() < 0.1 and ratio.max() > 1.0


def test_shift_moves_the_centroid_by_at_most_max_shift():
    x = _bar(64)
    y = random_affine(x, torch.Generator().manual_seed(2), 0.0, 3.0)
    w = (y - 0.06).clamp_min(0)[:, 0]
    cx = (w * torch.arange(32.0)).sum((1, 2)) / w.sum((1, 2))
    shift = cx - 15.5
    assert shift.abs().max() <= 3.0 + 1e-3 and shift.abs().max() > 1.5


def test_shards_see_the_slices_of_the_global_draw():
    x = torch.rand(8, 1, 16, 16)
    full = random_affine(x, torch.Generator().manual_seed(3), 30.0, 2.0)
    parts = [random_affine(x[r * 4:(r + 1) * 4], torch.Generator().manual_seed(3), 30.0, 2.0, (r, 2))
             for r in range(2)]
    assert torch.allclose(torch.cat(parts), full, atol=1e-6)


def test_augment_follows_the_config():
    cfg = Config.preset("demo")
    x = torch.rand(6, 1, 32, 32)
    cfg.train.flips = False
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), cfg.train), x)
    cfg.train.flips = True
    flipped = augment(x, torch.Generator().manual_seed(0), cfg.train)
    assert torch.equal(flipped, random_flips(x, torch.Generator().manual_seed(0)))  # default: flips only
    cfg.train.augment_rotate = 20.0
    assert not torch.allclose(augment(x, torch.Generator().manual_seed(0), cfg.train), flipped)


@pytest.mark.parametrize("key,value", [("train.augment_rotate", -1), ("train.augment_rotate", 200),
                                       ("train.augment_shift", 17), ("train.augment_shift", -0.5)])
def test_bad_augmentation_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config.resolve("demo", overrides=[f"{key}={value}"])


