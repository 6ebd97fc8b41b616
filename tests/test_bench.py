"""tools/bench.py runs on tiny sizes and writes its tables and JSON. Timings are never asserted: only that every
number is there and positive, and which steps it times and counts."""

import json
import sys

import pytest
import torch._dynamo

import common
import wgan
from conftest import ROOT, write_images

sys.path.insert(0, str(ROOT / "tools"))
import bench

# Tiny nets, two timed steps and a tiny matmul: a run of bench.py that takes seconds.
TINY = [
    "--img_size", "16", "--batch_size", "8", "--steps", "2", "--warmup", "1", "--matmul_size", "64",
    "--script_args", "--latent_dim 8", "--script_args", "dcgan: --ngf 8 --ndf 8",
    "--script_args", "cgan: --ngf 8 --ndf 8", "--script_args", "wgan_gp: --ngf 8 --ndf 8",
    "--script_args", "began: --n_filters 4 --h_dim 8",
]  # fmt: skip
NUMBERS = ("ms_per_step", "images_per_s", "peak_memory_mb", "gflop_per_step", "gflop_per_s", "of_peak")


def test_bench_times_each_script_in_each_precision(tmp_path):
    out = tmp_path / "results" / "bench.json"
    with torch._dynamo.config.patch(disable=True):  # --compile's path runs, without minutes of compiling
        bench.main(["--scripts", "dcgan", "wgan_gp", *TINY, "--json", str(out), "--in_process"])

    results = json.loads(out.read_text())
    assert {"cpu", "cores", "threads", "torch"} <= set(results["machine"])
    assert results["settings"]["img_size"] == 16 and results["settings"]["device"] == "cpu"
    assert results["dtypes"] == dict(float32="float32", amp="bfloat16", amp_compile="bfloat16")
    assert set(results["peak_gflop_per_s"]) == {"float32", "bfloat16"} and min(results["peak_gflop_per_s"].values()) > 0
    rows = results["rows"]
    assert [(row["script"], row["precision"]) for row in rows] == [
        (script, precision) for precision in ("float32", "amp", "amp_compile") for script in ("dcgan", "wgan_gp")
    ]
    for row in rows:
        assert all(row[key] > 0 for key in NUMBERS) and row["timed_steps"] == 2, row
        assert row["real_images_per_step"] == {"dcgan": 8, "wgan_gp": 5 * 8}[row["script"]]  # n_critic batches

    table = out.with_suffix(".md").read_text()
    for line in (
        "Machine: ",
        "amp_compile (--amp --compile): the peak of a bfloat16 matmul, ",
        "| wgan_gp | ",
        "| GFLOP/s | of peak |",
    ):
        assert line in table
    assert table.count("| dcgan | ") == 3


def test_the_flops_are_one_steps_updates():
    """The counted step's sample grid (every step here) is no part of its FLOPs; a D step more is."""
    opt = bench.parse_args(["--scripts", "dcgan", *TINY, "--precisions", "float32"])
    flops = bench.measure("dcgan", "float32", opt, count=True)["flops"]
    opt.extra["dcgan"] += ["--sample_interval", "1"]
    assert bench.measure("dcgan", "float32", opt, count=True)["flops"] == flops > 0
    opt.extra["dcgan"] += ["--n_critic", "2"]
    assert bench.measure("dcgan", "float32", opt, count=True)["flops"] > flops


def test_wgans_boosted_steps_are_neither_counted_nor_timed():
    opt = bench.parse_args(["--scripts", "wgan", "--warmup", "3", "--steps", "480"])
    _, script = bench.script_opt("wgan", opt)
    count, timed = bench.plan(wgan, script, opt)
    assert count == 26 and timed[0] == 30 and 501 not in timed and len(timed) == 480 and timed[-1] == 510
    script.n_critic_boost = 0
    assert bench.plan(wgan, script, opt)[0] == 2


def test_bench_measures_a_script_in_its_own_process():
    opt = bench.parse_args(["--scripts", "began", *TINY, "--precisions", "float32"])
    row = bench.run_child("began", "float32", opt, count=True)
    assert row["ms_per_step"] > 0 and row["peak_memory_mb"] > 0 and row["flops"] > 0, row


def test_bench_reports_a_script_that_cannot_run_and_goes_on(tmp_path):
    folder = write_images(tmp_path / "faces", 16, size=(16, 16))  # no class sub-folders: cgan refuses it
    out = tmp_path / "bench.json"
    data = ["--dataset", "folder", "--data_root", str(folder), "--precisions", "float32"]
    bench.main(["--scripts", "cgan", "began", *TINY, *data, "--json", str(out), "--in_process"])

    rows = {row["script"]: row for row in json.loads(out.read_text())["rows"]}
    assert "labelled data" in rows["cgan"]["error"] and rows["began"]["of_peak"] > 0
    assert "| cgan | not measured: " in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scripts", "vae"], "invalid choice"),
        (["--precisions", "float8"], "invalid choice"),
        (["--script_args", "vae: --h_dim 8"], "not a script"),
        (["--script_args", "--out elsewhere"], "sets --out itself"),
        (["--script_args", "--n_epochs 3"], "sets --n_epochs itself"),  # --n_iters would win over it
        (["--script_args", "dcgan: --n_it 5"], "sets --n_iters itself"),  # an abbreviation of a flag it sets
        (["--script_args=--amp"], "bench.py sets --amp itself (use --precisions)"),
        (["--step", "5"], "unrecognized arguments: --step"),  # no abbreviations of its own flags either
        (["--steps", "0"], "--steps"),
        (["--matmul_size", "0"], "--matmul_size"),
    ],
)
def test_bench_bad_input_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as error:
        bench.parse_args(args)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_bench_defaults_to_the_data_sets_size():
    assert bench.parse_args([]).img_size == 32 and bench.parse_args(["--dataset", "folder"]).img_size == 64


def test_bench_names_the_script_that_refuses_a_flag():
    with pytest.raises(common.UsageError, match="began.py refuses .*--ngf"):
        bench.main(["--scripts", "dcgan", "began", "--script_args", "--ngf 8"])
