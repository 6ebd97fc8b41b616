"""Scoring samples: FID through the real pytorch-fid pipeline (Inception at random initialisation,
since its weights cannot be downloaded here), the offline classifier measure, fakes on disk, and that
nothing scoring reads (caches, Inception weights) is ever unpickled."""

import functools
import hashlib
import json
import os
import shlex
import sys
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image

import common
import dcgan
import plots
import scoring
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


@pytest.fixture
def stand_in(inception_weights, monkeypatch):
    """The stand-in weights, with their SHA-256 pinned in place of the real file's."""
    monkeypatch.setattr(scoring, "FID_SHA256", hashlib.sha256(inception_weights.read_bytes()).hexdigest())
    return inception_weights


@pytest.fixture(scope="session")
def scoring_root(tmp_path_factory):
    """A --data_root whose fid_stats cache is shared by the tests, so the classifier trains once."""
    return tmp_path_factory.mktemp("scoring_data")


@pytest.fixture
def small_fid(monkeypatch):
    """The 64-d features of Inception's first block instead of the 2048-d pool: the same pipeline
    and the same properties, without a minute of matrix square roots per distance on 2 CPU cores."""
    monkeypatch.setattr(scoring, "FID_DIMS", 64)


class Exploit:
    """Pickled, it runs a shell command when unpickled: what weights_only=True must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def digits(n, size=16):
    return common.load_images("digits", "unused", size, 1).images[:n].float().div(127.5).sub(1)


def scorer(*args, root):
    opt = dcgan.parse_args([*map(str, TINY), "--data_root", str(root), *map(str, args)])
    data = common.load_images("digits", "unused", 16, 1)
    return scoring.Scorer(opt, data, CPU, functools.partial(common.Batches, data, opt.batch_size, CPU, 0, shard=False))


def test_fid_is_zero_for_the_same_images_and_grows_with_noise(stand_in, small_fid):
    measure = scoring.Scorer.__new__(scoring.Scorer)
    measure.inception = scoring.inception(str(stand_in), CPU)
    real = digits(24)
    real_stats = scoring.statistics(measure.inception_features(real))
    torch.manual_seed(0)
    noise = torch.randn_like(real)
    distances = [
        scoring.frechet_distance(scoring.statistics(measure.inception_features(real + scale * noise)), real_stats)
        for scale in (0.0, 0.2, 1.0)
    ]
    assert abs(distances[0]) < 1e-3 * distances[1]
    assert 0 < distances[1] < distances[2]


def test_fid_is_logged_and_its_real_statistics_cached(tmp_path, stand_in, small_fid):
    args = ["--n_iters", 2, "--fid", "--fid_weights", stand_in, "--fid_samples", 16, "--data_root", tmp_path]
    run = train_script("dcgan", tmp_path / "run", *TINY, *args)
    (row,) = read_metrics(run.dir, "scores.csv")
    assert list(row) == ["step", "fid"] and row["step"] == "2" and float(row["fid"]) > 0
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["step"] == 2 and summary["samples"] == "samples/0000002.png"
    assert summary["fid"] == pytest.approx(float(row["fid"]), rel=1e-5)

    # The real statistics were cached as tensors, and equal a fresh computation.
    cached = torch.load(tmp_path / "fid_stats" / "inception64_digits_16x1_16.pt", weights_only=True)
    fresh = scoring.statistics(run.scorer._real(run.scorer.inception_features))
    assert all(torch.allclose(a, b) for a, b in zip(cached, fresh))


def test_scores_at_intervals_leave_training_unchanged(tmp_path, scoring_root):
    args = ["--n_iters", 4, "--fcd", "--fid_interval", 2, "--fid_samples", 32, "--data_root", scoring_root]
    scored = train_script("dcgan", tmp_path / "scored", *TINY, *args)
    plain = train_script("dcgan", tmp_path / "plain", *TINY, "--n_iters", 4)
    rows = read_metrics(scored.dir, "scores.csv")
    counts = [f"class_{digit}" for digit in range(10)]
    assert [row["step"] for row in rows] == ["2", "4"]
    assert list(rows[0]) == ["step", "fcd", "confident", "classes", "balance", *counts]
    assert float(rows[1]["fcd"]) > 0 and 0 <= float(rows[1]["confident"]) <= 1 and 0 <= int(rows[1]["classes"]) <= 10
    assert sum(int(rows[1][count]) for count in counts) == round(float(rows[1]["confident"]) * 32)
    # Scoring draws its noise from a stream of its own: the training is exactly the same without it.
    assert read_metrics(scored.dir) == read_metrics(plain.dir)


def test_a_finished_run_resumed_as_it_is_reads_its_last_scores_back(tmp_path, scoring_root):
    args = ["--n_iters", 2, "--fcd", "--fid_samples", 32, "--data_root", scoring_root]
    run = train_script("dcgan", tmp_path / "run", *TINY, *args)
    rows = read_metrics(run.dir, "scores.csv")
    again = train_script("dcgan", tmp_path / "unused", "--resume", run.dir, *args)  # tools/compare.py's reuse
    assert read_metrics(run.dir, "scores.csv") == rows and again.scorer.scored_at == 2  # one row, not scored twice
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["fcd"] == pytest.approx(float(rows[0]["fcd"]), rel=1e-5)
    assert summary["balance"] == pytest.approx(float(rows[0]["balance"]), rel=1e-5)
    assert [summary[f"class_{d}"] for d in range(10)] == [int(rows[0][f"class_{d}"]) for d in range(10)]
    assert summary["classes"] == int(rows[0]["classes"])


def test_classifier_measure_tells_digits_from_noise(scoring_root):
    measure = scorer("--fcd", "--fid_samples", 256, root=scoring_root)
    saved = torch.load(scoring_root / "fid_stats" / "classifier_digits_16x1.pt", weights_only=True)
    assert saved["accuracy"] > 0.9  # on the tenth of the digits held out from its training

    real = digits(256)
    from_real = measure.measure(
        torch.nn.Identity(), lambda net, n, rng: (real[torch.randint(256, (n,), generator=rng)], None)
    )
    from_noise = measure.measure(
        torch.nn.Identity(), lambda net, n, rng: (torch.rand(n, 1, 16, 16, generator=rng) * 2 - 1, None)
    )
    assert from_real["fcd"] < from_noise["fcd"] / 10
    assert from_real["confident"] > 0.8 and from_real["classes"] == 10


def test_balance_is_k_times_the_rarest_classs_share_of_the_confident_fakes(scoring_root):
    """Real digits as fakes, 20 of each class; then the 7s at a third of their share (6, the 8s over-drawn); then only
    3s. balance = K x (the rarest class's count) / (the confident fakes), and the counts per class are written too."""
    data = common.load_images("digits", "unused", 16, 1)
    images = data.images.float().div(127.5).sub(1)
    by_class = [images[data.labels == digit] for digit in range(10)]
    measure = scorer("--fcd", "--fid_samples", 200, root=scoring_root)

    def scored(fakes):
        batches = iter(fakes.split(16))  # Scorer.fakes asks for --batch_size fakes at a time, in order
        scores = measure.measure(torch.nn.Identity(), lambda net, n, rng: (next(batches), None))
        return scores, [scores[f"class_{digit}"] for digit in range(10)]

    even, counts = scored(torch.cat([digits[:20] for digits in by_class]))
    assert sum(counts) == round(even["confident"] * 200) and min(counts) >= 15
    assert even["balance"] == pytest.approx(10 * min(counts) / sum(counts)) and even["balance"] > 0.75
    shares = dict.fromkeys(range(10), 20) | {7: 6, 8: 34}
    fewer_sevens, counts = scored(torch.cat([by_class[digit][: shares[digit]] for digit in range(10)]))
    assert counts[7] <= 7 and counts[8] >= 30 and fewer_sevens["balance"] < 0.4
    threes, counts = scored(by_class[3].repeat(2, 1, 1, 1)[:200])
    assert threes["balance"] == 0 and counts[3] >= 0.9 * sum(counts)


def test_class_columns_are_named_by_the_classes_where_they_make_plain_names():
    measure = scoring.Scorer.__new__(scoring.Scorer)
    measure.data = common.ImageData("folder", 16, 1, classes=["red", "dark-blue", "x.y"])
    assert measure.class_columns() == ["class_red", "class_dark-blue", "class_x.y"]
    measure.data = common.ImageData("mnist", 16, 1, classes=["0 - zero", "1 - one"])  # torchvision's MNIST names
    assert measure.class_columns() == ["class_0", "class_1"]


def test_save_fakes_per_class_and_generate_from_a_checkpoint(tmp_path, monkeypatch, scoring_root):
    args = ["--n_iters", 2, "--save_fakes", 5, "--fcd", "--fid_samples", 16, "--data_root", scoring_root]
    run = train_script("dcgan", tmp_path, *TINY, *args)
    files = sorted((run.dir / "fakes").glob("*.png"))
    assert len(files) == 5
    with Image.open(files[0]) as image:
        assert image.size == (16, 16) and image.mode == "L"

    before = read_metrics(run.dir)
    monkeypatch.delattr(scoring.Scorer, "_classifier")  # --generate writes fakes: it builds nothing to score
    train_script("dcgan", tmp_path / "unused", "--resume", run.dir, "--generate", 7)
    assert len(list((run.dir / "fakes").glob("*.png"))) == 7
    assert read_metrics(run.dir) == before  # no training happened

    def labelled(net, n, rng):  # as cgan's fakes: with their classes
        return torch.rand(n, 1, 16, 16, generator=rng) * 2 - 1, torch.arange(n) % 10

    run.scorer.write_fakes(run, torch.nn.Identity(), labelled, 25)
    files = [path for path in (run.dir / "fakes").rglob("*.png") if path.parent.name != "fakes"]
    assert len(files) == 25 and {path.parent.name for path in files} == {str(d) for d in range(10)}


def test_missing_inception_weights_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        scoring.UsageError, match=f"Inception weights {scoring.FID_WEIGHTS} and could not download"
    ) as error:
        scoring.inception(None, CPU)
    assert "name resolution" in str(error.value) and "\n" not in str(error.value)
    assert f"put {scoring.FID_WEIGHTS_URL} into {tmp_path / 'hub' / 'checkpoints'}, or pass --fid_weights" in str(
        error.value
    )


@pytest.mark.parametrize("where", ["--fid_weights", "torch.hub's cache"])
def test_wrong_inception_weights_are_one_line_and_never_unpickled(tmp_path, monkeypatch, capsys, stand_in, where):
    """A file of another SHA-256 is refused before it is read: its pickle, which would run code, never is."""
    torch.save({"weight": Exploit(marker := tmp_path / "ran")}, evil := tmp_path / "evil.pth")
    args = ["--n_iters", 1, "--fid", "--out", tmp_path / "runs"]
    if where == "--fid_weights":
        args += ["--fid_weights", evil]
    else:
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        evil = evil.rename(tmp_path / "hub" / "checkpoints" / scoring.FID_WEIGHTS)
    monkeypatch.setattr(sys, "argv", ["dcgan.py"])
    with pytest.raises(SystemExit) as exit:
        common.main(dcgan.train, lambda: dcgan.parse_args([*TINY, *args]))
    assert exit.value.code == 2 and not marker.exists()
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{evil} is not pytorch-fid's Inception weights (SHA-256" in line and scoring.FID_SHA256[:16] in line
    assert ("pass --fid_weights a copy of" if where == "--fid_weights" else "delete it to download it again") in line


def test_inception_weights_of_the_pinned_digest_are_still_read_as_weights_only(tmp_path, monkeypatch):
    torch.save({"weight": Exploit(marker := tmp_path / "ran")}, evil := tmp_path / "evil.pth")
    monkeypatch.setattr(scoring, "FID_SHA256", hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(scoring.UsageError, match="does not hold Inception weights .it holds Python objects"):
        scoring.inception(str(evil), CPU)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["classifier", "inception"])
def test_a_cache_that_would_run_code_is_recomputed_with_one_warning(
    tmp_path, monkeypatch, capsys, stand_in, small_fid, kind
):
    monkeypatch.setattr(scoring.train_classifier, "__defaults__", (20, 64))  # a classifier, not a good one
    args = ["--fcd"] if kind == "classifier" else ["--fid", "--fid_weights", stand_in]
    good = scorer(*args, "--fid_samples", 16, root=tmp_path)
    (path,) = (tmp_path / "fid_stats").glob(f"{kind}*.pt")
    torch.save({"classifier": Exploit(marker := tmp_path / "ran")}, path)
    capsys.readouterr()

    again = scorer(*args, "--fid_samples", 16, root=tmp_path)
    assert not marker.exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: recomputing {path}: it holds Python objects, never unpickled here"]
    torch.load(path, weights_only=True)  # replaced by a good one
    if kind == "classifier":
        assert all(
            torch.equal(a, b)
            for a, b in zip(good.classifier.state_dict().values(), again.classifier.state_dict().values())
        )
    else:
        assert all(torch.equal(a, b) for a, b in zip(good.fid_stats, again.fid_stats))


def test_fcd_on_unlabelled_data_is_refused(tmp_path):
    write_images(tmp_path / "faces", 40)
    args = ["--dataset", "folder", "--data_root", tmp_path / "faces", "--fcd", "--channels", 3]
    with pytest.raises(scoring.UsageError, match="--fcd needs labelled data") as error:
        train_script("dcgan", tmp_path, *TINY, *args)
    assert "\n" not in str(error.value)
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


@pytest.mark.plots
def test_a_finished_run_draws_its_plots(tmp_path, scoring_root):
    args = ["--n_iters", 4, "--fcd", "--fid_interval", 2, "--fid_samples", 32, "--data_root", scoring_root]
    run = train_script("dcgan", tmp_path, *TINY, *args)
    with Image.open(run.dir / "progress.gif") as gif:
        assert gif.n_frames == 2  # the grids of steps 2 and 4
    with Image.open(run.dir / "losses.png") as png:
        assert png.size[0] > 300
    titles = [title for title, _, _ in plots.loss_panels(plots.metrics_series(run.dir))]
    balance = "class balance: K x the rarest class's share of the fakes (1: even; 0: one missing)"
    assert titles == ["losses", "mean discriminator output", "FCD (classifier features; lower is better)", balance]
