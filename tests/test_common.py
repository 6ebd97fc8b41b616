"""common.py on data the tests make: folders, image modes, bad files, MNIST files, batching, checkpoints."""

import gzip
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common
import dcgan
import folders
from conftest import train_script, write_images

CPU = torch.device("cpu")
TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8]


def load_folder(path, img_size=8, channels=3):
    return common.load_images("folder", path, img_size, channels)


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------
def test_digits_are_bundled_and_scaled():
    data = common.load_images("digits", "unused", 16, 1)
    assert data.images.shape == (1797, 1, 16, 16) and data.images.dtype == torch.uint8
    assert data.labels.unique().tolist() == list(range(10)) and data.n_classes == 10
    assert data.images.max() >= 250  # the 0..16 scale is mapped onto the full 0..255 range
    assert common.load_images("digits", "unused", 32, 3).images.shape == (1797, 3, 32, 32)


def test_flat_folder_is_one_unlabelled_class(tmp_path):
    write_images(tmp_path / "nested" / "deeper", 3)
    write_images(tmp_path, 2, start=10)
    data = load_folder(tmp_path)
    assert len(data) == 5 and data.labels is None and data.images.shape == (5, 3, 8, 8)


def test_class_subfolders_become_labels(tmp_path):
    write_images(tmp_path / "cats", 2)
    write_images(tmp_path / "dogs" / "puppies", 3, start=5)
    data = load_folder(tmp_path)
    assert data.classes == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1]


def test_modes_are_converted_to_channels(tmp_path):
    size = (20, 10)  # not square: resized on the short side, then center-cropped
    Image.new("L", size, 200).save(tmp_path / "grey.png")
    Image.new("RGBA", size, (255, 0, 0, 0)).save(tmp_path / "transparent.png")  # alpha over white
    Image.new("RGB", size, (0, 0, 255)).convert("P").save(tmp_path / "palette.png")
    Image.new("CMYK", size, (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    rgb = load_folder(tmp_path, img_size=8, channels=3)
    assert rgb.images.shape == (5, 3, 8, 8)
    by_name = dict(zip((p.name for p in rgb.files), rgb.images))
    assert by_name["transparent.png"].min() == 255  # fully transparent red becomes white, not red or black
    assert by_name["grey.png"].unique().tolist() == [200]
    assert by_name["sixteen.png"].min() == 255  # 16-bit white stays white
    assert by_name["palette.png"][2].min() > 200 and by_name["palette.png"][0].max() < 50
    grey = load_folder(tmp_path, img_size=8, channels=1)
    assert grey.images.shape == (5, 1, 8, 8)


def test_corrupt_files_are_skipped_and_counted(tmp_path, capsys):
    write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = load_folder(tmp_path)
    assert len(data) == 3 and len(data.files) == 3
    assert "skipped 2 unreadable image file(s) of 5" in capsys.readouterr().err


def test_corrupt_files_keep_labels_aligned(tmp_path):
    write_images(tmp_path / "a", 2)
    (tmp_path / "a" / "bad.png").write_bytes(b"nope")
    write_images(tmp_path / "b", 2, start=4)
    data = load_folder(tmp_path)
    assert data.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "is not a folder"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is not a folder"),
        (lambda p: p, "no images in"),
        (lambda p: (p / "notes.txt").write_text("x") and p, "no images in"),
        (
            lambda p: (write_images(p / "good", 2), (p / "empty").mkdir()) and p,
            r"empty \(any nesting.*add some or remove it",
        ),
        (lambda p: (p / "bad.png").write_bytes(b"nope") and p, "could be read"),
    ],
    ids=["missing", "file", "empty", "no-images", "empty-class", "all-unreadable"],
)
def test_bad_folders_get_one_line_errors(tmp_path, make, message):
    with pytest.raises((common.UsageError, folders.UsageError), match=message) as error:
        load_folder(make(tmp_path))
    assert "\n" not in str(error.value)


def test_anime_folder_any_nesting(tmp_path):
    write_images(tmp_path / "anime" / "images" / "part1", 3)
    data = common.load_images("anime", tmp_path, 16, 3)
    assert data.images.shape == (3, 3, 16, 16) and data.labels is None


def write_idx(path, array, magic):
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.tobytes())


def test_mnist_files_load_offline(tmp_path):
    """torchvision's MNIST loads files already in <data_root>/MNIST/raw without touching the network."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 5)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), 2049)
    data = common.load_images("mnist", tmp_path, 32, 1)
    assert data.images.shape == (20, 1, 32, 32) and data.labels.tolist() == [i % 10 for i in range(20)]


def test_torchvision_data_offline_is_a_clear_error(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(datasets.CIFAR10, "__init__", offline)
    with pytest.raises(common.UsageError, match=r"could not load or download cifar10 into .*offline"):
        common.load_images("cifar10", tmp_path, 32, 3)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------
def take(batches, n):
    return list(itertools.islice(iter(batches), n))


def test_batches_are_endless_reproducible_and_resumable():
    data = common.load_images("digits", "unused", 8, 1)
    batches = common.Batches(data, 100, CPU, seed=3)
    assert len(batches) == 17  # batches per epoch: the incomplete last one is dropped
    first = take(batches, 40)  # more than two epochs: the stream never ends
    images, labels = first[0]
    assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1 and labels.shape == (100,)
    assert torch.equal(images, take(common.Batches(data, 100, CPU, seed=3), 1)[0][0])  # same seed, same order
    assert not torch.equal(first[0][1], first[17][1])  # the next epoch is shuffled anew
    assert batches.state_dict() == {"taken": 40}
    resumed = common.Batches(data, 100, CPU, seed=3)
    resumed.load_state_dict({"taken": 22})
    assert all(torch.equal(a[1], b[1]) for a, b in zip(take(resumed, 5), first[22:27], strict=True))


def test_streaming_gives_the_same_batches_as_memory(tmp_path, monkeypatch):
    write_images(tmp_path / "a", 6)
    write_images(tmp_path / "b", 6, start=6)
    in_memory = common.Batches(load_folder(tmp_path), 4, CPU, seed=1)
    monkeypatch.setattr(folders, "IN_MEMORY_LIMIT", 0)
    streamed_data = load_folder(tmp_path)
    assert streamed_data.images is None
    streamed = common.Batches(streamed_data, 4, CPU, seed=1, n_workers=0)
    for (x1, y1), (x2, y2) in zip(take(in_memory, 7), take(streamed, 7), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_an_unreadable_streamed_file_is_replaced_with_a_warning(tmp_path, monkeypatch, capsys):
    write_images(tmp_path, 8)
    monkeypatch.setattr(folders, "IN_MEMORY_LIMIT", 0)
    data = load_folder(tmp_path)
    data.files[3].write_bytes(b"broken")
    assert all(images.isfinite().all() for images, _ in take(common.Batches(data, 8, CPU, seed=0), 2))
    assert "skipped" in capsys.readouterr().err


def test_a_decompression_bomb_is_skipped_and_counted(tmp_path, capsys):
    write_images(tmp_path, 2)
    Image.new("L", (20000, 10000)).save(tmp_path / "huge.png")  # 200 megapixels, a few hundred kB as PNG
    data = load_folder(tmp_path)
    assert len(data) == 2 and "skipped 1 unreadable image file(s) of 3" in capsys.readouterr().err


def test_batch_larger_than_data_is_refused(tmp_path):
    with pytest.raises(common.UsageError, match="--batch_size 8 x 1 process.es. is over the 3 images"):
        common.Batches(load_folder(write_images(tmp_path, 3)), 8, CPU, seed=0)


# ----------------------------------------------------------------------------------------------
# Command line, device, checkpoints
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "0"], "--batch_size: 0 is out of range"),
        (["--batch_size", "-3"], "--batch_size: -3 is out of range"),
        (["--n_epochs", "x"], "--n_epochs: invalid int value: 'x'"),
        (["--lr", "0"], "--lr: 0 is out of range"),
        (["--lr", "nan"], "--lr: nan is out of range"),
        (["--b1", "1"], "--b1: 1 is out of range"),
        (["--img_size", "30"], "--img_size: 30 cannot be made by doubling"),
        (["--img_size", "8"], "--img_size: 8 cannot be made"),
        (["--channels", "2"], "--channels: invalid choice"),
        (["--dataset", "imagenet"], "--dataset: invalid choice: 'imagenet'"),
        (["--n_critic", "0"], "--n_critic: 0 is out of range"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        dcgan.parse_args(args)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and err.count("\n") == 1


def test_dataset_defaults_and_explicit_flags():
    opt = dcgan.parse_args(["--dataset", "anime"])
    assert (opt.img_size, opt.channels) == (64, 3)
    opt = dcgan.parse_args(["--dataset", "anime", "--img_size", "96", "--channels", "1"])
    assert (opt.img_size, opt.channels) == (96, 1)
    assert dcgan.parse_args([]).img_size == 32


def test_unavailable_device_is_a_clear_error():
    with pytest.raises(common.UsageError, match=r"--device cuda:7: PyTorch sees \d+ cuda device"):
        common.get_device("cuda:7")
    assert common.get_device("cpu") == CPU


def make_run(out, *args):
    opt = dcgan.parse_args(["--out", out, "--img_size", 16, *args])
    opt.n_iters = 10
    run = common.Run(opt, "dcgan.py", None, CPU)
    run.restore({})  # writes config.json, as the scripts' call does
    return run, opt


def test_checkpoint_replaces_whole_keeps_previous_and_restores(tmp_path):
    run, opt = make_run(tmp_path)
    net = torch.nn.Linear(2, 2)
    common.save_checkpoint(run, 1, {"generator": net})
    common.save_checkpoint(run, 2, {"generator": net})
    assert torch.load(run.dir / "checkpoint.prev.pt", weights_only=True)["step"] == 1
    assert not list(run.dir.glob("*.tmp"))
    run.held.close()
    opt.resume, fresh = str(run.dir), torch.nn.Linear(2, 2)
    assert common.Run(opt, "dcgan.py", None, CPU).restore({"generator": fresh}) == 2
    assert torch.equal(fresh.weight, net.weight)


def test_a_kill_between_the_renames_of_a_save_still_resumes(tmp_path, monkeypatch):
    run, opt = make_run(tmp_path)
    common.save_checkpoint(run, 1, {})

    def killed(*args):
        raise KeyboardInterrupt  # the second Ctrl-C, after the hard link and before the new file's rename

    monkeypatch.setattr(common.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        common.save_checkpoint(run, 2, {})
    assert common.load_checkpoint(run.dir)["step"] == 1
    (run.dir / "checkpoint.pt").unlink()  # the old save's gap: only checkpoint.prev.pt left
    assert common.load_checkpoint(run.dir)["step"] == 1


def test_corrupt_checkpoint_points_to_previous(tmp_path):
    run, _ = make_run(tmp_path)
    common.save_checkpoint(run, 1, {})
    common.save_checkpoint(run, 2, {})
    run.checkpoint_path.write_bytes(run.checkpoint_path.read_bytes()[:100])
    with pytest.raises(common.UsageError, match="not a readable checkpoint.*checkpoint.prev.pt may still be good"):
        common.load_checkpoint(run.dir)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save(
        {"format": common.CHECKPOINT_FORMAT, "step": 1, "args": {}, "payload": RunsCode(marker)}, tmp_path / "evil.pt"
    )
    with pytest.raises(SystemExit) as exit:
        dcgan.parse_args(["--resume", tmp_path / "evil.pt"])
    assert exit.value.code == 2 and "holds Python objects, never unpickled" in capsys.readouterr().err
    assert not marker.exists()


def test_a_checkpoint_from_before_is_one_line(tmp_path):
    torch.save({"step": 3, "args": {}, "generator": {}}, tmp_path / "old.pt")
    with pytest.raises(common.UsageError, match="not written by this version of the scripts"):
        common.load_checkpoint(tmp_path / "old.pt")


def test_resume_mismatch_is_refused(tmp_path):
    run, opt = make_run(tmp_path)
    common.save_checkpoint(run, 1, {})
    run.held.close()
    config = (run.dir / "config.json").read_text()
    opt.resume, opt.img_size = str(run.dir), 32
    with pytest.raises(common.UsageError, match="the checkpoint has img_size=16"):
        common.Run(opt, "dcgan.py", None, CPU)
    opt.img_size = 16
    with pytest.raises(common.UsageError, match="written by dcgan.py, not wgan.py"):
        common.Run(opt, "wgan.py", None, CPU)
    assert (run.dir / "config.json").read_text() == config  # a refused resume writes nothing


def test_resume_of_a_non_checkpoint_exits_2(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(SystemExit) as exit:
        dcgan.parse_args(["--resume", str(tmp_path / "notes.pt")])
    assert exit.value.code == 2 and "is not a readable checkpoint" in capsys.readouterr().err


def test_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    run = train_script("dcgan", tmp_path, *TINY, "--n_iters", 3)
    lines = (run.dir / "metrics.csv").read_text().splitlines()
    with open(run.dir / "metrics.csv", "a") as f:
        f.write(lines[-1].replace("3,", "4,", 1) + "\n")  # written after the checkpoint, by a run killed then
    (run.dir / "scores.csv").write_text("step,fcd,seconds\n3,1.5,0.1\n4,1.2,0.2\n")
    train_script("dcgan", tmp_path, "--resume", run.dir, "--n_iters", 3)  # at its last step: trains nothing
    assert (run.dir / "metrics.csv").read_text().splitlines() == lines
    assert (run.dir / "scores.csv").read_text() == "step,fcd,seconds\n3,1.5,0.1\n"


def test_two_runs_started_at_once_get_two_folders(tmp_path):
    assert common.new_folder(tmp_path, "dcgan_digits") != common.new_folder(tmp_path, "dcgan_digits")


def test_a_second_training_of_a_live_run_is_refused(tmp_path):
    run, opt = make_run(tmp_path)
    common.save_checkpoint(run, 1, {})
    opt.resume = str(run.dir)
    with pytest.raises(common.UsageError, match="is being trained by another process"):
        common.Run(opt, "dcgan.py", None, CPU)
    run.held.close()  # the first run ends (or is killed: the kernel drops its lock)
    common.Run(opt, "dcgan.py", None, CPU).held.close()


def test_a_full_disk_while_writing_metrics_is_one_line(tmp_path, monkeypatch):
    real_open = open

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.csv") and "a" in mode:
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(common.UsageError, match=r"could not write .*metrics.csv \(No space left on device\): free"):
        train_script("dcgan", tmp_path, *TINY, "--n_iters", 2)


def test_unwritable_out_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(common.UsageError, match="cannot write the run folder"):
        make_run(blocker)


def test_a_script_can_adjust_its_dataset_defaults():
    parser = common.ArgumentParser(dataset_defaults={"digits": {"n_iters": 90}})
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--n_iters", type=int)
    parser.add_argument("--n_epochs", type=int)
    parser.add_argument("--img_size", type=int)
    common.add_run_args(parser)
    assert parser.parse_args([]).n_iters == 90 and parser.parse_args([]).img_size == 32
    assert parser.parse_args(["--dataset", "mnist"]).img_size == common.DATASETS["mnist"]["img_size"]
    assert parser.parse_args(["--n_iters", "3"]).n_iters == 3
    assert parser.parse_args(["--n_epochs", "2"]).n_iters is None  # the script converts the passes into steps
    assert parser.parse_args(["--n_epochs", "2", "--n_iters", "5"]).n_iters == 5  # --n_iters wins


def test_n_epochs_converts_to_generator_steps(tmp_path):
    run = train_script("dcgan", tmp_path, *TINY, "--batch_size", 600, "--n_epochs", 2)
    assert run.step == 2 * (1797 // 600)


def test_big_folders_decode_in_workers(tmp_path, monkeypatch):
    """Past 2,000 files the decoding runs in worker processes; an unreadable file is still skipped."""
    write_images(tmp_path, 2100, size=(4, 4))
    (tmp_path / "bad.png").write_bytes(b"nope")
    data = load_folder(tmp_path, img_size=4)
    assert data.images.shape == (2100, 3, 4, 4) and len(data.files) == 2100
