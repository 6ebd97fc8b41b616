"""lsgan.py: the least-squares losses for both codings by hand, the coding reaching the losses and the training, each
loss's targets as the loop uses them, the defaults, the models at every size and against DCGAN's guidelines."""

import pytest
import torch
import torch.nn as nn

import lsgan
from conftest import assert_dcgan_guidelines, assert_dcgan_init, read_metrics, spy_training, train_script

TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8]


def test_losses_match_a_hand_computation():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    a, b, c = lsgan.CODINGS["01"]
    # 1/2 mean((1-1)^2, (3-1)^2) + 1/2 mean((0-0)^2, (2-0)^2) = 1 + 1, and 1/2 mean((0-1)^2, (2-1)^2) = 0.5
    assert lsgan.discriminator_loss(d_real, d_fake, a, b).item() == pytest.approx(2.0)
    assert lsgan.generator_loss(d_fake, c).item() == pytest.approx(0.5)
    a, b, c = lsgan.CODINGS["pearson"]
    # 1/2 mean((1-1)^2, (3-1)^2) + 1/2 mean((0+1)^2, (2+1)^2) = 1 + 2.5, and 1/2 mean(0^2, 2^2) = 1
    assert lsgan.discriminator_loss(d_real, d_fake, a, b).item() == pytest.approx(3.5)
    assert lsgan.generator_loss(d_fake, c).item() == pytest.approx(1.0)


def test_losses_are_zero_at_the_codes():
    for a, b, c in lsgan.CODINGS.values():
        assert lsgan.discriminator_loss(torch.full((4,), b), torch.full((4,), a), a, b).item() == 0
        assert lsgan.generator_loss(torch.full((4,), c), c).item() == 0


def test_paper_defaults_and_codings():
    opt = lsgan.parse_args([])
    assert (opt.coding, opt.lr, opt.b1, opt.b2, opt.n_critic, opt.n_iters) == ("01", 2e-4, 0.5, 0.999, 1, 5600)
    assert opt.ema == 0.995 and lsgan.parse_args(["--ema", 0]).ema == 0  # G's average draws, unless asked
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


@pytest.mark.parametrize("coding", lsgan.CODINGS)
def test_the_coding_reaches_the_losses(coding, tmp_path, monkeypatch):
    calls = []
    d_loss, g_loss = lsgan.discriminator_loss, lsgan.generator_loss
    monkeypatch.setattr(lsgan, "discriminator_loss", lambda *args: calls.append(("D", *args[2:])) or d_loss(*args))
    monkeypatch.setattr(lsgan, "generator_loss", lambda *args: calls.append(("G", *args[1:])) or g_loss(*args))
    run = train_script("lsgan", tmp_path, *TINY, "--coding", coding, "--n_iters", 2)
    a, b, c = lsgan.CODINGS[coding]
    assert calls == [("D", a, b), ("G", c)] * 2
    assert torch.load(run.checkpoint_path, weights_only=True)["args"]["coding"] == coding


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    """A step of the pearson coding, whose three targets differ: a target mixed up with another shows."""
    args = [*TINY, "--coding", "pearson", "--n_iters", 1]
    return spy_training("lsgan", tmp_path_factory.mktemp("run"), "Generator", "Discriminator", *args)


def test_each_loss_pulls_the_scores_to_its_target_in_the_loop(spied):
    """The gradient of each step's loss, as the loop computes it, with respect to D's scores s: (s - t) / N, towards
    the target t: in D's step b = 1 at the reals and a = -1 at the fakes, in G's step c = 0 at the fakes."""
    assert [(call.step, call.kinds) for call in spied.calls] == [("D", ("real",)), ("D", ("fake",)), ("G", ("fake",))]
    a, b, c = lsgan.CODINGS["pearson"]
    for call, target in zip(spied.calls, (b, a, c)):
        scores = call.outputs[0].detach()
        torch.testing.assert_close(call.grads[0], (scores - target) / len(scores))


def test_nets_follow_the_dcgan_guidelines_and_initialisation(spied):
    generator, discriminator = spied.first["generator"], spied.first["discriminator"]
    assert_dcgan_guidelines(list(generator.net), list(discriminator.net))
    assert_dcgan_init(generator)
    assert_dcgan_init(discriminator)


def test_the_codings_train_differently(tmp_path):
    runs = {
        coding: train_script("lsgan", tmp_path / coding, *TINY, "--coding", coding, "--n_iters", 2)
        for coding in lsgan.CODINGS
    }
    metrics = {coding: read_metrics(run.dir) for coding, run in runs.items()}
    # Same seed, same nets, same first batch: D's scores at step 1 agree, the losses on them do not.
    assert metrics["01"][0]["D_x"] == metrics["pearson"][0]["D_x"]
    assert metrics["01"][0]["loss_D"] != metrics["pearson"][0]["loss_D"]
    assert metrics["01"][0]["loss_G"] != metrics["pearson"][0]["loss_G"]
    weights = {coding: torch.load(run.checkpoint_path, weights_only=True)["generator"] for coding, run in runs.items()}
    assert any(not torch.equal(weights["01"][k], weights["pearson"][k]) for k in weights["01"])
