"""began.py: the losses and the k_t controller as in the paper, and the losses as the loop uses them, k_t stays in
[0, 1] and resumes, the nets fit every accepted size, the lr decays on a stalled M, the digits' own defaults."""

import pytest
import torch

import began
import dcgan
from conftest import read_metrics, spy_training, train_script

TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--n_filters", 4, "--h_dim", 8, "--sample_interval", 2]


def test_losses_and_controller_by_hand():
    """On fixed numbers: L(v) = mean |v - D(v)|, L_D = L(x) - k_t L(G(z)), k_t's step and M."""
    images = torch.tensor([[0.5, -1.0], [0.25, 2.0]])
    halving = lambda v: v / 2  # noqa: E731 - a "discriminator" whose reconstruction errors are known
    assert began.reconstruction_loss(images, halving).item() == pytest.approx((0.25 + 0.5 + 0.125 + 1.0) / 4)
    loss_real, loss_fake, k_t = torch.tensor(0.3), torch.tensor(0.8), torch.tensor(0.25)
    assert began.discriminator_loss(loss_real, loss_fake, k_t).item() == pytest.approx(0.3 - 0.25 * 0.8)
    # k_t + lambda_k (gamma L(x) - L(G(z))): 0.25 + 0.1 (0.5 * 0.3 - 0.1) = 0.255, and with the fakes
    # reconstructed worse than gamma L(x) it falls: 0.25 + 0.1 (0.15 - 0.8) = 0.185.
    assert began.update_k(k_t, loss_real, torch.tensor(0.1), 0.5, 0.1).item() == pytest.approx(0.255)
    assert began.update_k(k_t, loss_real, loss_fake, 0.5, 0.1).item() == pytest.approx(0.185)
    assert began.convergence_measure(loss_real, loss_fake, 0.5).item() == pytest.approx(0.3 + abs(0.15 - 0.8))


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    args = [*TINY, "--gamma", 0.7, "--lambda_k", 0.5, "--n_iters", 2]  # k_t above 0 after the first step
    return spy_training("began", tmp_path_factory.mktemp("run"), "DCGANGenerator", "DCGANDiscriminator", *args)


def test_each_loss_pulls_the_reconstructions_its_way_in_the_loop(spied):
    """The gradient of each step's loss, as the loop computes it, with respect to D's reconstruction D(v) of its input
    v: sign(D(v) - v) / N in D's step at the reals (reconstruct them well) and in G's step at the fakes (G minimises
    L(G(z))); -k_t sign(D(v) - v) / N in D's step at the fakes (reconstruct them badly, as much as k_t says)."""
    steps = [(call.step, call.kinds) for call in spied.calls]
    assert steps == [("D", ("real",)), ("D", ("fake",)), ("G", ("fake",))] * 2
    k_before = [0.0] + [float(row["k_t"]) for row in read_metrics(spied.run.dir)]
    assert k_before[1] > 0  # the second step weighs the fakes' term in
    for index, call in enumerate(spied.calls):
        (images,), (reconstructions,) = call.inputs, call.outputs
        pull = (reconstructions - images).detach().sign() / images.numel()
        weight = -k_before[index // 3] if call.step == "D" and call.kinds == ("fake",) else 1.0
        torch.testing.assert_close(call.grads[0], weight * pull, rtol=1e-4, atol=1e-9)


def test_k_t_is_clipped_to_the_unit_interval():
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    assert began.update_k(zero, zero, one, 0.5, 1.0) == 0  # fakes reconstructed worse than wanted: k_t would go below 0
    assert began.update_k(one, one, zero, 0.5, 1.0) == 1  # and above 1
    assert began.update_k(zero, one, zero, 0.5, 0.001) == pytest.approx(0.0005)
    assert began.convergence_measure(one, zero, 0.5) == pytest.approx(1.5)


def test_training_follows_the_equations(tmp_path):
    """Each logged step: loss_D = L(x) - k_{t-1} L(G(z_D)), k_t = clip(k_{t-1} + lambda_k (gamma L(x) -
    L(G(z_D))), 0, 1) and M = L(x) + |gamma L(x) - L(G(z_D))|, from the same D step's numbers."""
    gamma, lambda_k = 0.7, 0.5
    run = train_script("began", tmp_path, *TINY, "--gamma", gamma, "--lambda_k", lambda_k, "--n_iters", 8)
    k_before = 0.0
    for row in read_metrics(run.dir):
        loss_D, L_x, L_G_z, k_t, M = (float(row[key]) for key in ("loss_D", "L_x", "L_G_z", "k_t", "M"))
        assert loss_D == pytest.approx(L_x - k_before * L_G_z, rel=1e-4, abs=1e-5)
        assert k_t == pytest.approx(min(max(k_before + lambda_k * (gamma * L_x - L_G_z), 0), 1), rel=1e-4, abs=1e-5)
        assert M == pytest.approx(L_x + abs(gamma * L_x - L_G_z), rel=1e-4)
        k_before = k_t
    assert k_before > 0


def test_k_t_stays_in_unit_interval_while_training(tmp_path):
    run = train_script("began", tmp_path, *TINY, "--lambda_k", 10, "--n_iters", 4)  # a huge lambda_k hits the bounds
    k = [float(row["k_t"]) for row in read_metrics(run.dir)]
    assert all(0.0 <= value <= 1.0 for value in k) and max(k) > 0
    assert torch.load(run.checkpoint_path, weights_only=True)["k_t"].item() == pytest.approx(k[-1], rel=1e-5)


def test_k_t_and_the_lr_schedule_resume_exactly(tmp_path):
    """k_t (a tensor updated in place) and the plateau schedulers' counts are in the checkpoint and restored:
    stopped at step 3, the run halves its lr at step 4 as the straight run does (the paper's nets: their M stalls
    first at step 4)."""
    args = [*TINY, "--lambda_k", 0.5, "--lr_patience", 1, "--generator", "paper", "--discriminator", "paper"]
    straight = train_script("began", tmp_path / "a", *args, "--n_iters", 8)
    first = train_script("began", tmp_path / "b", *args, "--n_iters", 3)
    checkpoint = torch.load(first.checkpoint_path, weights_only=True)
    assert (
        checkpoint["k_t"] > 0
        and checkpoint["scheduler_G"]["num_bad_epochs"] == checkpoint["scheduler_D"]["num_bad_epochs"]
    )
    train_script("began", tmp_path / "c", "--resume", first.dir, "--n_iters", 8)
    rows = read_metrics(straight.dir)
    assert read_metrics(first.dir) == rows
    assert float(rows[2]["lr"]) == 4e-4 > float(rows[3]["lr"])  # G's rate; halved after the stop: counts resumed


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], (2240, 32, 1.0, 0.01, 16, 5e-5, 4e-4, "dcgan", "dcgan", 32, 32)),  # digits: see began.py's docstring
        (["--dataset", "mnist"], (18750, 32, 0.5, 0.001, 64, 1e-4, None, "paper", "paper", 16, 64)),  # the paper's
        (["--dataset", "folder"], (8000, 64, 0.5, 0.001, 64, 1e-4, None, "paper", "paper", 16, 64)),
        (
            ["--gamma", "0.5", "--lambda_k", "0.001", "--img_size", "16", "--n_iters", "9"]
            + ["--lr_G", "1e-4", "--h_dim", "64", "--discriminator", "paper"],
            (9, 16, 0.5, 0.001, 16, 5e-5, 1e-4, "dcgan", "paper", 32, 64),
        ),  # flags win
    ],
)
def test_digits_have_their_own_defaults(argv, expected):
    opt = began.parse_args(argv)
    got = (opt.n_iters, opt.img_size, opt.gamma, opt.lambda_k, opt.batch_size, opt.lr, opt.lr_G, opt.generator)
    assert (*got, opt.discriminator, opt.n_filters, opt.h_dim) == expected


@pytest.mark.parametrize("size", [16, 28, 32, 48, 64, 96])
def test_nets_fit_accepted_sizes(size):
    opt = began.parse_args(["--img_size", str(size)])
    discriminators = began.Discriminator(3, opt.img_size, 8, 2), began.DCGANDiscriminator(3, opt.img_size, 8, 2)
    for generator in began.Generator(8, 3, opt.img_size, 2), began.DCGANGenerator(8, 3, opt.img_size, 2):
        fake = generator(torch.rand(2, 8) * 2 - 1)
        assert fake.shape == (2, 3, size, size)
        assert all(discriminator(fake).shape == fake.shape for discriminator in discriminators)


def test_the_papers_nets_follow_its_architecture():
    """Berthelot et al.'s nets: 3x3 convolutions and ELUs, no normalisation; D's encoder goes down by stride-2
    convolutions widening by n to an h-dim code, G and D's decoder (G's architecture) go up from a linear layer by
    nearest-neighbour upsampling."""
    generator, discriminator = began.Generator(8, 1, 32, 4), began.Discriminator(1, 32, 8, 4)
    layers = {torch.nn.Linear, torch.nn.Conv2d, torch.nn.ELU, torch.nn.Upsample}
    for net, kinds in (generator, layers), (discriminator, layers | {torch.nn.Flatten}):
        assert {type(m) for m in net.modules() if not list(m.children())} == kinds
        assert {m.kernel_size for m in net.modules() if isinstance(m, torch.nn.Conv2d)} == {(3, 3)}
        assert {m.mode for m in net.modules() if isinstance(m, torch.nn.Upsample)} == {"nearest"}
    widths = [m.out_channels for m in discriminator.encoder if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert widths == [8, 12] and discriminator.encoder[-1].out_features == 8  # 32 -> 16 -> 8: n, 2n, 3n wide
    assert [p.shape for p in discriminator.decoder.parameters()] == [p.shape for p in generator.parameters()]


def test_the_digits_dcgan_generator_is_dcgans():
    """--generator dcgan builds dcgan.py's G layer for layer (2n wide at the last hidden layer), initialised as
    DCGAN is: conv weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0."""
    ours, theirs = began.DCGANGenerator(100, 1, 32, 32), dcgan.Generator(100, 1, 32, 64)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    convs = [m.weight for m in ours.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    scales = [m.weight for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(abs(w.std().item() - 0.02) < 0.005 and abs(w.mean().item()) < 0.005 for w in convs)
    assert all(abs(w.mean().item() - 1) < 0.01 for w in scales) and not ours[-2].bias.any()


def test_the_paper_nets_still_train_on_the_digits(tmp_path):
    run = train_script("began", tmp_path, *TINY, "--generator", "paper", "--discriminator", "paper", "--n_iters", 2)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert "fc.weight" in checkpoint["generator"] and "decoder.fc.weight" in checkpoint["discriminator"]


@pytest.mark.parametrize("size", [8, 12, 17, 36, 100])
def test_other_sizes_are_refused(size):
    with pytest.raises(SystemExit):
        began.parse_args(["--img_size", str(size)])


def test_learning_rate_halves_only_when_asked(tmp_path):
    decayed = train_script("began", tmp_path / "a", *TINY, "--lr_patience", 1, "--n_iters", 8)
    lrs = [float(row["lr"]) for row in read_metrics(decayed.dir)]
    assert lrs[0] == 4e-4 and min(lrs) < 4e-4 and lrs == sorted(lrs, reverse=True)  # G's rate on the digits
    constant = train_script("began", tmp_path / "b", *TINY, "--lr_patience", 0, "--n_iters", 8)
    assert {float(row["lr"]) for row in read_metrics(constant.dir)} == {4e-4}


def test_lego_photos(shared_data, tmp_path):
    """Real photos of varied sizes (../shared/data/lego, skipped where absent), colour, at 16 x 16."""
    run = train_script(
        "began", tmp_path, *TINY, "--dataset", "folder", "--data_root", shared_data / "lego", "--n_iters", 2
    )
    assert [int(row["step"]) for row in read_metrics(run.dir)] == [1, 2]
    assert torch.load(run.checkpoint_path, weights_only=True)["args"]["channels"] == 3


def test_a_run_from_before_the_net_flags_resumes_with_the_papers_nets(tmp_path):
    """A checkpoint whose flags lack one (written before it existed) resumes at that flag's plain default: a digits
    run of the paper's nets from before --generator and --discriminator is not rebuilt as the digits' are now."""
    run = train_script("began", tmp_path, *TINY, "--generator", "paper", "--discriminator", "paper", "--n_iters", 2)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    del checkpoint["args"]["generator"], checkpoint["args"]["discriminator"]
    torch.save(checkpoint, run.checkpoint_path)
    resumed = train_script("began", tmp_path, "--resume", run.dir, "--n_iters", 3)
    assert resumed.opt.generator == resumed.opt.discriminator == "paper"
    assert [row["step"] for row in read_metrics(run.dir)] == ["1", "2", "3"]
