"""began.py: k_t stays in [0, 1], the nets fit every accepted size, the lr decays on a stalled M,
the digits' own defaults."""

import pytest
import torch

import began
from conftest import read_metrics, train_script

TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--n_filters", 4, "--h_dim", 8, "--sample_interval", 2]


def test_k_t_is_clipped_to_the_unit_interval():
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    assert began.update_k(zero, zero, one, 0.5, 1.0) == 0  # fakes reconstructed worse than wanted: k_t would go below 0
    assert began.update_k(one, one, zero, 0.5, 1.0) == 1  # and above 1
    assert began.update_k(zero, one, zero, 0.5, 0.001) == pytest.approx(0.0005)
    assert began.convergence_measure(one, zero, 0.5) == pytest.approx(1.5)


def test_k_t_stays_in_unit_interval_while_training(tmp_path):
    run = train_script("began", tmp_path, *TINY, "--lambda_k", 10, "--n_iters", 4)  # a huge lambda_k hits the bounds
    k = [float(row["k_t"]) for row in read_metrics(run.dir)]
    assert all(0.0 <= value <= 1.0 for value in k) and max(k) > 0
    assert torch.load(run.checkpoint_path, weights_only=False)["k_t"] == k[-1]


@pytest.mark.parametrize("argv, expected", [
    ([], (16, 1.0, 0.01)),  # digits: the settings that keep G from collapsing onto one stroke
    (["--dataset", "mnist"], (32, 0.5, 0.001)),  # every other data set: the paper's
    (["--dataset", "folder"], (64, 0.5, 0.001)),
    (["--gamma", "0.5", "--lambda_k", "0.001", "--img_size", "32"], (32, 0.5, 0.001)),  # flags win
])
def test_digits_have_their_own_defaults(argv, expected):
    opt = began.parse_args(argv)
    assert (opt.img_size, opt.gamma, opt.lambda_k) == expected


@pytest.mark.parametrize("size", [16, 28, 32, 48, 64, 96])
def test_nets_fit_accepted_sizes(size):
    opt = began.parse_args(["--img_size", str(size)])
    generator, discriminator = began.Generator(8, 3, opt.img_size, 2), began.Discriminator(3, opt.img_size, 8, 2)
    fake = generator(torch.rand(2, 8) * 2 - 1)
    assert fake.shape == discriminator(fake).shape == (2, 3, size, size)


@pytest.mark.parametrize("size", [8, 12, 17, 36, 100])
def test_other_sizes_are_refused(size):
    with pytest.raises(SystemExit):
        began.parse_args(["--img_size", str(size)])


def test_learning_rate_halves_only_when_asked(tmp_path):
    decayed = train_script("began", tmp_path / "a", *TINY, "--lr_patience", 1, "--n_iters", 8)
    lrs = [float(row["lr"]) for row in read_metrics(decayed.dir)]
    assert lrs[0] == 1e-4 and min(lrs) < 1e-4 and lrs == sorted(lrs, reverse=True)
    constant = train_script("began", tmp_path / "b", *TINY, "--lr_patience", 0, "--n_iters", 8)
    assert {float(row["lr"]) for row in read_metrics(constant.dir)} == {1e-4}
