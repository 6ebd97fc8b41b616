"""bench.py runs on tiny sizes and writes its tables and JSON. Timings are never asserted: only that
every number is there and positive."""

import json

import pytest

import bench
import common
from conftest import write_images

# Tiny nets, two measured steps: a run of bench.py that takes seconds.
TINY = [
    "--img_size", "16", "--batch_size", "8", "--steps", "2", "--warmup", "1", "--data_seconds", "0.1",
    "--script_args", "--latent_dim 8", "--script_args", "dcgan: --ngf 8 --ndf 8",
    "--script_args", "cgan: --ngf 8 --ndf 8", "--script_args", "wgan_gp: --ngf 8 --ndf 8",
    "--script_args", "began: --n_filters 4 --h_dim 8",
]  # fmt: skip
TIMES = (
    "loop_s_per_step", "loop_mean_s_per_step", "floor_s_per_step", "overhead", "overhead_mean", "images_per_s",
    "peak_memory_mb", "g_step_s", "g_step_frozen_s", "g_step_ratio",
)  # fmt: skip


def test_bench_times_scripts_reference_and_data_path(tmp_path):
    stream = write_images(tmp_path / "stream", 20, size=(20, 20))
    out = tmp_path / "results" / "bench.json"
    scripts = ["--scripts", "dcgan", "cgan", "wgan_gp"]
    bench.main([*scripts, *TINY, "--stream_root", str(stream), "--json", str(out), "--in_process"])

    results = json.loads(out.read_text())
    assert {"cpu", "cores", "threads", "torch"} <= set(results["machine"])
    assert results["settings"]["img_size"] == 16 and results["settings"]["device"] == "cpu"
    rows = {row["script"]: row for row in results["scripts"]}
    assert list(rows) == ["dcgan", "cgan", "wgan_gp"]
    for row in rows.values():
        assert all(row[key] > 0 for key in TIMES), row
        assert row["measured_steps"] == 2
    assert rows["dcgan"]["real_images_per_step"] == 8
    assert rows["wgan_gp"]["real_images_per_step"] == 5 * 8  # n_critic batches per step
    naive = results["naive"]
    assert all(naive[key] > 0 for key in ("loop_s_per_step", "images_per_s", "peak_memory_mb")), naive
    assert [row["path"].split(",")[0] for row in results["data_path"]] == ["in memory", "streamed"]
    assert all(row["images_per_s"] > 0 for row in results["data_path"])

    table = out.with_suffix(".md").read_text()
    for name in ("| dcgan |", "| wgan_gp |", "| reference DCGAN loop |", "| in memory |", "Machine: "):
        assert name in table
    g_steps = table.split("| G step, D frozen ms |")[1].split("\n\n")[0]  # both ways and the ratio, per script
    assert all(f"| {script} |" in g_steps for script in rows)


def floor_of(name, argv):
    """bench.py's floor for script `name` under bench's command line `argv`, on the CPU."""
    module, script = bench.script_opt(name, bench.parse_args(["--scripts", name, *argv]))
    device = common.get_device("cpu")
    data = common.load_images(script.dataset, script.data_root, script.img_size, script.channels)
    real, labels = bench.first_batch(data, script.batch_size, device)
    return getattr(bench, f"floor_{name}")(module, script, device, data, real, labels, None)


def test_the_g_step_both_ways():
    """The old G step computes D's weight gradients too; through common.frozen it leaves them, and D, alone."""
    floor = floor_of("dcgan", TINY)
    D, inputs = floor.discriminator, floor.noise()

    floor.g_step(inputs, frozen=True)
    assert all(p.grad is None and p.requires_grad for p in D.parameters())
    assert all(p.grad is not None for p in floor.generator.parameters())
    floor.g_step(inputs, frozen=False)
    assert all(p.grad is not None for p in D.parameters())
    floor.step()  # the floor: D's update, then the frozen G step


def test_bench_measures_a_script_in_its_own_process(tmp_path):
    opt = bench.parse_args(["--scripts", "began", *TINY])
    row = bench.run_child("began", opt)
    assert all(row[key] > 0 for key in TIMES), row


def test_bench_reports_a_script_that_cannot_run_and_goes_on(tmp_path):
    folder = write_images(tmp_path / "faces", 16, size=(16, 16))  # no class sub-folders: cgan refuses it
    out = tmp_path / "bench.json"
    data = ["--dataset", "folder", "--data_root", str(folder), "--stream_root", ""]
    bench.main(["--scripts", "cgan", "began", *TINY, *data, "--json", str(out), "--in_process"])

    rows = {row["script"]: row for row in json.loads(out.read_text())["scripts"]}
    assert "labelled data" in rows["cgan"]["error"] and rows["began"]["overhead"] > 0
    assert "| cgan | not measured: " in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scripts", "vae"], "invalid choice"),
        (["--script_args", "vae: --h_dim 8"], "not a script"),
        (["--script_args", "--out elsewhere"], "sets --out itself"),
        (["--script_args", "--n_epochs 3"], "sets --n_epochs itself"),  # --n_iters would win over it
        (["--script_args", "dcgan: --n_it 5"], "sets --n_iters itself"),  # an abbreviation of a flag it sets
        (["--step", "5"], "unrecognized arguments: --step"),  # no abbreviations of its own flags either
        (["--steps", "0"], "--steps"),
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


@pytest.mark.parametrize("flags, expected", [("", "DCGANDiscriminator"), ("--discriminator paper", "Discriminator")])
def test_began_floor_times_the_discriminator_the_script_trains(flags, expected):
    floor = floor_of("began", [*TINY[:-1], f"began: --n_filters 4 --h_dim 8 {flags}"])
    assert type(floor.discriminator).__name__ == expected
