"""cgan.py: the label reaches both nets, fakes are judged with the labels they were made for and reals with their
own, fake labels as frequent as the data's, grids have one row per class and --label draws one class, each image
depending on its own (z, y) alone, the nets against DCGAN's guidelines. Its losses, DCGAN's on conditioned logits,
are tested by hand in test_dcgan.py; here as the loop uses them."""

import numpy as np
import pytest
import torch
from PIL import Image

import cgan
import common
from conftest import (
    assert_cross_entropy_pulls,
    assert_dcgan_nets,
    read_metrics,
    spy_training,
    train_script,
    write_images,
)

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


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    """Four steps on an imbalanced folder: 24 images of class a, 8 of b, 4 of c and d."""
    root = tmp_path_factory.mktemp("data")
    for start, (name, count) in enumerate({"a": 24, "b": 8, "c": 4, "d": 4}.items()):
        write_images(root / "data" / name, count, size=(16, 16), start=100 * start)
    args = [*TINY, "--batch_size", 16, "--dataset", "folder", "--data_root", root / "data", "--n_iters", 4]
    return spy_training("cgan", root / "runs", "Generator", "Discriminator", *args)


def test_each_loss_pulls_the_logits_its_way_in_the_loop(spied):
    """D's step raises D's logits at the reals and lowers them at the fakes; G's step raises them at its fakes."""
    assert [(call.step, call.kinds) for call in spied.calls] == [
        ("D", ("real",)),
        ("D", ("fake",)),
        ("G", ("fake",)),
    ] * 4
    assert_cross_entropy_pulls(spied.calls)


def test_fakes_are_judged_with_the_labels_they_were_made_for_and_reals_with_their_own(spied):
    for call in spied.calls:
        images, labels = call.inputs
        made_for = spied.fakes[id(images)][1][1] if call.kinds == ("fake",) else spied.reals[id(images)][1]
        assert torch.equal(labels, made_for)


def test_fake_labels_are_as_frequent_as_the_datas(spied):
    """On an imbalanced folder uniform fake labels would let D reject fakes by their label alone: fakes of class a
    are 60% of all, as the data's, not a quarter."""
    drawn = torch.cat([call.inputs[1] for call in spied.calls if call.kinds == ("fake",)])
    assert len(drawn) == 8 * 16 and (drawn == 0).float().mean().item() == pytest.approx(0.6, abs=0.12)
    assert (drawn == 3).any()  # and the rarest class has its share too


def test_nets_follow_the_dcgan_guidelines_and_initialisation(spied):
    assert_dcgan_nets(spied)


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
