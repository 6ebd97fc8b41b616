"""What an --swd figure means on a data set: the distance of real images to other real ones (the floor a perfect
generator would reach), and to the same others blurred or noised, computed as the scripts' --swd computes it.

    python tools/swd_reference.py --dataset folder --data_root faces/ --img_size 64
"""

import argparse
import sys
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402 - the scripts' folder is put on the path first
import scoring  # noqa: E402


def swd(real, other):
    """--swd between two sets of images of one size, with the scorer's directions and neighbourhood seeds."""
    shape = (real.size(1) * scoring.SWD_NHOOD**2, scoring.SWD_DIRECTIONS)
    directions = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    directions = directions / directions.norm(dim=0)
    sides = []
    for images, seed in ((real, 0), (other, 1)):
        rng = torch.Generator().manual_seed(seed)
        patches = torch.cat([scoring.neighbourhoods(batch, rng) for batch in images.split(256)])
        sides.append(scoring.sorted_projections(patches, directions))
    return (sides[0] - sides[1]).abs().mean((1, 2)).mean().item() * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=common.DATASETS, default="folder")
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--img_size", type=int, default=64)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3)
    parser.add_argument("--n", type=int, default=9984, help="images a side (the scripts' at --fid_samples 10000)")
    opt = parser.parse_args(argv)
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    if len(data) < 2 * opt.n:
        parser.error(f"{len(data)} images are fewer than two sides of --n {opt.n}: pass a smaller --n")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    real, other = (data.images[order[i * opt.n : (i + 1) * opt.n]].float().div(127.5).sub(1) for i in (0, 1))
    torch.manual_seed(0)
    changes = {
        "other real images": other,
        "the others blurred (Gaussian, sigma 0.5 px)": TF.gaussian_blur(other, [5, 5], [0.5, 0.5]),
        "the others blurred (Gaussian, sigma 1 px)": TF.gaussian_blur(other, [5, 5], [1.0, 1.0]),
        "the others noised (Gaussian, sigma 0.05)": other + 0.05 * torch.randn_like(other),
        "the others noised (Gaussian, sigma 0.2)": other + 0.2 * torch.randn_like(other),
        "uniform noise": torch.rand_like(other) * 2 - 1,
    }
    print(f"| {opt.n:,} real images of {data.name} at {opt.img_size}x{opt.img_size} against | SWD x 1e3 |")
    print("| --- | ---: |")
    for name, images in changes.items():
        print(f"| {name} | {swd(real, images.clamp(-1, 1)):.1f} |", flush=True)


if __name__ == "__main__":
    main()
