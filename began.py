"""BEGAN: boundary equilibrium generative adversarial networks.

Paper: Berthelot, Schumm & Metz, "BEGAN: Boundary Equilibrium Generative Adversarial Networks",
2017, arXiv:1703.10717.

Objective: D is an auto-encoder and L(v) = mean |v - D(v)| its pixel-wise L1 reconstruction loss.
    L_D = L(x) - k_t L(G(z))
    L_G = L(G(z))
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)      z ~ U[-1, 1]^64, k_0 = 0
k_t keeps E[L(G(z))] = gamma E[L(x)]: the lower gamma, the more D favours reconstructing real
images, and the less diverse but sharper the samples. Convergence is measured by
    M = L(x) + |gamma L(x) - L(G(z))|

The scikit-learn digits get their own defaults: 16 x 16, gamma 1.0 and lambda_k 0.01. gamma 0.5 asks
for fakes that D reconstructs with half the error of real images. Faces can meet that by losing
detail and still be faces; on the digits G meets it with one smooth stroke (a "1"), and k_t, the
term that pushes fakes apart, stays near 0. With gamma 1.0 the fakes must be as hard to
reconstruct as real digits, and lambda_k 0.01 lets k_t reach about 0.15 before G has settled. At
32 x 32 even these settings collapsed onto a "1"; 16 x 16 loses nothing of the 8 x 8 pictures.

Changes from dcgan.py: the paper's nets instead of DCGAN's: G and D's decoder share an architecture
(a fully connected layer to an 8 x 8 map, then per scale two 3x3 convolutions + ELU and a nearest
upsampling) and D's encoder mirrors it (stride-2 convolutions, widths n, 2n, 3n...), with no
BatchNorm and an embedding of --h_dim numbers. The losses above replace the cross-entropy; Adam
with lr 1e-4, halved for both nets whenever M has not reached a new low for --lr_patience steps.

Run:
    python began.py                                                  # scikit-learn digits, CPU minutes
    python began.py --dataset mnist --data_root data                 # downloads MNIST into data/
    python began.py --dataset folder --data_root faces/ --img_size 64
    python began.py --resume runs/began_digits_20260101-120000      # continue a run
    torchrun --standalone --nproc_per_node=4 began.py               # 4 GPUs of one machine; see the README
"""

import argparse
import os
import time

import torch
import torch.nn as nn
from tqdm import tqdm

import common


def parse_args(argv=None):
    # At the paper's settings G collapses on the digits; the docstring says why these help.
    parser = common.ArgumentParser(description="Train a BEGAN (Berthelot et al. 2017).", dataset_defaults={"digits": dict(img_size=16, gamma=1.0, lambda_k=0.01)})
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="training images: digits (bundled with scikit-learn), mnist, fashion, cifar10, anime (<data_root>/anime) or folder (--data_root itself)")
    parser.add_argument("--data_root", default="data", help="where data sets are stored or downloaded; with --dataset folder, the image folder itself (class sub-folders become labels)")
    parser.add_argument("--img_size", type=image_size, help="height and width of the images: 4..8 times a power of two, at least 16, e.g. 16, 28, 32, 48, 64, 96, 128 (default: 16 for digits, 32 for mnist, fashion, cifar10, 64 for anime and folder)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 for grey, 3 for RGB; images are converted (default: 1 for digits, mnist, fashion, else 3)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over the data (default: per data set, 80 for digits)")
    parser.add_argument("--n_iters", type=common.positive_int, help="stop after this many generator steps (default: no limit)")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=1e-4, help="initial Adam learning rate of both nets (paper: 0.0001)")
    parser.add_argument("--lr_patience", type=common.nonnegative_int, default=1000, help="halve both learning rates when M has not reached a new low for this many generator steps; 0 never decays")
    parser.add_argument("--b1", type=common.adam_beta, default=0.5, help="Adam beta1 (the paper gives none; 0.5 as in DCGAN)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.999, help="Adam beta2")
    parser.add_argument("--n_critic", type=common.positive_int, default=1, help="discriminator steps per generator step")
    parser.add_argument("--latent_dim", type=common.positive_int, default=64, help="dimension of the noise z (paper: 64)")
    parser.add_argument("--h_dim", type=common.positive_int, default=64, help="size of D's embedding, the auto-encoder's bottleneck (paper: 64)")
    parser.add_argument("--n_filters", type=common.positive_int, default=16, help="n, the width of every decoder convolution; D's encoder widens n, 2n, 3n... per scale (default 16, small enough for CPU minutes on digits; the paper's faces want 64 to 128)")
    parser.add_argument("--gamma", type=common.positive_float, default=0.5, help="diversity ratio E[L(G(z))] / E[L(x)] that k_t maintains (default: the paper's 0.5; 1.0 for digits)")
    parser.add_argument("--lambda_k", type=common.positive_float, default=0.001, help="learning rate of the control variable k_t (default: the paper's 0.001; 0.01 for digits)")
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
    """The nets work at scales base, 2 base, ..., img_size: the paper's 8 x 8 bottom map for
    32, 64, 128..., and 4 <= base <= 8 for other sizes; returns (base, number of doublings)."""
    base, doublings = img_size, 0
    while base > 8 and base % 2 == 0:
        base, doublings = base // 2, doublings + 1
    return base, doublings


def image_size(text):
    """argparse type for --img_size: a size the doubling stacks can make (16, 28, 32, 64, 96, 128...)."""
    size = common.positive_int(text)
    base, doublings = conv_plan(size)
    if not (4 <= base <= 8 and size >= 16):
        raise argparse.ArgumentTypeError(f"{size} cannot be made by doubling: use 4..8 times a power of two, at least 16 (e.g. 16, 28, 32, 48, 64, 96, 128)")
    return size


def conv_elu(in_width, out_width, stride=1):
    return [nn.Conv2d(in_width, out_width, 3, stride, 1), nn.ELU(inplace=True)]


class Generator(nn.Module):
    """z (or D's embedding h) -> image, the paper's decoder: a fully connected layer to a base x base
    map of n channels, then per scale two 3x3 convolutions + ELU, nearest-neighbour upsampling
    between scales, and a 3x3 convolution to the image. No BatchNorm and no output nonlinearity."""

    def __init__(self, in_dim, channels, img_size, n_filters):
        super().__init__()
        self.base, doublings = conv_plan(img_size)
        self.fc = nn.Linear(in_dim, n_filters * self.base * self.base)
        layers = []
        for scale in range(doublings + 1):
            if scale:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += conv_elu(n_filters, n_filters) + conv_elu(n_filters, n_filters)
        layers.append(nn.Conv2d(n_filters, channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.fc(z).view(z.size(0), -1, self.base, self.base))


class Discriminator(nn.Module):
    """image -> its reconstruction, through an embedding of h_dim numbers. The encoder mirrors the
    decoder: per scale two 3x3 convolutions + ELU, a stride-2 convolution between scales that widens
    the maps by n (n, 2n, 3n...), and a fully connected layer to h. The decoder has G's architecture,
    with its own weights."""

    def __init__(self, channels, img_size, h_dim, n_filters):
        super().__init__()
        base, doublings = conv_plan(img_size)
        layers = conv_elu(channels, n_filters)
        for scale in range(doublings + 1):
            width = n_filters * (scale + 1)
            layers += conv_elu(width, width) + conv_elu(width, width)
            if scale < doublings:
                layers += conv_elu(width, width + n_filters, stride=2)
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * base * base, h_dim))
        self.decoder = Generator(h_dim, channels, img_size, n_filters)

    def forward(self, img):
        return self.decoder(self.encoder(img))


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
def reconstruction_loss(images, discriminator):
    """L(v) = mean |v - D(v)|: how badly the auto-encoder D reconstructs the images, pixel-wise L1.
    D learns to reconstruct real images well and fakes badly; G wants its fakes reconstructed well."""
    return (images - discriminator(images)).abs().mean()


def update_k(k_t, loss_real, loss_fake, gamma, lambda_k):
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1): a proportional controller that
    weights the fakes in L_D more while D reconstructs them better than gamma times the real images."""
    return (k_t + lambda_k * (gamma * loss_real - loss_fake)).clamp(0.0, 1.0)


def convergence_measure(loss_real, loss_fake, gamma):
    """M = L(x) + |gamma L(x) - L(G(z))|: falls as real images are reconstructed better and the
    equilibrium holds; it tracks image quality, which GAN losses do not."""
    return loss_real + (gamma * loss_real - loss_fake).abs()


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

    # PyTorch's default initialisation: the paper prescribes none, and there is no BatchNorm to tune.
    generator = Generator(opt.latent_dim, opt.channels, opt.img_size, opt.n_filters).to(device)
    discriminator = Discriminator(opt.channels, opt.img_size, opt.h_dim, opt.n_filters).to(device)
    # Distributed (torchrun): every process starts from rank 0's weights and steps with the gradients averaged over all.
    generator, discriminator = common.distribute(opt, generator, discriminator)
    if opt.compile:  # in place: the state_dict keys, and so the checkpoints, stay the same
        generator.compile()
        discriminator.compile()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2), fused=device.type == "cuda")
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2), fused=device.type == "cuda")
    # "Stalls" made concrete: M has not reached a new low for --lr_patience steps; then halve.
    scheduler_G = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer_G, factor=0.5, patience=opt.lr_patience)
    scheduler_D = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer_D, factor=0.5, patience=opt.lr_patience)
    # --amp: half-precision forward passes; float16 (where bfloat16 is missing) also scales the losses.
    precision = common.Precision(opt.amp, device)
    scaler_D, scaler_G = precision.scaler(), precision.scaler()
    saved = dict(generator=generator, discriminator=discriminator, optimizer_G=optimizer_G, optimizer_D=optimizer_D, scheduler_G=scheduler_G, scheduler_D=scheduler_D, scaler_D=scaler_D, scaler_G=scaler_G)

    # The same noise for every sample grid, so the grids show how G(z) evolves for fixed z.
    fixed_z = torch.rand(64, opt.latent_dim, device=device) * 2 - 1
    k_t = torch.zeros((), device=device)
    # d_steps runs on across epochs: the D steps of one generator step may straddle an epoch's end.
    step, epoch, batch, d_steps, seconds = 0, 0, 0, 0, 0.0
    if opt.resume:
        checkpoint = run.restore(saved)
        step, epoch, batch, d_steps, seconds = checkpoint["step"], checkpoint["epoch"], checkpoint["batch"], checkpoint["d_steps"], checkpoint["seconds"]
        fixed_z, k_t = checkpoint["fixed_z"].to(device), checkpoint["k_t"].to(device)

    def save_samples():
        with torch.no_grad():
            run.save_samples(generator(fixed_z), step)

    def save_checkpoint():
        run.save_checkpoint(saved, opt, step=step, epoch=epoch, batch=batch, d_steps=d_steps, fixed_z=fixed_z, k_t=k_t, seconds=seconds)

    def generate(n, rng):
        """n fakes from noise drawn from `rng`, for --fid/--fcd and --save_fakes: (images, labels or None)."""
        return generator(torch.rand(n, opt.latent_dim, device=device, generator=rng) * 2 - 1), None

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
                    z = torch.rand(real.size(0), opt.latent_dim, device=device) * 2 - 1
                    with torch.no_grad():  # to D the fakes are constants: no graph through G is needed
                        fake = generator(z)
                    loss_real, loss_fake = reconstruction_loss(real, discriminator), reconstruction_loss(fake, discriminator)
                    loss_D = loss_real - k_t * loss_fake
                optimizer_D.zero_grad(set_to_none=True)
                scaler_D.scale(loss_D).backward()
                if run.accepts(loss_D):  # under --nan_policy skip a NaN/Inf loss changes no weight
                    scaler_D.step(optimizer_D)
                    scaler_D.update()
                # k_t and M are measurements, not part of any graph.
                loss_real, loss_fake = loss_real.detach(), loss_fake.detach()
                # Distributed (torchrun): means over all processes' batches, so that k_t, M and with it the lr stay the same in each.
                loss_D, loss_real, loss_fake = common.mean_over_processes(loss_D.detach(), loss_real, loss_fake)
                m_global = convergence_measure(loss_real, loss_fake, opt.gamma)
                # Held where the loss is NaN/Inf (a skipped update): one bad batch must not make k_t NaN for good.
                k_t = torch.where(loss_D.isfinite(), update_k(k_t, loss_real, loss_fake, opt.gamma, opt.lambda_k), k_t)
                d_steps += 1
                if d_steps % opt.n_critic:
                    continue

                # -----------------
                #  Train Generator
                # -----------------
                with precision.autocast():
                    z = torch.rand(real.size(0), opt.latent_dim, device=device) * 2 - 1
                    loss_G = reconstruction_loss(generator(z), discriminator)
                optimizer_G.zero_grad(set_to_none=True)
                scaler_G.scale(loss_G).backward()
                if run.accepts(loss_G):
                    scaler_G.step(optimizer_G)
                    scaler_G.update()
                step += 1
                if opt.lr_patience:
                    scheduler_G.step(m_global)
                    scheduler_D.step(m_global)

                # ---------------------
                #  Log, sample, stop
                # ---------------------
                seconds = time.perf_counter() - start
                values = torch.stack([loss_D, loss_G, loss_real, k_t, m_global]).tolist()
                metrics = dict(zip(("loss_D", "loss_G", "L_x", "k_t", "M"), values))
                run.log(step=step, epoch=epoch + 1, **metrics, lr=optimizer_G.param_groups[0]["lr"], seconds=seconds)
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
