"""--swd: the Laplacian pyramid, the neighbourhoods it samples, and the sliced Wasserstein distance that
tells real images from other real ones less than from blurred or noised ones."""

import pytest
import torch
import torch.nn.functional as F

import common
import scoring
from conftest import read_metrics, train_script

TINY = ["--img_size", 16, "--batch_size", 16, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--n_iters", 2]


def swd(a, b):
    """The score as Scorer computes it, between two sets of images of one size."""
    directions = torch.randn(a.size(1) * scoring.SWD_NHOOD**2, scoring.SWD_DIRECTIONS)
    directions /= directions.norm(dim=0)
    real, fake = (scoring.neighbourhoods(images, torch.Generator().manual_seed(0)) for images in (a, b))
    projections = [scoring.sorted_projections(descriptors, directions) for descriptors in (real, fake)]
    return (projections[0] - projections[1]).abs().mean().item() * 1e3


def test_the_pyramid_halves_down_to_16_and_a_flat_image_has_no_detail():
    images = torch.rand(2, 3, 64, 64)
    assert [level.shape[-1] for level in scoring.laplacian_pyramid(images)] == [64, 32, 16]
    assert [level.shape[-1] for level in scoring.laplacian_pyramid(images[..., :28, :28])] == [28]
    *details, low_pass = scoring.laplacian_pyramid(torch.full((1, 1, 64, 64), 0.3))
    assert all(level.abs().max() < 1e-6 for level in details) and torch.allclose(low_pass, torch.tensor(0.3))
    # A detail level is what the coarser level does not hold: the same image shifted by a constant has
    # the same details.
    shifted = scoring.laplacian_pyramid(images + 0.5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(scoring.laplacian_pyramid(images)[:-1], shifted))


def test_neighbourhoods_are_the_7x7_pixels_around_random_centres():
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    image = torch.stack([rows * 100 + cols, -(rows * 100 + cols)])[None]  # two channels: each pixel says where
    descriptors = scoring.neighbourhoods(image, torch.Generator().manual_seed(0))
    assert descriptors.shape == (scoring.SWD_PER_IMAGE, 1, 2 * 49)
    patches = descriptors.view(-1, 2, 7, 7)
    offsets = torch.arange(7.0)
    assert (patches[:, 0] - patches[:, :1, :1, 0] == offsets[:, None] * 100 + offsets).all()
    assert torch.equal(patches[:, 1], -patches[:, 0])
    assert len({tuple(p[0, :1, :1].flatten().tolist()) for p in patches}) > 1  # centres differ


def test_real_against_real_is_smaller_than_against_blurred_or_noised():
    images = common.load_images("digits", "unused", 16, 1).images.float().div(127.5).sub(1)
    torch.manual_seed(0)
    first, second = images[:800], images[800:1600]
    blurred = F.interpolate(F.avg_pool2d(second, 2), scale_factor=2, mode="bilinear")
    noised = second + 0.2 * torch.randn_like(second)
    real, blur, noise = swd(first, second), swd(first, blurred), swd(first, noised)
    assert swd(first, first) == 0 and 0 < real < 0.75 * blur and real < 0.75 * noise


def test_swd_is_written_to_scores_csv_and_too_few_images_is_refused_with_the_run_kept(tmp_path):
    run = train_script("dcgan", tmp_path, *TINY, "--swd", "--fid_samples", 1024)
    (row,) = read_metrics(run.dir, "scores.csv")
    assert list(row) == ["step", "swd"] and row["step"] == "2" and float(row["swd"]) > 0
    checkpoint = (run.dir / "checkpoint.pt").read_bytes()
    with pytest.raises(scoring.UsageError, match=r"--swd compares 1000 real images or more .* here it would have 512"):
        train_script("dcgan", tmp_path, "--resume", run.dir, "--n_iters", 3, "--swd", "--fid_samples", 512)
    assert (run.dir / "checkpoint.pt").read_bytes() == checkpoint and read_metrics(run.dir, "scores.csv") == [row]
