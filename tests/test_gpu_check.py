"""tools/gpu_check.py --smoke: the GPU check's every part (bench in three precisions in one run, three anime
trainings with --swd and --save_fakes, the archive of figures) for a few steps on the CPU."""

import json
import runpy
import tarfile

from conftest import ROOT, read_metrics


def test_the_gpu_check_runs_every_part_and_packs_its_figures(tmp_path):
    check = runpy.run_path(str(ROOT / "tools" / "gpu_check.py"))
    failed = check["main"](["--smoke", str(tmp_path)])
    parts = (tmp_path / "parts.txt").read_text().splitlines()
    assert failed == 0, "\n".join(parts + [log.read_text()[-2000:] for log in tmp_path.glob("*.log")])
    names = ["train_dcgan", "train_wgan", "train_wgan_gp", "bench"]
    assert [line.split(":")[0] for line in parts] == names and all(": exit 0 in" in line for line in parts)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    precisions = ("float32", "amp", "amp_compile")
    assert [(row["script"], row["precision"]) for row in rows] == [
        (s, p) for p in precisions for s in ("dcgan", "wgan_gp")
    ]
    assert all(row["of_peak"] > 0 for row in rows)
    runs = sorted((tmp_path / "runs").iterdir())
    assert [run.name.split("_digits")[0] for run in runs] == ["dcgan", "wgan", "wgan_gp"]
    for run in runs:
        (row,) = read_metrics(run, "scores.csv")
        assert row["step"] == "2" and float(row["swd"]) > 0 and len(list((run / "fakes").iterdir())) == 8
    with tarfile.open(tmp_path / "gpu_check.tar.gz") as archive:
        packed = {name.removeprefix("./") for name in archive.getnames()}
    assert {"parts.txt", "bench.json", "bench.md", "train_wgan_gp.log"} <= packed
    assert {f"{run.relative_to(tmp_path)}/{name}" for run in runs for name in ("scores.csv", "metrics.csv")} <= packed
    assert {f"{run.relative_to(tmp_path)}/samples/0000002.png" for run in runs} <= packed
