"""Bad input on the command line or in the data: exit code 2 and one line naming the problem and
the fix, never a traceback. Runs the same path as `python <script>.py ARGS`, in-process for speed."""

import importlib

import pytest

import common
from conftest import write_images

TINY = ["--img_size", "16", "--batch_size", "4", "--latent_dim", "4", "--n_iters", "1"]


def run_cli(script, args, out):
    """Parse and train as the script's __main__ block does; returns (exit code, stderr lines)."""
    module = importlib.import_module(script)
    try:
        common.main(module.train, lambda: module.parse_args([*map(str, args), "--out", str(out)]))
    except SystemExit as exit:
        return exit.code
    return 0


def not_a_checkpoint(path):
    (path / "notes.pt").write_text("hello")
    return path / "notes.pt"


def truncated_png(path):
    (path / "faces").mkdir()
    (path / "faces" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    return path / "faces"


def zero_byte_images(path):
    (path / "faces").mkdir()
    for i in range(3):
        (path / "faces" / f"{i}.jpg").write_bytes(b"")
    return path / "faces"


def only_text_files(path):
    (path / "docs").mkdir()
    (path / "docs" / "readme.txt").write_text("no images here")
    return path / "docs"


def one_empty_class(path):
    write_images(path / "classes" / "cats", 4)
    (path / "classes" / "dogs").mkdir()
    return path / "classes"


def a_file(path):
    (path / "file.png").write_bytes(b"x")
    return path / "file.png"


def flat_folder(path):
    return write_images(path / "flat", 6)


# (script, args built from a tmp_path, words the message must contain)
CASES = {
    "zero batch size": ("dcgan", lambda p: ["--batch_size", 0], "--batch_size"),
    "negative batch size": ("lsgan", lambda p: ["--batch_size", -8], "--batch_size"),
    "batch size not a number": ("dcgan", lambda p: ["--batch_size", "lots"], "--batch_size"),
    "zero epochs": ("dcgan", lambda p: ["--n_epochs", 0], "--n_epochs"),
    "negative epochs": ("cgan", lambda p: ["--n_epochs", -1], "--n_epochs"),
    "zero learning rate": ("dcgan", lambda p: ["--lr", 0], "--lr"),
    "negative learning rate": ("wgan_gp", lambda p: ["--lr", -1e-4], "--lr"),
    "infinite learning rate": ("dcgan", lambda p: ["--lr", "inf"], "--lr"),
    "beta1 of one": ("lsgan", lambda p: ["--b1", 1], "--b1"),
    "zero n_critic": ("wgan", lambda p: ["--n_critic", 0], "--n_critic"),
    "negative clip value": ("wgan", lambda p: ["--clip_value", -0.01], "--clip_value"),
    "negative lambda_gp": ("wgan_gp", lambda p: ["--lambda_gp", -10], "--lambda_gp"),
    "zero gamma": ("began", lambda p: ["--gamma", 0], "--gamma"),
    "img_size the network cannot make": ("dcgan", lambda p: ["--img_size", 30], "--img_size"),
    "img_size too small": ("wgan_gp", lambda p: ["--img_size", 8], "--img_size"),
    "two channels": ("dcgan", lambda p: ["--channels", 2], "--channels"),
    "unknown data set": ("dcgan", lambda p: ["--dataset", "imagenet"], "--dataset"),
    "zero latent_dim": ("cogan", lambda p: ["--latent_dim", 0], "--latent_dim"),
    "unknown flag": ("dcgan", lambda p: ["--epochs", 3], "--epochs"),
    "missing data folder": (
        "dcgan",
        lambda p: ["--dataset", "folder", "--data_root", p / "nowhere"],
        "is not a folder",
    ),
    "data_root is a file": ("dcgan", lambda p: ["--dataset", "folder", "--data_root", a_file(p)], "is not a folder"),
    "empty data folder": ("dcgan", lambda p: ["--dataset", "folder", "--data_root", p], "no images in"),
    "folder of text files": (
        "dcgan",
        lambda p: ["--dataset", "folder", "--data_root", only_text_files(p)],
        "no images in",
    ),
    "truncated image only": (
        "dcgan",
        lambda p: ["--dataset", "folder", "--data_root", truncated_png(p)],
        "could be read",
    ),
    "zero-byte images only": (
        "dcgan",
        lambda p: ["--dataset", "folder", "--data_root", zero_byte_images(p)],
        "could be read",
    ),
    "one empty class folder": (
        "dcgan",
        lambda p: ["--dataset", "folder", "--data_root", one_empty_class(p)],
        "no images in",
    ),
    "cgan on unlabelled data": (
        "cgan",
        lambda p: ["--dataset", "folder", "--data_root", flat_folder(p)],
        "cgan needs labelled data",
    ),
    "batch larger than the data": (
        "dcgan",
        lambda p: ["--dataset", "folder", "--data_root", flat_folder(p), "--batch_size", 64],
        "--batch_size 64 x 1 process(es) is over",
    ),
    "resume path missing": ("dcgan", lambda p: ["--resume", p / "no_run"], "no such checkpoint"),
    "resume of a non-checkpoint": ("dcgan", lambda p: ["--resume", not_a_checkpoint(p)], "not a readable checkpoint"),
    "cgan label without resume": ("cgan", lambda p: ["--label", 3], "--label"),
    "cogan folder domain without its folder": ("cogan", lambda p: ["--domain_b", "folder"], "--data_root_b"),
    "generate without a checkpoint": ("dcgan", lambda p: ["--generate", 10], "--generate"),
    "fid_interval without a score": ("lsgan", lambda p: ["--fid_interval", 100], "--fid_interval"),
    "zero fid_samples": ("dcgan", lambda p: ["--fid", "--fid_samples", 0], "--fid_samples"),
    "missing Inception weights file": (
        "dcgan",
        lambda p: ["--fid", "--fid_weights", p / "inception.pth"],
        "--fid_weights",
    ),
    "Inception weights that are not": (
        "dcgan",
        lambda p: ["--fid", "--fid_weights", not_a_checkpoint(p)],
        "is not pytorch-fid's Inception weights",
    ),
    "fcd on unlabelled data": (
        "wgan",
        lambda p: ["--dataset", "folder", "--data_root", flat_folder(p), "--fcd"],
        "--fcd needs labelled data",
    ),
    "unavailable device": ("dcgan", lambda p: ["--device", "cuda:7"], "--device"),
    "not a device": ("dcgan", lambda p: ["--device", "gpu"], "--device"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    script, make_args, words = CASES[case]
    code = run_cli(script, [*TINY, *make_args(tmp_path)], tmp_path / "runs")
    err = capsys.readouterr().err.strip()
    assert code == 2, (case, err)
    assert err.count("\n") == 0 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_resume_of_another_script_or_size_is_refused(tmp_path, capsys):
    assert run_cli("dcgan", [*TINY, "--ngf", 4, "--ndf", 4], tmp_path / "runs") == 0
    run_dir = next((tmp_path / "runs").iterdir())
    capsys.readouterr()
    assert run_cli("wgan", ["--resume", run_dir], tmp_path / "runs") == 2
    assert "written by dcgan.py, not wgan.py" in capsys.readouterr().err
    assert run_cli("dcgan", ["--resume", run_dir, "--img_size", 32], tmp_path / "runs") == 2
    assert "the checkpoint has img_size=16" in capsys.readouterr().err
    config = (run_dir / "config.json").read_text()
    assert run_cli("dcgan", ["--resume", run_dir, "--ngf", 8], tmp_path / "runs") == 2  # nets of another width
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint's generator does not fit" in err and "size mismatch" in err, err
    assert (run_dir / "config.json").read_text() == config  # the refused resume left the run as it was
