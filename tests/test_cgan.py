"""cgan.py: the label reaches both nets, grids have one row per class, --label draws one class."""

import pytest
import torch
from PIL import Image

import cgan
import common
from conftest import train_script, write_images

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


def test_grid_has_one_row_per_class_and_label_draws_one_class(tmp_path):
    run = train_script("cgan", tmp_path, *TINY, "--n_iters", 2)
    width, height = Image.open(run.dir / "samples" / "0000002.png").size
    assert (width, height) == (2 + 8 * 18, 2 + 10 * 18)  # 8 noise vectors x 10 digits

    before = run.checkpoint_path.read_bytes()
    train_script("cgan", tmp_path, "--resume", run.dir, "--label", 7)
    assert Image.open(run.dir / "samples" / "label7_0000002.png").size == (2 + 8 * 18, 2 + 8 * 18)
    assert run.checkpoint_path.read_bytes() == before  # drawing does not train

    with pytest.raises(common.UsageError, match="10 classes"):
        train_script("cgan", tmp_path, "--resume", run.dir, "--label", 10)
    with pytest.raises(SystemExit):
        cgan.parse_args(["--label", "7"])  # nothing to draw from without --resume


def test_folder_classes_are_labels(tmp_path):
    for name in ("red", "blue", "green"):
        write_images(tmp_path / "data" / name, 4, start=len(name))
    run = train_script("cgan", tmp_path / "runs", *TINY, "--dataset", "folder", "--data_root", tmp_path / "data", "--n_iters", 1)
    width, height = Image.open(run.dir / "samples" / "0000001.png").size
    assert height == 2 + 3 * 18  # one row per class folder


def test_unlabelled_folder_is_refused(tmp_path):
    write_images(tmp_path / "flat", 8)
    with pytest.raises(common.UsageError, match="no class sub-folders.*labelled data"):
        train_script("cgan", tmp_path / "runs", *TINY, "--dataset", "folder", "--data_root", tmp_path / "flat")


def test_lego_themes_are_classes(shared_data, tmp_path):
    """Real photos of varied sizes in class folders (../shared/data/lego, skipped where absent)."""
    run = train_script("cgan", tmp_path, "--dataset", "folder", "--data_root", shared_data / "lego", "--img_size", 16,
                       "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--n_iters", 2)
    assert len(run.metrics_path.read_text().splitlines()) == 3
    assert len(list((run.dir / "samples").iterdir())) == 1
