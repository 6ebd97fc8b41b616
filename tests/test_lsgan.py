"""lsgan.py: the least-squares losses for both codings, the defaults, the models at every size."""

import pytest
import torch
import torch.nn as nn

import lsgan
from conftest import train_script


def test_losses_match_a_hand_computation():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    a, b, c = lsgan.CODINGS["01"]
    # 1/2 mean(0, 4) + 1/2 mean(0, 4) and 1/2 mean(1, 1)
    assert lsgan.discriminator_loss(d_real, d_fake, a, b).item() == pytest.approx(2.0)
    assert lsgan.generator_loss(d_fake, c).item() == pytest.approx(0.5)
    a, b, c = lsgan.CODINGS["pearson"]
    # 1/2 mean(0, 4) + 1/2 mean(1, 9) and 1/2 mean(0, 4)
    assert lsgan.discriminator_loss(d_real, d_fake, a, b).item() == pytest.approx(3.5)
    assert lsgan.generator_loss(d_fake, c).item() == pytest.approx(1.0)


def test_losses_are_zero_at_the_codes():
    for a, b, c in lsgan.CODINGS.values():
        assert lsgan.discriminator_loss(torch.full((4,), b), torch.full((4,), a), a, b).item() == 0
        assert lsgan.generator_loss(torch.full((4,), c), c).item() == 0


def test_paper_defaults_and_codings():
    opt = lsgan.parse_args([])
    assert (opt.coding, opt.lr, opt.b1, opt.b2, opt.n_critic) == ("01", 2e-4, 0.5, 0.999, 1)
    assert lsgan.CODINGS == {"01": (0.0, 1.0, 1.0), "pearson": (-1.0, 1.0, 0.0)}
    assert lsgan.parse_args(["--coding", "pearson"]).coding == "pearson"


def test_discriminator_has_no_sigmoid():
    discriminator = lsgan.Discriminator(1, 16, 4)
    assert not any(isinstance(m, nn.Sigmoid) for m in discriminator.modules())


@pytest.mark.parametrize("img_size", [28, 64, 96])
def test_models_at_each_size(img_size):
    generator, discriminator = lsgan.Generator(8, 3, img_size, 4), lsgan.Discriminator(3, img_size, 4)
    images = generator(torch.randn(2, 8))
    assert images.shape == (2, 3, img_size, img_size)
    scores = discriminator(images)
    assert scores.shape == (2,)
    lsgan.generator_loss(scores, 1.0).backward()


def test_pearson_coding_trains(tmp_path):
    run = train_script("lsgan", tmp_path, "--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--coding", "pearson", "--n_iters", 2)
    assert torch.load(run.checkpoint_path, weights_only=False)["args"]["coding"] == "pearson"
