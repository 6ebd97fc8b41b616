"""wgan_gp.py: the losses and the gradient penalty against hand computations (slopes above 1 and below it), the losses
as the loop uses them, the penalty in the critic's loss at the interpolates (not at the reals, not dropped), one
interpolation weight a sample, the critic without BatchNorm (DCGAN's guidelines otherwise) and eager under --compile."""

import pytest
import torch
import torch.nn as nn
from PIL import Image

import wgan_gp
from conftest import assert_dcgan_guidelines, assert_dcgan_init, read_metrics, spy_training, train_script

TINY = ["--img_size", 16, "--latent_dim", 8, "--ngf", 8, "--ndf", 8]


def piecewise(x):
    """Per pixel: slope 3 at 1 and above (the reals below), 2 at -1 and below (the fakes), 1 in between."""
    return torch.where(x >= 1, 3 * x, torch.where(x <= -1, 2 * x, x))


class PiecewiseCritic(nn.Module):
    """D(x) = s * sum of piecewise(x) over the pixels: at 1 x img_size x img_size images its input-gradient norm is
    3, 2 and 1 times s * img_size at reals (all 1), fakes (all -1) and every point strictly between them."""

    def __init__(self, channels, img_size, ndf):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(2.0 / img_size))  # norms 6 at reals, 4 at fakes, 2 at the interpolates

    def forward(self, img):
        return self.s * piecewise(img).flatten(1).sum(1)


class ConstantGenerator(nn.Module):
    """Fakes that are all -1, whatever z; its one weight gets a zero gradient."""

    def __init__(self, latent_dim, channels, img_size, ngf):
        super().__init__()
        self.w, self.shape = nn.Parameter(torch.zeros(())), (channels, img_size, img_size)

    def forward(self, z):
        return torch.full((z.size(0), *self.shape), -1.0, device=z.device) + 0 * self.w


class HalfSquaredNorm(nn.Module):
    """D(x) = ||x||^2 / 2, whose gradient is x."""

    def forward(self, x):
        return x.pow(2).flatten(1).sum(1) / 2


def test_losses_match_a_hand_computation():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])
    assert wgan_gp.critic_loss(d_real, d_fake).item() == pytest.approx(1.0 - 2.0)  # E[D(G(z))] - E[D(x)]
    assert wgan_gp.generator_loss(d_fake).item() == pytest.approx(-1.0)  # -E[D(G(z))]
    assert wgan_gp.generator_loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(-1.5)


@pytest.mark.parametrize("slope", [3.0, 0.5])  # the penalty is two-sided: a slope under 1 costs too
def test_penalty_of_a_linear_critic(slope):
    # f(x) = w.x has gradient w everywhere, so ||grad|| = ||w|| = slope at every xhat: penalty (slope - 1)^2.
    w = torch.zeros(2, 3, 4)
    w[0, 0, 0] = slope
    w.requires_grad_(True)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 2, 3, 4), torch.randn(5, 2, 3, 4)
    penalty, norm = wgan_gp.gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx((slope - 1) ** 2) and norm.item() == pytest.approx(slope)
    # The penalty is differentiable in the critic's weights: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
    penalty.backward()
    expected = torch.zeros(2, 3, 4)
    expected[0, 0, 0] = 2 * (slope - 1)
    assert torch.allclose(w.grad, expected)


def test_each_sample_is_interpolated_with_its_own_weight():
    """xhat = eps x + (1 - eps) G(z) with eps ~ U[0, 1] drawn per sample: between all-1 reals and all-(-1) fakes
    xhat = 2 eps - 1, the same at each pixel of an image and another in each image."""
    seen = []
    critic = lambda x: seen.append(x.detach()) or x.flatten(1).sum(1)  # noqa: E731
    torch.manual_seed(0)
    wgan_gp.gradient_penalty(critic, torch.ones(64, 2, 3, 3), -torch.ones(64, 2, 3, 3))
    eps = (seen[0] + 1) / 2
    assert torch.equal(eps, eps[:, :1, :1, :1].expand_as(eps))
    assert len(eps[:, 0, 0, 0].unique()) == 64 and 0 <= eps.min() and eps.max() <= 1
    assert eps.mean().item() == pytest.approx(0.5, abs=0.1)


def test_penalty_takes_each_samples_norm_over_all_pixels():
    # f(x) = ||x||^2 / 2 has gradient x, so with real = fake the norms are the images' own norms.
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, 0, 0], images[0, 2, 3, 3] = 3.0, 4.0  # norm 5 across channels and pixels
    images[1, 1, 2, 1] = 1.0  # norm 1
    critic = lambda x: x.pow(2).flatten(1).sum(1) / 2  # noqa: E731
    penalty, norm = wgan_gp.gradient_penalty(critic, images, images)
    assert penalty.item() == pytest.approx(((5 - 1) ** 2 + 0) / 2)
    assert norm.item() == pytest.approx(3.0)


def test_penalty_is_taken_between_reals_and_fakes():
    # 2x2 images: norms 3 * 2 at the reals, 2 * 2 at the fakes, 1 * 2 strictly between: penalty (2 - 1)^2 = 1
    # there, where the reals would give 25 and the fakes 9.
    critic = lambda x: piecewise(x).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.ones(64, 1, 2, 2), -torch.ones(64, 1, 2, 2)
    penalty, norm = wgan_gp.gradient_penalty(critic, real, fake)
    assert (penalty.item(), norm.item()) == (pytest.approx(1.0), pytest.approx(2.0))


def test_the_critic_loss_holds_the_penalty_at_the_interpolates(tmp_path, monkeypatch):
    # White images (all 1) against fakes of all -1, through the piecewise critic at s = 1/8: per sample
    # D(x) = 3 * 256 / 8 = 96 and D(G(z)) = -2 * 256 / 8 = -64, so W_estimate = 160, and the penalty at the
    # interpolates is (2 - 1)^2 = 1: loss_D = -160 + 10 * 1. At the reals it would be 25 (loss_D 90); without it -160.
    for i in range(16):
        Image.new("L", (16, 16), 255).save(tmp_path / f"white{i}.png")
    monkeypatch.setattr(wgan_gp, "Critic", PiecewiseCritic)
    monkeypatch.setattr(wgan_gp, "Generator", ConstantGenerator)
    data = ["--dataset", "folder", "--data_root", tmp_path, "--channels", 1, "--img_size", 16, "--batch_size", 8]
    run = train_script(
        "wgan_gp", tmp_path / "runs", *data, "--n_critic", 1, "--lr", 1e-9, "--n_iters", 1, "--log_grad_norms"
    )
    (row,) = read_metrics(run.dir)
    assert float(row["W_estimate"]) == pytest.approx(160.0)
    assert float(row["grad_norm"]) == pytest.approx(2.0)
    assert float(row["loss_D"]) == pytest.approx(-160.0 + 10 * 1.0)
    assert float(row["loss_G"]) == pytest.approx(64.0)
    # --log_grad_norms measures at the reals and at the fakes, each its own.
    assert (float(row["grad_norm_real"]), float(row["grad_norm_fake"])) == (pytest.approx(6.0), pytest.approx(4.0))


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    args = [*TINY, "--batch_size", 8, "--n_critic", 1, "--n_iters", 1]
    return spy_training("wgan_gp", tmp_path_factory.mktemp("run"), "Generator", "Critic", *args)


def test_each_loss_pulls_the_scores_its_way_in_the_loop(spied):
    """The gradient of each step's loss, as the loop computes it, with respect to the critic's scores: -1/N at the
    reals and +1/N at the fakes in the critic's step, where the penalty judges the interpolates; -1/N at the fakes in
    G's step (G ascends the critic)."""
    steps = [(call.step, call.kinds) for call in spied.calls]
    assert steps == [("D", ("real",)), ("D", ("fake",)), ("D", ("interpolate",)), ("G", ("fake",))]
    for call, sign in zip([spied.calls[i] for i in (0, 1, 3)], (-1, 1, -1)):
        torch.testing.assert_close(call.grads[0], torch.full((8,), sign / 8))


def test_nets_follow_the_dcgan_guidelines_with_layer_norm_in_the_critic(spied):
    generator, critic = spied.first["generator"], spied.first["discriminator"]
    assert_dcgan_guidelines(list(generator.net), list(critic.net), norm=nn.GroupNorm)
    assert_dcgan_init(generator)
    assert_dcgan_init(critic)


def test_critic_has_no_batchnorm_and_scores_each_sample_alone():
    critic = wgan_gp.Critic(1, 16, 4)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Sigmoid)) for m in critic.modules())
    images = torch.randn(4, 1, 16, 16)
    assert torch.allclose(critic(images)[:1], critic(images[:1]), atol=1e-6)


def test_compile_leaves_the_critic_eager(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: compiled.append(type(self).__name__))
    train_script("wgan_gp", tmp_path, *TINY, "--batch_size", 8, "--n_iters", 1, "--compile")
    assert compiled == ["Generator"]  # compiled code has no double backward for the penalty


def test_paper_defaults():
    opt = wgan_gp.parse_args([])
    assert (opt.lr, opt.b1, opt.b2, opt.n_critic, opt.lambda_gp) == (1e-4, 0.0, 0.9, 5, 10.0)
    assert (opt.n_iters, opt.ngf, opt.ndf) == (1680, 32, 32)  # digits: 300 passes at 5 batches a step, width 32
    opt = wgan_gp.parse_args(["--dataset", "cifar10"])
    assert (opt.n_iters, opt.ngf, opt.ndf) == (4680, 64, 64)


def test_logs_wasserstein_estimate_and_gradient_norm(tmp_path):
    run = train_script("wgan_gp", tmp_path, *TINY, "--batch_size", 8, "--n_iters", 1)
    (row,) = read_metrics(run.dir)
    assert list(row) == ["step", "loss_D", "loss_G", "W_estimate", "grad_norm"]
    assert torch.load(run.checkpoint_path, weights_only=True)["batches"]["taken"] == 5  # n_critic batches a step


@pytest.mark.parametrize("img_size", [28, 64, 96])
def test_models_at_each_size(img_size):
    generator, critic = wgan_gp.Generator(8, 3, img_size, 4), wgan_gp.Critic(3, img_size, 4)
    fake = generator(torch.randn(2, 8))
    assert fake.shape == (2, 3, img_size, img_size)
    penalty, _ = wgan_gp.gradient_penalty(critic, torch.rand_like(fake), fake.detach())
    (wgan_gp.generator_loss(critic(fake)) + penalty).backward()


def test_critic_steps_run_across_epochs(tmp_path):
    # 1797 // 512 = 3 batches per epoch, fewer than the 5 critic steps of one generator step.
    run = train_script("wgan_gp", tmp_path, *TINY, "--batch_size", 512, "--n_iters", 2)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert (checkpoint["step"], checkpoint["batches"]["taken"]) == (2, 10)


def test_n_epochs_counts_the_critics_batches(tmp_path):
    # 1797 // 256 = 7 batches per epoch: 3 passes are 21 batches, 4 generator steps of 5 critic batches.
    run = train_script("wgan_gp", tmp_path, *TINY, "--batch_size", 256, "--n_epochs", 3)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert (checkpoint["step"], checkpoint["batches"]["taken"]) == (4, 20)


@pytest.mark.parametrize("script", ["wgan", "wgan_gp"])
def test_log_grad_norms_measures_the_critics_slope(script, tmp_path):
    module = __import__(script)
    # f(x) = ||x||^2 / 2 has gradient x: the mean norm of images with norms 5 and 1 is 3.
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, 0, 0], images[0, 2, 3, 3], images[1, 1, 2, 1] = 3.0, 4.0, 1.0
    assert module.input_gradient_norm(HalfSquaredNorm(), images).item() == pytest.approx(3.0)

    schedule = ["--n_critic_boost", 0] if script == "wgan" else []
    run = train_script(script, tmp_path, *TINY, "--batch_size", 8, *schedule, "--n_iters", 2, "--log_grad_norms")
    rows = read_metrics(run.dir)
    assert len(rows) == 2 and all(float(row["grad_norm_real"]) > 0 and float(row["grad_norm_fake"]) > 0 for row in rows)
