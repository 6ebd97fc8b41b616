"""cgan.py: the label reaches both nets, grids have one row per class and --label draws one class, each image
depending on its own (z, y) alone. Its losses, DCGAN's on conditioned logits, are tested in test_dcgan.py."""

import numpy as np
import pytest
import torch
from PIL import Image

import cgan
import common
from conftest import read_metrics, train_script, write_images

TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--sample_interval", 2]


def test_label_changes_both_nets():
    torch.manual_seed(0)
    generator, discriminator = cgan.Generator(8, 10, 1, 16, 8).eval(), cgan.Discriminator(10, 1, 16, 8).eval()
    z = torch.randn(4, 8)
    threes, sevens = torch.full((4,), 3), torch.full((4,), 7)
    with torch.no_grad():
        fake = generator(z, threes)
        assert fake.shape == (4, 1, 16, 16)
        assert not torch.allclose(fake, generator(z, sevens))  # same z, another y: another image
        assert torch.equal(fake, generator(z, threes))
        assert discriminator(fake, threes).shape == (4,)
        assert not torch.allclose(discriminator(fake, threes), discriminator(fake, sevens))


def test_discriminator_learns_real_from_fake(tmp_path):
    """A few dozen steps: D rates the real digits above the fakes (real and fake swapped anywhere fail)."""
    run = train_script("cgan", tmp_path, *TINY, "--n_iters", 30, "--sample_interval", 30)
    rows = read_metrics(run.dir)[-10:]
    assert sum(float(r["D_x"]) - float(r["D_G_z"]) for r in rows) / len(rows) > 0.03  # ~0.1-0.2; swapped: < -0.15


def tile(png, row, column, size=16):
    """The tile at (row, column) of a grid PNG (2 pixels of padding), as an array."""
    x, y = 2 + column * (size + 2), 2 + row * (size + 2)
    return np.asarray(Image.open(png))[y : y + size, x : x + size]


def test_grid_has_one_row_per_class_and_label_draws_one_class(tmp_path):
    run = train_script("cgan", tmp_path, *TINY, "--n_iters", 2)
    grid = run.dir / "samples" / "0000002.png"
    assert Image.open(grid).size == (2 + 8 * 18, 2 + 10 * 18)  # 8 noise vectors x 10 digits

    before = run.checkpoint_path.read_bytes()
    train_script("cgan", tmp_path, "--resume", run.dir, "--label", 7)
    sevens = run.dir / "samples" / "label7_0000002.png"
    assert Image.open(sevens).size == (2 + 8 * 18, 2 + 8 * 18)
    assert run.checkpoint_path.read_bytes() == before  # drawing does not train
    for column in range(8):  # the same (z, 7): the same picture, whatever else is in the batch
        assert np.array_equal(tile(sevens, 0, column), tile(grid, 7, column))

    with pytest.raises(common.UsageError, match="10 classes"):
        train_script("cgan", tmp_path, "--resume", run.dir, "--label", 10)
    with pytest.raises(SystemExit):
        cgan.parse_args(["--label", "7"])  # nothing to draw from without --resume


def test_label_grid_and_class_grid_draw_the_same_images(tmp_path, monkeypatch):
    """Issue 16: in training mode BatchNorm normalised each image with its batch's statistics, so the
    image of (z, y) depended on which other labels were drawn with it. Both grids now use evaluation mode."""
    grids, save_grid = {}, common.Run.save_grid
    monkeypatch.setattr(
        common.Run, "save_grid", lambda run, images, name: save_grid(run, grids.setdefault(name, images), name)
    )
    run = train_script("cgan", tmp_path, *TINY, "--n_iters", 3, "--sample_interval", 3)
    for label in (0, 7):
        train_script("cgan", tmp_path, "--resume", run.dir, "--label", label)
        torch.testing.assert_close(
            grids[f"label{label}_0000003.png"][:8], grids["0000003.png"][8 * label : 8 * label + 8]
        )
    assert not torch.allclose(grids["label0_0000003.png"][:8], grids["label7_0000003.png"][:8])


def test_folder_classes_are_labels(tmp_path):
    for name in ("red", "blue", "green"):
        write_images(tmp_path / "data" / name, 4, start=len(name))
    args = ["--dataset", "folder", "--data_root", tmp_path / "data", "--n_iters", 1]
    run = train_script("cgan", tmp_path / "runs", *TINY, *args)
    width, height = Image.open(run.dir / "samples" / "0000001.png").size
    assert height == 2 + 3 * 18  # one row per class folder


def test_unlabelled_folder_is_refused(tmp_path):
    write_images(tmp_path / "flat", 8)
    with pytest.raises(common.UsageError, match="no class sub-folders.*labelled data"):
        train_script("cgan", tmp_path / "runs", *TINY, "--dataset", "folder", "--data_root", tmp_path / "flat")


def test_lego_themes_are_classes(shared_data, tmp_path):
    """Real photos of varied sizes in class folders (../shared/data/lego, skipped where absent)."""
    args = ["--dataset", "folder", "--data_root", shared_data / "lego", "--n_iters", 2]
    run = train_script("cgan", tmp_path, *TINY, *args)
    assert len((run.dir / "metrics.csv").read_text().splitlines()) == 3
    assert len(list((run.dir / "samples").iterdir())) == 1
