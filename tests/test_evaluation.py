"""Scoring samples: FID through the real pytorch-fid pipeline (Inception at random initialisation,
since its weights cannot be downloaded here), the offline classifier measure, fakes on disk."""

import json
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import common
import dcgan
from conftest import read_metrics, train_script, write_images

TINY = ["--img_size", 16, "--batch_size", 16, "--latent_dim", 8, "--ngf", 8, "--ndf", 8, "--sample_interval", 2]
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A weights file in pytorch-fid's layout with random values: the network is built as usual and
    only the download of the trained weights is replaced."""
    import pytorch_fid.inception as inception

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(torchvision.models.Inception3, "load_state_dict", lambda self, state, *args, **kwargs: None)
        torch.manual_seed(0)
        network = inception.fid_inception_v3()
    path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def scoring_root(tmp_path_factory):
    """A --data_root whose fid_stats cache is shared by the tests, so the classifier trains once."""
    return tmp_path_factory.mktemp("scoring_data")


@pytest.fixture
def small_fid(monkeypatch):
    """The 64-d features of Inception's first block instead of the 2048-d pool: the same pipeline
    and the same properties, without a minute of matrix square roots per distance on 2 CPU cores."""
    monkeypatch.setattr(common, "FID_DIMS", 64)


def digits(n, size=16):
    return common.Batches._to_float(common.load_images("digits", "unused", size, 1).images[:n])


def test_fid_is_zero_for_the_same_images_and_grows_with_noise(inception_weights, small_fid):
    evaluator = common.Evaluator.__new__(common.Evaluator)
    evaluator.inception = common.inception_model(str(inception_weights), CPU)
    real = digits(24)
    real_stats = common.feature_stats(evaluator.inception_features(real))
    torch.manual_seed(0)
    noise = torch.randn_like(real)
    distances = [common.frechet_distance(common.feature_stats(evaluator.inception_features(real + scale * noise)), real_stats) for scale in (0.0, 0.2, 1.0)]
    assert abs(distances[0]) < 1e-3 * distances[1]
    assert 0 < distances[1] < distances[2]


def test_fid_is_logged_and_its_real_statistics_cached(tmp_path, inception_weights, small_fid):
    run = train_script("dcgan", tmp_path / "run", *TINY, "--n_iters", 2, "--fid", "--fid_weights", inception_weights, "--fid_samples", 16, "--data_root", tmp_path)
    rows = read_metrics(run.dir)
    assert rows[0]["fid"] == "" and float(rows[1]["fid"]) > 0
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["step"] == 2 and summary["samples"] == "samples/0000002.png"
    assert summary["fid"] == pytest.approx(float(rows[1]["fid"]), rel=1e-5)

    # The real statistics were cached as pytorch-fid's .npz, and equal a fresh computation.
    (cached,) = (tmp_path / "fid_stats").glob("inception64_digits_16x1_16.npz")
    evaluator = common.Evaluator(run.opt, common.load_images("digits", "unused", 16, 1), CPU)
    fresh = common.feature_stats(torch.cat([evaluator.inception_features(images) for images in evaluator._real_batches(16)]))
    with np.load(cached) as stats:
        assert np.allclose(stats["mu"], fresh[0]) and np.allclose(stats["sigma"], fresh[1])


def test_scores_at_intervals_leave_training_unchanged(tmp_path, scoring_root):
    scored = train_script("dcgan", tmp_path / "scored", *TINY, "--n_iters", 4, "--fcd", "--fid_interval", 2, "--fid_samples", 32, "--data_root", scoring_root)
    plain = train_script("dcgan", tmp_path / "plain", *TINY, "--n_iters", 4)
    rows = read_metrics(scored.dir)
    assert [bool(row["fcd"]) for row in rows] == [False, True, False, True]
    assert float(rows[3]["fcd"]) > 0 and 0 <= float(rows[3]["confident"]) <= 1 and 0 <= int(rows[3]["classes"]) <= 10
    # Scoring draws its noise from a stream of its own: the training is exactly the same without it.
    columns = list(read_metrics(plain.dir)[0])
    assert [{k: row[k] for k in columns} for row in rows] == read_metrics(plain.dir)


def test_classifier_measure_tells_digits_from_noise(scoring_root):
    opt = dcgan.parse_args(["--fcd", "--img_size", "16", "--fid_samples", "256", "--data_root", str(scoring_root)])
    evaluator = common.Evaluator(opt, common.load_images("digits", "unused", 16, 1), CPU)
    saved = torch.load(scoring_root / "fid_stats" / "classifier_digits_16x1.pt", weights_only=False)
    assert saved["accuracy"] > 0.9  # on the tenth of the digits held out from its training

    real = digits(256)
    from_real = evaluator.score(lambda n, rng: (real[torch.randint(256, (n,), generator=rng)], None), step=1)
    from_noise = evaluator.score(lambda n, rng: (torch.rand(n, 1, 16, 16, generator=rng) * 2 - 1, None), step=2)
    assert from_real["fcd"] < from_noise["fcd"] / 10
    assert from_real["confident"] > 0.8 and from_real["classes"] == 10


def test_save_fakes_per_class_and_generate_from_a_checkpoint(tmp_path):
    run = train_script("cgan", tmp_path, *TINY, "--n_iters", 2, "--save_fakes", 25)
    files = sorted((run.dir / "fakes").rglob("*.png"))
    assert len(files) == 25 and {f.parent.name for f in files} == {str(d) for d in range(10)}
    with Image.open(files[0]) as image:
        assert image.size == (16, 16) and image.mode == "L"

    again = train_script("dcgan", tmp_path / "dcgan", *TINY, "--n_iters", 2)
    before = read_metrics(again.dir)
    train_script("dcgan", tmp_path / "unused", "--resume", again.dir, "--generate", 7)
    assert len(list((again.dir / "fakes").glob("*.png"))) == 7
    assert read_metrics(again.dir) == before  # no training happened


def test_missing_inception_weights_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(common.UsageError, match=f"--fid needs pytorch-fid's Inception weights {common.FID_WEIGHTS} and could not download them .*name resolution.*into {tmp_path / 'hub'}.*--fid_weights PATH"):
        common.inception_model(None, CPU)


def test_fcd_on_unlabelled_data_is_refused(tmp_path):
    write_images(tmp_path / "faces", 40)
    with pytest.raises(common.UsageError, match="--fcd needs labelled data"):
        train_script("dcgan", tmp_path, *TINY, "--dataset", "folder", "--data_root", tmp_path / "faces", "--fcd", "--channels", 3)
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("dcgan_*"))


def test_tensorboard_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(common.UsageError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        train_script("dcgan", tmp_path, *TINY, "--n_iters", 1, "--tensorboard")


def test_tensorboard_gets_the_metrics_and_grids(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train_script("dcgan", tmp_path, *TINY, "--n_iters", 2, "--tensorboard")
    events = EventAccumulator(str(run.dir / "tensorboard"))
    events.Reload()
    assert {"train/loss_D", "train/loss_G"} <= set(events.Tags()["scalars"]) and events.Tags()["images"] == ["samples"]
    assert [event.step for event in events.Scalars("train/loss_D")] == [1, 2]


def test_a_finished_run_draws_its_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(common.Run, "plots_at_finish", True)
    run = train_script("dcgan", tmp_path, *TINY, "--n_iters", 4)
    with Image.open(run.dir / "progress.gif") as gif:
        assert gif.n_frames == 2  # the grids of steps 2 and 4
    with Image.open(run.dir / "losses.png") as png:
        assert png.size[0] > 300
