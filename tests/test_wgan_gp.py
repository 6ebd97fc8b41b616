"""wgan_gp.py: the losses and the gradient penalty against hand computations, the critic without BatchNorm."""

import pytest
import torch
import torch.nn as nn

import wgan_gp
from conftest import read_metrics, train_script


def test_losses_match_a_hand_computation():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -0.5])
    assert wgan_gp.critic_loss(d_real, d_fake).item() == pytest.approx(-2.0)
    assert wgan_gp.generator_loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(-1.5)


def test_penalty_of_a_linear_critic():
    # f(x) = w.x has gradient w everywhere, so ||grad|| = ||w|| = 3 at every xhat: penalty (3 - 1)^2.
    w = torch.zeros(2, 3, 4)
    w[0, 0, 0] = 3.0
    w.requires_grad_(True)
    critic = lambda x: (x * w).flatten(1).sum(1)
    real, fake = torch.randn(5, 2, 3, 4), torch.randn(5, 2, 3, 4)
    penalty, norm = wgan_gp.gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx(4.0) and norm.item() == pytest.approx(3.0)
    # The penalty is differentiable in the critic's weights: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
    penalty.backward()
    expected = torch.zeros(2, 3, 4)
    expected[0, 0, 0] = 4.0
    assert torch.allclose(w.grad, expected)


def test_penalty_takes_each_samples_norm_over_all_pixels():
    # f(x) = ||x||^2 / 2 has gradient x, so with real = fake the norms are the images' own norms.
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, 0, 0], images[0, 2, 3, 3] = 3.0, 4.0  # norm 5 across channels and pixels
    images[1, 1, 2, 1] = 1.0  # norm 1
    critic = lambda x: x.pow(2).flatten(1).sum(1) / 2
    penalty, norm = wgan_gp.gradient_penalty(critic, images, images)
    assert penalty.item() == pytest.approx(((5 - 1) ** 2 + 0) / 2)
    assert norm.item() == pytest.approx(3.0)


def test_critic_has_no_batchnorm_and_scores_each_sample_alone():
    critic = wgan_gp.Critic(1, 16, 4)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Sigmoid)) for m in critic.modules())
    images = torch.randn(4, 1, 16, 16)
    assert torch.allclose(critic(images)[:1], critic(images[:1]), atol=1e-6)


def test_paper_defaults():
    opt = wgan_gp.parse_args([])
    assert (opt.lr, opt.b1, opt.b2, opt.n_critic, opt.lambda_gp) == (1e-4, 0.0, 0.9, 5, 10.0)


def test_logs_wasserstein_estimate_and_gradient_norm(tmp_path):
    run = train_script("wgan_gp", tmp_path, "--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--n_iters", 1)
    header = run.metrics_path.read_text().splitlines()[0].split(",")
    assert header == ["step", "epoch", "loss_D", "loss_G", "W_estimate", "grad_norm", "seconds"]
    assert torch.load(run.checkpoint_path, weights_only=False)["batch"] == 5  # n_critic batches per generator step


@pytest.mark.parametrize("img_size", [28, 64, 96])
def test_models_at_each_size(img_size):
    generator, critic = wgan_gp.Generator(8, 3, img_size, 4), wgan_gp.Critic(3, img_size, 4)
    fake = generator(torch.randn(2, 8))
    assert fake.shape == (2, 3, img_size, img_size)
    penalty, _ = wgan_gp.gradient_penalty(critic, torch.rand_like(fake), fake.detach())
    (wgan_gp.generator_loss(critic(fake)) + penalty).backward()


def test_critic_steps_run_across_epochs(tmp_path):
    # 1797 // 512 = 3 batches per epoch, fewer than the 5 critic steps of one generator step.
    run = train_script("wgan_gp", tmp_path, "--img_size", 16, "--batch_size", 512, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--n_iters", 2)
    checkpoint = torch.load(run.checkpoint_path, weights_only=False)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch"], checkpoint["d_steps"]) == (2, 3, 1, 10)


@pytest.mark.parametrize("script", ["wgan", "wgan_gp"])
def test_log_grad_norms_measures_the_critics_slope(script, tmp_path):
    module = __import__(script)
    # f(x) = ||x||^2 / 2 has gradient x: the mean norm of images with norms 5 and 1 is 3.
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, 0, 0], images[0, 2, 3, 3], images[1, 1, 2, 1] = 3.0, 4.0, 1.0
    assert module.input_gradient_norm(lambda x: x.pow(2).flatten(1).sum(1) / 2, images).item() == pytest.approx(3.0)

    run = train_script(script, tmp_path, "--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--n_critic_boost" if script == "wgan" else "--n_critic", 0 if script == "wgan" else 5, "--n_iters", 2, "--log_grad_norms")
    rows = read_metrics(run.dir)
    assert len(rows) == 2 and all(float(row["grad_norm_real"]) > 0 and float(row["grad_norm_fake"]) > 0 for row in rows)
