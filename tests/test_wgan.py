"""wgan.py: the losses, weight clipping, the critic schedule (also across epochs and on resume), the models."""


import pytest
import torch
import torch.nn as nn

import wgan
from conftest import read_metrics, train_script

TINY = ["--img_size", 16, "--latent_dim", 8, "--ngf", 8, "--ndf", 8]


def test_losses_match_a_hand_computation():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -0.5])
    assert wgan.critic_loss(d_real, d_fake).item() == pytest.approx(0.0 - 2.0)
    assert wgan.generator_loss(d_fake).item() == pytest.approx(0.0)
    assert wgan.generator_loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(-1.5)


def test_clip_weights_bounds_every_parameter():
    critic = wgan.Critic(1, 16, 4)
    critic.apply(wgan.init_weights)  # BatchNorm scales start near 1, far outside [-c, c]
    wgan.clip_weights(critic, 0.01)
    values = torch.cat([p.flatten() for p in critic.parameters()])
    assert values.abs().max().item() == pytest.approx(0.01)


def test_critic_weights_stay_clipped_after_training(tmp_path):
    run = train_script("wgan", tmp_path, *TINY, "--batch_size", 8, "--n_critic_boost", 0, "--lr", 0.1, "--n_iters", 2)
    state = torch.load(run.checkpoint_path, weights_only=False)["discriminator"]
    params = [v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert max(p.abs().max().item() for p in params) <= 0.01


def test_critic_schedule():
    assert [wgan.critic_steps(s, 5, 100) for s in (0, 24, 25, 499, 500, 501, 1000)] == [100, 100, 5, 5, 100, 5, 100]
    assert {wgan.critic_steps(s, 5, 0) for s in range(1001)} == {5}


def test_paper_defaults():
    opt = wgan.parse_args([])
    assert (opt.lr, opt.n_critic, opt.n_critic_boost, opt.clip_value, opt.batch_size) == (5e-5, 5, 100, 0.01, 64)


def test_first_generator_step_waits_for_100_critic_steps(tmp_path):
    run = train_script("wgan", tmp_path, *TINY, "--batch_size", 8, "--n_iters", 1)
    checkpoint = torch.load(run.checkpoint_path, weights_only=False)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch"], checkpoint["d_steps"]) == (1, 0, 100, 0)


def test_critic_steps_run_across_epochs_and_resume(tmp_path):
    # 1797 // 64 = 28 batches per epoch and 10 critic steps per generator step: the third generator
    # step's critic steps straddle the first epoch's end, where the interrupted run stops.
    args = [*TINY, "--batch_size", 64, "--n_critic_boost", 10, "--n_iters", 5]
    straight = train_script("wgan", tmp_path / "a", *args, "--n_epochs", 2)
    first = train_script("wgan", tmp_path / "b", *args, "--n_epochs", 1)
    assert torch.load(first.checkpoint_path, weights_only=False)["d_steps"] == 8
    resumed = train_script("wgan", tmp_path / "c", "--resume", first.dir, "--n_epochs", 2)

    assert [r["step"] for r in read_metrics(straight.dir)] == ["1", "2", "3", "4", "5"]
    assert read_metrics(resumed.dir) == read_metrics(straight.dir)


@pytest.mark.parametrize("img_size", [28, 64, 96])
def test_models_at_each_size(img_size):
    generator, critic = wgan.Generator(8, 3, img_size, 4), wgan.Critic(3, img_size, 4)
    assert not any(isinstance(m, nn.Sigmoid) for m in critic.modules())
    images = generator(torch.randn(2, 8))
    assert images.shape == (2, 3, img_size, img_size)
    scores = critic(images)
    assert scores.shape == (2,)
    wgan.generator_loss(scores).backward()
