"""cogan.py: which weights the coupled nets share, domain B's variants, grids of pairs."""

import pytest
import torch
from PIL import Image

import cogan
from conftest import train_script, write_images

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
    assert generators.last_a[0].weight is not generators.last_b[0].weight


def test_discriminators_keep_first_layers_and_share_their_last():
    discriminators = cogan.CoupledDiscriminators(1, 16, 8)
    images = torch.randn(4, 1, 16, 16)
    used_a = used_parameters(discriminators, discriminators(images, images)[0].sum())
    used_b = used_parameters(discriminators, discriminators(images, images)[1].sum())
    assert used_a & used_b == ids(discriminators.shared)
    assert used_a - used_b == ids(discriminators.first_a) and used_b - used_a == ids(discriminators.first_b)
    last = [m for m in discriminators.shared if isinstance(m, torch.nn.Conv2d)][-1]
    assert last.weight.shape[0] == 1  # the output layer is among the shared ones


def test_edges_are_bright_on_edges_only():
    square = -torch.ones(1, 1, 9, 9)
    square[..., 3:6, 3:6] = 1
    edge = cogan.edges(square)
    assert edge.min() == -1 and edge.max() == 1
    assert edge[0, 0, 0, 0] == -1 and edge[0, 0, 4, 4] == -1  # flat background, flat inside
    assert edge[0, 0, 3, 3] == 1 and edge[0, 0, 2, 4] == 1


def test_grid_shows_pairs(tmp_path):
    run = train_script("cogan", tmp_path, *TINY, "--domain_b", "edges", "--n_iters", 1)
    assert Image.open(run.dir / "samples" / "0000001.png").size == (2 + 8 * 18, 2 + 8 * 18)  # 32 pairs, 4 per row


def test_folder_domain(tmp_path):
    write_images(tmp_path / "b", 10, mode="L")
    run = train_script("cogan", tmp_path / "runs", *TINY, "--domain_b", "folder", "--data_root_b", tmp_path / "b", "--n_iters", 3)
    assert torch.load(run.checkpoint_path, weights_only=False)["step"] == 3
    with pytest.raises(SystemExit):
        cogan.parse_args(["--domain_b", "folder"])  # the folder is missing
