"""cogan.py: which weights the coupled nets share, the losses by hand and as the loop uses them, each domain's images
judged by its own discriminator, domain B drawn from the images domain A never sees, domain B's variants, grids of
pairs, the coupled nets against DCGAN's guidelines."""

import math

import pytest
import torch
from PIL import Image

import cogan
import common
from conftest import (
    assert_cross_entropy_pulls,
    assert_dcgan_guidelines,
    assert_dcgan_init,
    log_sigmoid,
    read_metrics,
    spy_training,
    train_script,
    write_images,
)

TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--sample_interval", 2]


def used_parameters(module, loss):
    """The parameter tensors that `loss` depends on (those that receive a gradient)."""
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {id(p) for p in module.parameters() if p.grad is not None}


def ids(*modules):
    return {id(p) for m in modules for p in m.parameters()}


def test_generators_share_first_layers_and_keep_their_last():
    generators = cogan.CoupledGenerators(8, 1, 16, 8)
    z = torch.randn(4, 8)
    used_a = used_parameters(generators, generators(z)[0].sum())
    used_b = used_parameters(generators, generators(z)[1].sum())
    assert used_a & used_b == ids(generators.shared)  # the same tensors serve both domains
    assert used_a - used_b == ids(generators.last_a) and used_b - used_a == ids(generators.last_b)
    assert generators.last_a.weight is not generators.last_b.weight
    assert all(image.abs().max() <= 1 for image in generators(z))  # Tanh on each domain's output


def test_discriminators_keep_first_layers_and_share_their_last():
    discriminators = cogan.CoupledDiscriminators(1, 16, 8)
    images = torch.randn(4, 1, 16, 16)
    used_a = used_parameters(discriminators, discriminators(images, images)[0].sum())
    used_b = used_parameters(discriminators, discriminators(images, images)[1].sum())
    assert used_a & used_b == ids(discriminators.shared)
    assert used_a - used_b == ids(discriminators.first_a) and used_b - used_a == ids(discriminators.first_b)
    last = [m for m in discriminators.shared if isinstance(m, torch.nn.Conv2d)][-1]
    assert last.weight.shape[0] == 1  # the output layer is among the shared ones


def test_losses_by_hand():
    """On fixed logits of both domains: D's loss takes real as 1 and fake as 0 (the mean of the two GANs'
    losses), G's is the non-saturating -log D(G(z))."""
    real_a, real_b, fake_a, fake_b = [2.0, -1.0], [0.5, 3.0], [-3.0, 1.5], [-0.5, -2.0]

    def d_loss(real, fake):  # one GAN's -log D(x) - log(1 - D(G(z))), with log(1 - s(f)) = log s(-f)
        return -sum(map(log_sigmoid, real)) / len(real) - sum(log_sigmoid(-f) for f in fake) / len(fake)

    real, fake = torch.tensor(real_a + real_b), torch.tensor(fake_a + fake_b)
    expected = (d_loss(real_a, fake_a) + d_loss(real_b, fake_b)) / 2
    assert cogan.discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert cogan.generator_loss(fake).item() == pytest.approx(-sum(map(log_sigmoid, fake_a + fake_b)) / 4, rel=1e-6)
    logits = torch.tensor([-10.0], requires_grad=True)  # a rejected fake: the non-saturating gradient stays ~ -1
    cogan.generator_loss(logits).backward()
    assert logits.grad.item() == pytest.approx(-1 / (1 + math.exp(-10)), rel=1e-4)


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    args = [*TINY, "--n_iters", 1]
    return spy_training("cogan", tmp_path_factory.mktemp("run"), "CoupledGenerators", "CoupledDiscriminators", *args)


def test_each_loss_pulls_the_logits_its_way_in_the_loop(spied):
    """D's step raises both domains' logits at the reals and lowers them at the fakes; G's step raises them at its
    fakes (a mean over both domains' logits)."""
    steps = [(call.step, call.kinds) for call in spied.calls]
    assert steps == [("D", ("real", "real")), ("D", ("fake", "fake")), ("G", ("fake", "fake"))]
    assert_cross_entropy_pulls(spied.calls)


def test_each_domains_images_are_judged_by_its_own_discriminator(spied):
    """D1 gets G1's fakes and domain A's reals, D2 G2's fakes of the same z and the negatives of the other stream's."""
    for call in spied.calls:
        image_a, image_b = call.inputs
        if call.kinds == ("fake", "fake"):
            (_, made_from, domain_a), (_, made_b_from, domain_b) = spied.fakes[id(image_a)], spied.fakes[id(image_b)]
            assert (domain_a, domain_b) == (0, 1) and made_from is made_b_from
        else:
            assert id(image_a) in spied.reals
            assert any(torch.equal(-image_b, images) for images, _ in spied.reals.values())


def test_coupled_nets_follow_the_dcgan_guidelines_and_initialisation(spied):
    """Each domain's G and D is DCGAN's (G's Tanh is applied in forward, after the domain's own last layer)."""
    generators, discriminators = spied.first["generator"], spied.first["discriminator"]
    for last, first in (generators.last_a, discriminators.first_a), (generators.last_b, discriminators.first_b):
        assert_dcgan_guidelines([*generators.shared, last, torch.nn.Tanh()], [first, *discriminators.shared])
    assert_dcgan_init(generators)
    assert_dcgan_init(discriminators)
    assert any((logits < 0).any() for call in spied.calls for logits in call.outputs)  # logits, not probabilities


def test_discriminator_learns_real_from_fake(tmp_path):
    """A few dozen steps: D rates the real images above the fakes (real and fake swapped anywhere fail)."""
    run = train_script("cogan", tmp_path, *TINY, "--n_iters", 30, "--sample_interval", 30)
    rows = read_metrics(run.dir)[-10:]
    assert sum(float(r["D_x"]) - float(r["D_G_z"]) for r in rows) / len(rows) > 0.03  # ~0.1-0.2; swapped: < -0.15


def test_edges_are_the_dilation_minus_the_image():
    square = -torch.ones(1, 1, 9, 9)
    square[..., 3:6, 3:6] = 1
    edge = cogan.edges(square)
    assert edge.min() == -1 and edge.max() == 1
    assert edge[0, 0, 0, 0] == -1 and edge[0, 0, 4, 4] == -1 and edge[0, 0, 3, 3] == -1  # background, the square
    assert edge[0, 0, 2, 4] == 1 and edge[0, 0, 2, 2] == 1 and edge[0, 0, 6, 6] == 1  # the ring just outside it
    assert (edge == 1).sum() == 5 * 5 - 3 * 3


def test_halves_are_disjoint_and_cover_the_data():
    data = common.load_images("digits", "data", 16, 1)
    a, b = cogan.halves(data, seed=0)
    assert len(a) + len(b) == len(data) and abs(len(a) - len(b)) <= 1
    as_set = lambda images: {tuple(image.flatten().tolist()) for image in images}  # noqa: E731
    assert as_set(a.images).isdisjoint(as_set(b.images)) and as_set(a.images) | as_set(b.images) == as_set(data.images)
    assert torch.equal(cogan.halves(data, seed=0)[0].images, a.images)  # seeded
    assert not torch.equal(cogan.halves(data, seed=1)[0].images, a.images)


def test_domains_draw_from_disjoint_images(tmp_path, monkeypatch):
    """Issue 16: domain B was the negative of the same images as domain A. Now each real image D sees
    comes from one half of the data set for A and from the other for B, as in the paper."""
    write_images(tmp_path / "data", 16, size=(16, 16), mode="L")
    images = common.load_images("folder", tmp_path / "data", 16, 1).images.float().div(127.5).sub(1).flatten(1)
    seen, forward = {"a": set(), "b": set()}, cogan.CoupledDiscriminators.forward

    def recording(self, img_a, img_b):
        for domain, batch in ("a", img_a), ("b", -img_b):  # domain B: the negatives
            matches = (batch.detach().flatten(1)[:, None] == images[None]).all(2).nonzero()[:, 1]
            seen[domain] |= set(matches.tolist())  # fakes match no real image
        return forward(self, img_a, img_b)

    monkeypatch.setattr(cogan.CoupledDiscriminators, "forward", recording)
    args = ["--dataset", "folder", "--data_root", tmp_path / "data", "--channels", 1, "--batch_size", 4]
    train_script("cogan", tmp_path / "runs", *TINY, *args, "--n_iters", 4)
    assert seen["a"] and seen["b"] and seen["a"].isdisjoint(seen["b"])
    assert len(seen["a"]) == len(seen["b"]) == 8  # 4 steps of 4: each half of the 16 images twice over


def test_grid_shows_pairs(tmp_path):
    run = train_script("cogan", tmp_path, *TINY, "--domain_b", "edges", "--n_iters", 1)
    assert Image.open(run.dir / "samples" / "0000001.png").size == (2 + 8 * 18, 2 + 8 * 18)  # 32 pairs, 4 per row


def test_folder_domain(tmp_path):
    write_images(tmp_path / "b", 10, mode="L")
    args = ["--domain_b", "folder", "--data_root_b", tmp_path / "b", "--n_iters", 3]
    run = train_script("cogan", tmp_path / "runs", *TINY, *args)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert checkpoint["step"] == 3 and checkpoint["batches_b"] == {"taken": 3}  # B's stream resumes where it was
    assert checkpoint["batches"] == {"taken": 3}
    with pytest.raises(SystemExit):
        cogan.parse_args(["--domain_b", "folder"])  # the folder is missing
