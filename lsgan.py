"""LSGAN: least squares generative adversarial networks.

Paper: Mao, Li, Xie, Lau, Wang & Smolley, "Least Squares Generative Adversarial Networks",
ICCV 2017, arXiv:1611.04076.

Objective, with codes a (fake) and b (real) for D and c (the value G wants D to give its fakes):
    min_D  1/2 E_x[(D(x) - b)^2] + 1/2 E_z[(D(G(z)) - a)^2]
    min_G  1/2 E_z[(D(G(z)) - c)^2]                          z ~ N(0, I), D(.) unbounded
--coding 01 uses a = 0, b = c = 1 (the paper's experiments); --coding pearson uses a = -1, b = 1,
c = 0, for which the paper shows that G minimises the Pearson chi-square divergence between
p_data + p_g and 2 p_g. Unlike the sigmoid cross-entropy, the squared error keeps penalising fakes
that D already classifies correctly but that lie far from the real data, so G's gradient does
not vanish there.

Changes from DCGAN: D outputs a raw score (no sigmoid) and both losses are least squares; the
architecture and Adam with lr 2e-4, beta1 0.5 are the paper's choices too.

Run:
    python lsgan.py                                                  # scikit-learn digits, CPU minutes
    python lsgan.py --dataset mnist --data_root data                 # downloads MNIST into data/
    python lsgan.py --dataset folder --data_root faces/ --img_size 64
    python lsgan.py --resume runs/lsgan_digits_20260101-120000      # continue a run
    torchrun --standalone --nproc_per_node=4 lsgan.py               # 4 GPUs of one machine; see the README
"""

import argparse
import os
import time

import torch
import torch.nn as nn
from tqdm import tqdm

import common


def parse_args(argv=None):
    parser = common.ArgumentParser(description="Train an LSGAN (Mao et al. 2017).")
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="training images: digits (bundled with scikit-learn), mnist, fashion, cifar10, anime (<data_root>/anime) or folder (--data_root itself)")
    parser.add_argument("--data_root", default="data", help="where data sets are stored or downloaded; with --dataset folder, the image folder itself (class sub-folders become labels)")
    parser.add_argument("--img_size", type=image_size, help="height and width of the images: 4..7 times a power of two, at least 16 (default: 32, or 64 for anime and folder)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 for grey, 3 for RGB; images are converted (default: 1 for digits, mnist, fashion, else 3)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over the data (default: per data set, 80 for digits)")
    parser.add_argument("--n_iters", type=common.positive_int, help="stop after this many generator steps (default: no limit)")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate of both nets (paper: 0.0002)")
    parser.add_argument("--b1", type=common.adam_beta, default=0.5, help="Adam beta1 (paper: 0.5, for stability)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.999, help="Adam beta2")
    parser.add_argument("--n_critic", type=common.positive_int, default=1, help="discriminator steps per generator step")
    parser.add_argument("--coding", choices=tuple(CODINGS), default="01", help="the codes (a, b, c) of the losses: 01 is (0, 1, 1), pearson is (-1, 1, 0), the Pearson chi-square setting")
    parser.add_argument("--latent_dim", type=common.positive_int, default=100, help="dimension of the noise z (paper: 100)")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="feature maps in G's last hidden layer; doubles per layer towards z")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="feature maps in D's first layer; doubles per layer")
    parser.add_argument("--sample_interval", type=common.positive_int, help="generator steps between sample grids (default: per data set, 200 for digits)")
    parser.add_argument("--amp", action="store_true", help="mixed precision: bfloat16 autocast where the device supports it, else float16 with loss scaling (CUDA GPUs; slower on most CPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA GPUs: faster steps after a compile of a minute or so)")
    parser.add_argument("--nan_policy", choices=("stop", "skip"), default="stop", help=f"on a NaN or infinite loss: stop, keeping the last good checkpoint, or skip that update and go on; {common.MAX_SKIPPED_IN_A_ROW} skipped updates without a finite step in between stop the run")
    parser.add_argument("--checkpoint_interval", type=common.positive_int, default=500, help="generator steps between checkpoints, also written at every epoch end, on Ctrl-C and at the end")
    parser.add_argument("--out", default="runs", help="folder that receives the run folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data order, init, noise)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic cuDNN/cuBLAS kernels for reproducible GPU runs (slower); CPU runs with the same --seed are reproducible anyway")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--sync_bn", action="store_true", help="under torchrun: BatchNorm normalises with the statistics of all processes' batches together (SyncBatchNorm, CUDA GPUs only), as one big batch would; slower")
    parser.add_argument("--n_cpu", type=common.nonnegative_int, default=min(8, os.cpu_count() or 1), help="data-loading worker processes for folders too large to hold in memory")
    parser.add_argument("--resume", help="a run folder (or its checkpoint.pt) to continue from where it stopped")
    common.add_evaluation_args(parser)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def conv_plan(img_size):
    """G grows a base x base map by doubling it n times (D shrinks it back); 4 <= base <= 7."""
    base, doublings = img_size, 0
    while base > 7 and base % 2 == 0:
        base, doublings = base // 2, doublings + 1
    return base, doublings


def image_size(text):
    """argparse type for --img_size: a size the doubling stacks can make (28, 32, 64, 96, 128...)."""
    size = common.positive_int(text)
    base, doublings = conv_plan(size)
    if not (4 <= base <= 7 and doublings >= 2):
        raise argparse.ArgumentTypeError(f"{size} cannot be made by doubling: use 4..7 times a power of two, at least 16 (e.g. 28, 32, 64, 96, 128)")
    return size


class Generator(nn.Module):
    """z -> image: a transposed convolution lifts z to a base x base map, then each stride-2 transposed
    convolution doubles the size and halves the width; BatchNorm + ReLU between, Tanh at the output."""

    def __init__(self, latent_dim, channels, img_size, ngf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        width = ngf * 2 ** (doublings - 1)
        # Convolutions followed by BatchNorm need no bias: BatchNorm's shift replaces it.
        layers = [nn.ConvTranspose2d(latent_dim, width, base, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]  # no BatchNorm at the output
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image -> score: stride-2 convolutions halve the size and double the width, LeakyReLU(0.2),
    BatchNorm on every layer but the first, then a base x base convolution to one number."""

    def __init__(self, channels, img_size, ndf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BatchNorm at the input
        width = ndf
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        # A raw score, no sigmoid: the least-squares loss pulls it towards the codes a, b and c.
        layers += [nn.Conv2d(width, 1, base, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, img):
        return self.net(img).flatten()


def init_weights(module):
    """The paper's initialisation: weights from N(0, 0.02), BatchNorm scales from N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
# --coding -> (a, b, c): D's target for fakes, D's target for reals, G's target for its fakes.
CODINGS = {"01": (0.0, 1.0, 1.0), "pearson": (-1.0, 1.0, 0.0)}


def discriminator_loss(d_real, d_fake, a, b):
    """1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2]."""
    return 0.5 * (d_real - b).pow(2).mean() + 0.5 * (d_fake - a).pow(2).mean()


def generator_loss(d_fake, c):
    """1/2 E[(D(G(z)) - c)^2]."""
    return 0.5 * (d_fake - c).pow(2).mean()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def train(opt):
    common.seed_everything(opt.seed, opt.deterministic)
    device = common.get_device(opt.device)
    # Distributed (torchrun): join the other processes, one per GPU, each with its own seed; a plain run goes on as it was.
    device = common.init_distributed(opt, device)
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    batches = common.Batches(data, opt.batch_size, device, opt.seed, opt.n_cpu)
    evaluator = common.Evaluator(opt, data, device)  # --fid/--fcd nets load now: a missing download fails before training
    run = common.Run(opt, __file__)

    generator = Generator(opt.latent_dim, opt.channels, opt.img_size, opt.ngf).to(device)
    discriminator = Discriminator(opt.channels, opt.img_size, opt.ndf).to(device)
    generator.apply(init_weights)
    discriminator.apply(init_weights)
    # Distributed (torchrun): every process starts from rank 0's weights and steps with the gradients averaged over all.
    generator, discriminator = common.distribute(opt, generator, discriminator)
    if opt.compile:  # in place: the state_dict keys, and so the checkpoints, stay the same
        generator.compile()
        discriminator.compile()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2), fused=device.type == "cuda")
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2), fused=device.type == "cuda")
    a, b, c = CODINGS[opt.coding]
    # --amp: half-precision forward passes; float16 (where bfloat16 is missing) also scales the losses.
    precision = common.Precision(opt.amp, device)
    scaler_D, scaler_G = precision.scaler(), precision.scaler()
    saved = dict(generator=generator, discriminator=discriminator, optimizer_G=optimizer_G, optimizer_D=optimizer_D, scaler_D=scaler_D, scaler_G=scaler_G)

    # The same noise for every sample grid, so the grids show how G(z) evolves for fixed z.
    fixed_z = torch.randn(64, opt.latent_dim, device=device)
    # d_steps runs on across epochs: the D steps of one generator step may straddle an epoch's end.
    step, epoch, batch, d_steps, seconds = 0, 0, 0, 0, 0.0
    if opt.resume:
        checkpoint = run.restore(saved)
        step, epoch, batch, d_steps, seconds = checkpoint["step"], checkpoint["epoch"], checkpoint["batch"], checkpoint["d_steps"], checkpoint["seconds"]
        fixed_z = checkpoint["fixed_z"].to(device)

    def save_samples():
        # Sampled in training mode, with the batch's own BatchNorm statistics, as during training.
        with torch.no_grad():
            run.save_samples(generator(fixed_z), step)

    def save_checkpoint():
        run.save_checkpoint(saved, opt, step=step, epoch=epoch, batch=batch, d_steps=d_steps, fixed_z=fixed_z, seconds=seconds)

    def generate(n, rng):
        """n fakes from noise drawn from `rng`, for --fid/--fcd and --save_fakes: (images, labels or None)."""
        return generator(torch.randn(n, opt.latent_dim, device=device, generator=rng)), None

    if opt.generate:  # --resume RUN --generate N: only write fakes from the checkpoint
        print(f"wrote {opt.generate} fakes into {evaluator.save_fakes(generate, opt.generate, run.dir / 'fakes')}")
        return run

    print(f"{len(data)} {data.name} images at {opt.img_size}x{opt.img_size}x{opt.channels}, {len(batches)} batches per epoch, on {device}; run folder {run.dir}")
    n_iters = opt.n_iters or float("inf")
    start = time.perf_counter() - seconds
    with common.GracefulInterrupt() as interrupt:
        while epoch < opt.n_epochs and step < n_iters and not interrupt.requested:
            progress = tqdm(batches.epoch(epoch, skip=batch), total=len(batches) - batch, desc=f"epoch {epoch + 1}/{opt.n_epochs}", leave=False, dynamic_ncols=True, disable=not common.is_main())
            for real, _ in progress:
                batch += 1
                # ---------------------
                #  Train Discriminator
                # ---------------------
                with precision.autocast():
                    z = torch.randn(real.size(0), opt.latent_dim, device=device)
                    with torch.no_grad():  # to D the fakes are constants: no graph through G is needed
                        fake = generator(z)
                    d_real, d_fake = discriminator(real), discriminator(fake)
                    loss_D = discriminator_loss(d_real, d_fake, a, b)
                optimizer_D.zero_grad(set_to_none=True)
                scaler_D.scale(loss_D).backward()
                if run.accepts(loss_D):  # under --nan_policy skip a NaN/Inf loss changes no weight
                    scaler_D.step(optimizer_D)
                    scaler_D.update()
                d_steps += 1
                if d_steps % opt.n_critic:
                    continue

                # -----------------
                #  Train Generator
                # -----------------
                with precision.autocast():
                    z = torch.randn(real.size(0), opt.latent_dim, device=device)
                    loss_G = generator_loss(discriminator(generator(z)), c)
                optimizer_G.zero_grad(set_to_none=True)
                scaler_G.scale(loss_G).backward()
                if run.accepts(loss_G):
                    scaler_G.step(optimizer_G)
                    scaler_G.update()
                step += 1

                # ---------------------
                #  Log, sample, stop
                # ---------------------
                seconds = time.perf_counter() - start
                values = torch.stack([loss_D, loss_G, d_real.mean(), d_fake.mean()]).tolist()
                metrics = dict(zip(("loss_D", "loss_G", "D_x", "D_G_z"), values))
                run.log(step=step, epoch=epoch + 1, **metrics, seconds=seconds)
                progress.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
                if step % opt.sample_interval == 0:
                    save_samples()
                if opt.fid_interval and step % opt.fid_interval == 0:
                    run.log_eval(step, evaluator.score(generate, step))
                if step % opt.checkpoint_interval == 0:
                    save_checkpoint()
                if step >= n_iters or interrupt.requested:
                    break
            progress.close()
            if batch == len(batches):  # a whole epoch: summarise it and start the next from its first batch
                tqdm.write(f"epoch {epoch + 1}/{opt.n_epochs}  step {step}  {run.epoch_summary()}  {seconds:.0f}s")
                epoch, batch = epoch + 1, 0
            save_checkpoint()

    if step % opt.sample_interval:
        save_samples()
    if interrupt.requested:
        print(f"stopped at step {step}; continue with: {run.resume_command}")
        raise KeyboardInterrupt
    if evaluator:
        run.log_eval(step, evaluator.score(generate, step))
    if opt.save_fakes:
        evaluator.save_fakes(generate, opt.save_fakes, run.dir / "fakes")
    run.finish(step, seconds)
    print(f"done: {step} generator steps in {seconds:.0f}s; samples and checkpoint in {run.dir}")
    return run


if __name__ == "__main__":
    with common.friendly_errors():
        train(parse_args())
