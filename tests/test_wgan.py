"""wgan.py: the losses by hand and as the loop uses them, weight clipping (from before the first critic update on), the
critic schedule (also across epochs and on resume), the defaults, the models against DCGAN's guidelines."""

import pytest
import torch
import torch.nn as nn

import wgan
from conftest import assert_dcgan_guidelines, assert_dcgan_init, read_metrics, spy_training, train_script

TINY = ["--img_size", 16, "--latent_dim", 8, "--ngf", 8, "--ndf", 8]


def critic_weights(state):
    """The critic's parameters in a state_dict, without BatchNorm's running statistics."""
    return [v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]


def test_losses_match_a_hand_computation():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])
    assert wgan.critic_loss(d_real, d_fake).item() == pytest.approx(1.0 - 2.0)  # E[D(G(z))] - E[D(x)]
    assert wgan.generator_loss(d_fake).item() == pytest.approx(-1.0)  # -E[D(G(z))]
    assert wgan.generator_loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(-1.5)


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    args = [*TINY, "--batch_size", 8, "--n_critic", 1, "--n_critic_boost", 0, "--n_iters", 1]
    return spy_training("wgan", tmp_path_factory.mktemp("run"), "Generator", "Critic", *args)


def test_each_loss_pulls_the_scores_its_way_in_the_loop(spied):
    """The gradient of each step's loss, as the loop computes it, with respect to the critic's scores: -1/N at the
    reals and +1/N at the fakes in the critic's step (it raises the reals' scores, lowers the fakes'), -1/N at the
    fakes in G's step (G ascends the critic)."""
    assert [(call.step, call.kinds) for call in spied.calls] == [("D", ("real",)), ("D", ("fake",)), ("G", ("fake",))]
    for call, sign in zip(spied.calls, (-1, 1, -1)):
        torch.testing.assert_close(call.grads[0], torch.full((8,), sign / 8))


def test_nets_follow_the_dcgan_guidelines(spied):
    """The paper's critic is DCGAN's without the sigmoid; G keeps DCGAN's initialisation (the critic's is clipped)."""
    generator, critic = spied.first["generator"], spied.first["discriminator"]
    assert_dcgan_guidelines(list(generator.net), list(critic.net))
    assert_dcgan_init(generator)


def test_clip_weights_bounds_every_parameter():
    critic = wgan.Critic(1, 16, 4)
    critic.apply(wgan.init_weights)  # BatchNorm scales start near 1, far outside [-c, c]
    wgan.clip_weights(critic, 0.01)
    values = torch.cat([p.flatten() for p in critic.parameters()])
    assert values.abs().max().item() == pytest.approx(0.01)


def test_the_first_critic_update_starts_from_clipped_weights(tmp_path, monkeypatch):
    # The authors clamp before every critic step; BatchNorm's gains start near 1.04, so an unclipped first
    # update would follow the gradient of a critic outside the family clipping defines.
    largest, forward = [], wgan.Critic.forward

    def spy(self, img):
        largest.append(max(p.abs().max().item() for p in self.parameters()))
        return forward(self, img)

    monkeypatch.setattr(wgan.Critic, "forward", spy)
    train_script("wgan", tmp_path, *TINY, "--batch_size", 8, "--n_critic_boost", 0, "--lr", 0.1, "--n_iters", 2)
    assert len(largest) == 2 * (5 * 2 + 1)  # reals and fakes in 5 critic steps, then the G step, twice
    assert max(largest) <= 0.01  # also at the first forward, before any update


def test_critic_weights_stay_clipped_after_training(tmp_path):
    run = train_script("wgan", tmp_path, *TINY, "--batch_size", 8, "--n_critic_boost", 0, "--lr", 0.1, "--n_iters", 2)
    state = torch.load(run.checkpoint_path, weights_only=True)["discriminator"]
    assert max(p.abs().max().item() for p in critic_weights(state)) <= 0.01


def test_critic_schedule():
    assert [wgan.critic_steps(s, 5, 100) for s in (0, 24, 25, 499, 500, 501, 1000)] == [100, 100, 5, 5, 100, 5, 100]
    assert {wgan.critic_steps(s, 5, 0) for s in range(1001)} == {5}


def test_paper_defaults():
    opt = wgan.parse_args([])
    assert (opt.lr, opt.n_critic, opt.n_critic_boost, opt.clip_value, opt.batch_size) == (5e-5, 5, 100, 0.01, 64)
    assert (opt.n_iters, opt.ngf, opt.ndf) == (14640, 32, 32)  # digits: about 2,790 passes, at width 32
    opt = wgan.parse_args(["--dataset", "mnist"])
    assert (opt.n_iters, opt.ngf, opt.ndf) == (3750, 64, 64)


def test_first_generator_step_waits_for_100_critic_steps(tmp_path):
    run = train_script("wgan", tmp_path, *TINY, "--batch_size", 8, "--n_iters", 1)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert (checkpoint["step"], checkpoint["batches"]["taken"]) == (1, 100)


def test_generator_step_26_is_the_first_with_n_critic_steps(tmp_path):
    # Generator steps 1..25 follow n_critic_boost critic steps each, step 26 n_critic: 25 * 3 + 1 batches.
    run = train_script(
        "wgan", tmp_path, *TINY, "--batch_size", 8, "--n_critic", 1, "--n_critic_boost", 3, "--n_iters", 26
    )
    assert torch.load(run.checkpoint_path, weights_only=True)["batches"]["taken"] == 25 * 3 + 1


def test_critic_steps_run_across_epochs_and_resume(tmp_path):
    # 1797 // 64 = 28 batches per epoch and 10 critic steps per generator step: the third generator step's critic
    # steps straddle the first epoch's end, and the run stopped after it resumes there.
    args = [*TINY, "--batch_size", 64, "--n_critic_boost", 10]
    straight = train_script("wgan", tmp_path / "a", *args, "--n_iters", 5)
    first = train_script("wgan", tmp_path / "b", *args, "--n_iters", 3)
    assert torch.load(first.checkpoint_path, weights_only=True)["batches"]["taken"] == 30
    resumed = train_script("wgan", tmp_path / "c", "--resume", first.dir, "--n_iters", 5)

    assert [r["step"] for r in read_metrics(straight.dir)] == ["1", "2", "3", "4", "5"]
    assert read_metrics(resumed.dir) == read_metrics(straight.dir)
    assert torch.load(resumed.checkpoint_path, weights_only=True)["batches"]["taken"] == 50
    straight_D, resumed_D = (
        torch.load(r.checkpoint_path, weights_only=True)["discriminator"] for r in (straight, resumed)
    )
    assert all(torch.equal(straight_D[k], resumed_D[k]) for k in straight_D)


def test_logs_the_wasserstein_estimate(tmp_path):
    run = train_script("wgan", tmp_path, *TINY, "--batch_size", 8, "--n_critic_boost", 0, "--n_iters", 1)
    (row,) = read_metrics(run.dir)
    assert list(row) == ["step", "loss_D", "loss_G", "W_estimate"]
    assert float(row["W_estimate"]) == pytest.approx(-float(row["loss_D"]), abs=1e-6)  # W estimate = -critic loss


def test_the_logged_slope_is_each_images_own():
    """--log_grad_norms measures ||grad_x D(x)|| of each image alone: with the batch's BatchNorm statistics an image's
    gradient would flow through the others' scores too. The critic's running statistics and mode stay as they were."""
    torch.manual_seed(0)
    critic = wgan.Critic(1, 16, 4).apply(wgan.init_weights)
    critic(torch.randn(32, 1, 16, 16) + 0.5)  # running statistics of some other batch
    buffers = [b.clone() for b in critic.buffers()]
    images = torch.randn(6, 1, 16, 16)
    alone = torch.stack([wgan.input_gradient_norm(critic, image[None]) for image in images])
    torch.testing.assert_close(wgan.input_gradient_norm(critic, images), alone.mean())
    assert critic.training and all(torch.equal(a, b) for a, b in zip(buffers, critic.buffers()))


@pytest.mark.parametrize("img_size", [28, 64, 96])
def test_models_at_each_size(img_size):
    generator, critic = wgan.Generator(8, 3, img_size, 4), wgan.Critic(3, img_size, 4)
    assert not any(isinstance(m, nn.Sigmoid) for m in critic.modules())
    images = generator(torch.randn(2, 8))
    assert images.shape == (2, 3, img_size, img_size)
    scores = critic(images)
    assert scores.shape == (2,)
    wgan.generator_loss(scores).backward()
