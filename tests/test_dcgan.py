"""dcgan.py's losses (cgan.py's are the same: tested here too) on fixed numbers, computed by hand, the same losses as
the loop uses them (what each step's loss pushes D's logits to, cgan's and cogan's too), the nets' architecture and
initialisation against the paper's guidelines, and a short run in which D tells real from fake."""

import math

import pytest
import torch

import cgan
import dcgan
from conftest import (
    assert_cross_entropy_pulls,
    assert_dcgan_nets,
    log_sigmoid,
    read_metrics,
    spy_training,
    train_script,
)

TINY = ["--img_size", 16, "--batch_size", 16, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--sample_interval", 50]


@pytest.mark.parametrize("script", [dcgan, cgan], ids=["dcgan", "cgan"])  # cgan's losses are DCGAN's, conditioned
def test_losses_by_hand(script):
    """On fixed logits: D's loss takes real as 1 and fake as 0, G's is the non-saturating -log D(G(z))."""
    real, fake = [2.0, -1.0, 0.5], [-3.0, 1.5]
    d_loss = -sum(map(log_sigmoid, real)) / 3 - sum(log_sigmoid(-f) for f in fake) / 2  # log(1 - s(f)) = log s(-f)
    assert script.discriminator_loss(torch.tensor(real), torch.tensor(fake)).item() == pytest.approx(d_loss, rel=1e-6)
    assert script.generator_loss(torch.tensor(fake)).item() == pytest.approx(-sum(map(log_sigmoid, fake)) / 2, rel=1e-6)
    # Where D rejects a fake (logit -10) G's gradient stays strong: d/dl -log s(l) = -(1 - s(l)) ~ -1, where the
    # saturating log(1 - s(l)) would give -s(l) ~ -5e-5.
    logits = torch.tensor([-10.0], requires_grad=True)
    script.generator_loss(logits).backward()
    assert logits.grad.item() == pytest.approx(-1 / (1 + math.exp(-10)), rel=1e-4)


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    return spy_training("dcgan", tmp_path_factory.mktemp("run"), "Generator", "Discriminator", *TINY, "--n_iters", 1)


def test_each_loss_pulls_the_logits_its_way_in_the_loop(spied):
    """D's step raises D's logits at the reals and lowers them at the fakes; G's step raises them at its fakes."""
    assert [(call.step, call.kinds) for call in spied.calls] == [("D", ("real",)), ("D", ("fake",)), ("G", ("fake",))]
    assert_cross_entropy_pulls(spied.calls)


def test_nets_follow_the_dcgan_guidelines_and_initialisation(spied):
    assert_dcgan_nets(spied)


def test_discriminator_learns_real_from_fake(tmp_path):
    """A few dozen steps: D rates the real digits above the fakes (real and fake swapped anywhere fail)."""
    run = train_script("dcgan", tmp_path, *TINY, "--n_iters", 30)
    rows = read_metrics(run.dir)[-10:]
    assert sum(float(r["D_x"]) - float(r["D_G_z"]) for r in rows) / len(rows) > 0.03


def test_the_generator_step_computes_no_gradient_for_the_discriminators_weights(tmp_path, monkeypatch):
    """The G step runs through D frozen: D's weights need no gradient there, so none is computed or all-reduced."""
    frozen = []
    forward = dcgan.Discriminator.forward

    def recording(net, img):
        frozen.append(not any(p.requires_grad for p in net.parameters()))
        return forward(net, img)

    monkeypatch.setattr(dcgan.Discriminator, "forward", recording)
    train_script("dcgan", tmp_path, *TINY, "--n_iters", 2)
    assert frozen == [False, False, True] * 2  # per step: D on real and on fake images, then G's step through D
