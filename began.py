"""BEGAN: boundary equilibrium generative adversarial networks.

Paper: Berthelot, Schumm & Metz, "BEGAN: Boundary Equilibrium Generative Adversarial Networks",
2017, arXiv:1703.10717.

Objective: D is an auto-encoder and L(v) = mean |v - D(v)| its pixel-wise L1 reconstruction loss.
    L_D = L(x) - k_t L(G(z_D))         L_G = L(G(z_G))                  z ~ U[-1, 1]^64, k_0 = 0
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_D))), 0, 1)
    M = L(x) + |gamma L(x) - L(G(z_D))|                                 the convergence measure
k_t keeps E[L(G(z))] = gamma E[L(x)]: the lower gamma, the more D favours reconstructing real
images, and the less diverse but sharper the samples.

Where this file departs from the paper, and why:
- k_t and M use L(G(z_D)) of D's step, measured like L(x) before D's update, where the paper's Eq. 4 writes
  L(G(z_G)); carpedm20's BEGAN-tensorflow, which most ports follow, does as here: one D judges both.
- The paper halves the lr "when the convergence measure stalls"; here both rates halve once M, one batch's
  (under torchrun the mean over processes, as for k_t), has had no new low for --lr_patience steps.
- The width n (--n_filters) defaults to 16 (32 on the digits), for CPU minutes; the paper's faces use 64-128.
- The digits get DCGAN-style nets: DCGAN's G (--generator dcgan; hwalsuklee's MNIST BEGAN has a BatchNorm G too)
  and the shallow auto-encoder D Lucic et al. 2018 ran BEGAN with (--discriminator dcgan), h 32, G's own lr 4e-4
  and D's 5e-5 (--lr_G, --lr), gamma 1.0, lambda_k 0.01 and the paper's batch 16. Why: with the paper's nets, D
  learns the smooth digits faster than G can follow, k_t stays 0 and G shrinks onto a "1"; the deep D seems to
  memorise the 1,797 digits, where the shallow one sharpens them in a quarter of the time a step (docs/results.md).
- G's moving average (--ema) draws, as in later GANs, since it beat G alone on the digits (docs/results.md).

Changes from dcgan.py: the paper's nets (the digits: DCGAN-style ones): G and D's decoder share an architecture (a
linear layer to an 8 x 8 map, then per scale two 3x3 convolutions + ELU and a nearest upsampling), D's encoder
mirrors it (stride-2 convolutions, widths n, 2n, 3n...), no BatchNorm, an --h_dim embedding. The losses above
replace the cross-entropy; Adam with lr 1e-4.

Run (--help lists the flags; torchrun --standalone --nproc_per_node=4 began.py trains on 4 GPUs of one machine):
    python began.py                                                  # scikit-learn digits, CPU minutes
    python began.py --dataset folder --data_root faces/ --img_size 64 --n_filters 64
    python began.py --resume runs/began_digits_20260101-120000      # continue; --interpolate 16: latent walks
"""

import argparse

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import common

# Generator steps per data set (--n_iters), as dcgan.py's; the digits' own settings: see the docstring.
DATASET_DEFAULTS = dict(
    digits=dict(n_iters=2240, batch_size=16, lr=5e-5, lr_G=4e-4, gamma=1.0, lambda_k=0.01, n_filters=32, h_dim=32,
                generator="dcgan", discriminator="dcgan"), mnist=dict(n_iters=18750), fashion=dict(n_iters=18750),
    cifar10=dict(n_iters=23400), anime=dict(n_iters=8000), folder=dict(n_iters=8000),
)  # fmt: skip


def parse_args(argv=None):
    parser = common.ArgumentParser(description="BEGAN (Berthelot et al. 2017)", dataset_defaults=DATASET_DEFAULTS)
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="training images")
    parser.add_argument("--data_root", default="data", help="where data sets are kept; the folder for folder")
    parser.add_argument("--img_size", type=image_size, help="image height and width (default: per data set)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 RGB (default: per data set)")
    parser.add_argument("--n_iters", type=common.positive_int, help="generator steps (default: per data set)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over the data; --n_iters wins")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--lr_G", type=common.positive_float, help="G's Adam learning rate (default: --lr)")
    parser.add_argument("--lr_patience", type=common.nonnegative_int, default=1000, help="halve lr if M stalls N steps")
    parser.add_argument("--b1", type=common.adam_beta, default=0.5, help="Adam beta1 (paper: none given)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.999, help="Adam beta2")
    parser.add_argument("--n_critic", type=common.positive_int, default=1, help="D steps per G step")
    parser.add_argument("--latent_dim", type=common.positive_int, default=64, help="size of z (paper: 64)")
    parser.add_argument("--h_dim", type=common.positive_int, default=64, help="size of D's embedding (paper: 64)")
    parser.add_argument("--n_filters", type=common.positive_int, default=16, help="n, the nets' width (faces: 64-128)")
    parser.add_argument("--generator", choices=("paper", "dcgan"), default="paper", help="G: D's decoder, or DCGAN's")
    parser.add_argument("--discriminator", choices=("paper", "dcgan"), default="paper", help="D: deep, or of DCGAN's")
    parser.add_argument("--gamma", type=common.positive_float, default=0.5, help="E[L(G(z))] / E[L(x)] (paper: 0.5)")
    parser.add_argument("--lambda_k", type=common.positive_float, default=0.001, help="k_t's rate (paper: 0.001)")
    parser.add_argument("--sample_interval", type=common.positive_int, help="generator steps between grids")
    common.add_run_args(parser, ema=0.995)
    return parser.parse_args(argv)


# ---------------------------------------- Models -------------------------------------------------
def conv_plan(img_size):
    """(base, doublings): scales base, 2 base, ..., img_size; the paper's 8 x 8 for 32, 64..., else 4..8."""
    base, doublings = img_size, 0
    while base > 8 and base % 2 == 0:
        base, doublings = base // 2, doublings + 1
    return base, doublings


def image_size(text):
    """argparse type for --img_size: a size the doubling stacks can make (16, 28, 32, 64, 96, 128...)."""
    size = common.positive_int(text)
    base, doublings = conv_plan(size)
    if not (4 <= base <= 8 and size >= 16):
        raise argparse.ArgumentTypeError(f"{size} cannot be made by doubling: use 4..8 times a power of two, >= 16")
    return size


def conv_elu(in_width, out_width, stride=1):
    return [nn.Conv2d(in_width, out_width, 3, stride, 1), nn.ELU(inplace=True)]


class Generator(nn.Module):
    """z (or D's embedding h) -> image, the paper's decoder: a linear layer to a base x base map of n channels,
    per scale two 3x3 convolutions + ELU, nearest upsampling between scales, a 3x3 convolution to the image."""

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


class DCGANGenerator(nn.Sequential):
    """--generator dcgan: dcgan.py's G, 2n wide at its last hidden layer: stride-2 transposed convolutions from a
    4 x 4 map (for base 8) halve the width, BatchNorm + ReLU between, Tanh at the output; DCGAN's initialisation."""

    def __init__(self, latent_dim, channels, img_size, n_filters):
        base, doublings = conv_plan(img_size)
        base, doublings = (4, doublings + 1) if base == 8 else (base, doublings)
        width = n_filters * 2**doublings
        layers = [nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, width, base, 1, 0, bias=False)]
        for _ in range(doublings - 1):
            layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False)]
            width //= 2
        layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        super().__init__(*layers)
        for module in self.modules():  # weights from N(0, 0.02), BatchNorm's scales from N(1, 0.02), biases 0
            if isinstance(module, (nn.ConvTranspose2d, nn.BatchNorm2d)):
                nn.init.normal_(module.weight, float(isinstance(module, nn.BatchNorm2d)), 0.02)
        nn.init.zeros_(self[-2].bias)


class DCGANDiscriminator(nn.Sequential):
    """--discriminator dcgan: a shallow auto-encoder of DCGAN's layers, BEGAN's D in Lucic et al. 2018's study: two
    stride-2 4x4 convolutions (2n, 4n wide) + LeakyReLU to the h_dim code, a linear layer and two transposed
    convolutions back, Tanh at the output as at G's."""

    def __init__(self, channels, img_size, h_dim, n_filters):
        width, size = 4 * n_filters, img_size // 4
        super().__init__(
            nn.Conv2d(channels, width // 2, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(width // 2, width, 4, 2, 1),
            nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(width * size * size, h_dim), nn.LeakyReLU(0.2),  # the code h
            nn.Linear(h_dim, width * size * size), nn.LeakyReLU(0.2), nn.Unflatten(1, (width, size, size)),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width // 2, channels, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip


class Discriminator(nn.Module):
    """image -> its reconstruction through an h_dim embedding. The encoder mirrors the decoder: per scale two
    3x3 convolutions + ELU, between scales a stride-2 one widening by n (n, 2n, 3n...), a linear layer to h;
    the decoder has G's architecture, with its own weights."""

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


# ---------------------------------------- Losses -------------------------------------------------
def reconstruction_loss(images, discriminator):
    """L(v) = mean |v - D(v)|: how badly the auto-encoder D reconstructs the images, pixel-wise L1."""
    return (images - discriminator(images)).abs().mean()


def discriminator_loss(loss_real, loss_fake, k_t):
    """L_D = L(x) - k_t L(G(z)): reconstruct real images well and, weighted by k_t, fakes badly."""
    return loss_real - k_t * loss_fake


def update_k(k_t, loss_real, loss_fake, gamma, lambda_k):
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1): a proportional controller that
    weights the fakes in L_D more while D reconstructs them better than gamma times the real images."""
    return (k_t + lambda_k * (gamma * loss_real - loss_fake)).clamp(0.0, 1.0)


def convergence_measure(loss_real, loss_fake, gamma):
    """M = L(x) + |gamma L(x) - L(G(z))|: falls as real images are reconstructed better and the
    equilibrium holds; it tracks image quality, which GAN losses do not."""
    return loss_real + (gamma * loss_real - loss_fake).abs()


# ---------------------------------------- Training -----------------------------------------------
def train(opt):
    device = common.setup(opt)  # seeded; under torchrun, one process per GPU
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    batches = common.Batches(data, opt.batch_size, device, opt.seed, opt.n_cpu)
    opt.n_iters = opt.n_iters or max(1, opt.n_epochs * len(batches) // opt.n_critic)  # --n_epochs in steps
    run = common.Run(opt, __file__, data, device)

    # The paper's nets and the DCGAN-style D keep PyTorch's default init: the paper gives none, and no BatchNorm.
    G = DCGANGenerator if opt.generator == "dcgan" else Generator
    D = DCGANDiscriminator if opt.discriminator == "dcgan" else Discriminator
    generator = G(opt.latent_dim, opt.channels, opt.img_size, opt.n_filters).to(device)
    discriminator = D(opt.channels, opt.img_size, opt.h_dim, opt.n_filters).to(device)
    ema_G = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(opt.ema), use_buffers=True)  # before DDP/compile
    generator, discriminator = common.distribute(opt, generator, discriminator)  # --compile; DDP under torchrun
    lr_G = opt.lr_G or opt.lr  # the digits' G learns 8 times faster than D: see the docstring
    optimizer_G = torch.optim.Adam(generator.parameters(), lr_G, (opt.b1, opt.b2), fused=device.type == "cuda")
    optimizer_D = torch.optim.Adam(discriminator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    scheduler_G = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer_G, factor=0.5, patience=opt.lr_patience)
    scheduler_D = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer_D, factor=0.5, patience=opt.lr_patience)
    autocast = torch.autocast(device.type, common.amp_dtype(device), enabled=opt.amp)  # --amp: half-precision passes
    scaling = opt.amp and autocast.fast_dtype == torch.float16  # float16 (where bfloat16 is missing) scales the losses
    scaler_D = torch.amp.GradScaler(device.type, enabled=scaling)
    scaler_G = torch.amp.GradScaler(device.type, enabled=scaling)
    fixed_z = torch.rand(64, opt.latent_dim, device=device) * 2 - 1  # the same z for every grid: how G(z) evolves
    k_t = torch.zeros((), device=device)  # updated in place, so that the checkpoint holds and restores it
    state = dict(generator=generator, discriminator=discriminator, optimizer_G=optimizer_G, optimizer_D=optimizer_D)
    state.update(scaler_G=scaler_G, scaler_D=scaler_D, batches=batches, fixed_z=fixed_z, ema_G=ema_G)
    state.update(scheduler_G=scheduler_G, scheduler_D=scheduler_D, k_t=k_t)
    start = run.restore(state)

    def fakes(generator, n, rng):
        """n fakes of `generator` from noise drawn from `rng`, for scoring and --save_fakes: (images, labels)."""
        return generator(torch.rand(n, opt.latent_dim, device=device, generator=rng) * 2 - 1), None

    if opt.generate:  # --resume RUN --generate N: only write fakes from the checkpoint
        return run.scorer.write_fakes(run, ema_G.module, fakes, opt.generate)
    if opt.interpolate:  # --resume RUN --interpolate K: only draw latent walks from the checkpoint
        return run.plots.interpolate(run, ema_G.module, fixed_z)

    real_batches = iter(batches)
    for step in run.progress(start):
        # ---------------------
        #  Train Discriminator
        # ---------------------
        for _ in range(opt.n_critic):
            real, _ = next(real_batches)
            z = torch.rand(real.size(0), opt.latent_dim, device=device) * 2 - 1
            with autocast:
                with torch.no_grad():  # to D the fakes are constants: no graph through G is needed
                    fake = generator(z)
                loss_real = reconstruction_loss(real, discriminator)
                loss_fake = reconstruction_loss(fake, discriminator)
                loss_D = discriminator_loss(loss_real, loss_fake, k_t)
            optimizer_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(optimizer_D)
            scaler_D.update()
            # Measurements, not part of any graph; under torchrun the means over all processes' batches.
            loss_real, loss_fake = common.all_mean(torch.stack([loss_real, loss_fake]))
            k_t.copy_(update_k(k_t, loss_real, loss_fake, opt.gamma, opt.lambda_k))
        m_global = convergence_measure(loss_real, loss_fake, opt.gamma)

        # -----------------
        #  Train Generator
        # -----------------
        z = torch.rand(real.size(0), opt.latent_dim, device=device) * 2 - 1
        with autocast, common.frozen(discriminator) as frozen_D:  # only G's weights need gradients here
            loss_G = reconstruction_loss(generator(z), frozen_D)
        optimizer_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(optimizer_G)
        scaler_G.update()
        ema_G.update_parameters(generator)
        if opt.lr_patience:
            scheduler_G.step(m_global)
            scheduler_D.step(m_global)

        lr = optimizer_G.param_groups[0]["lr"]
        run.log(step, loss_D=loss_D, loss_G=loss_G, L_x=loss_real, L_G_z=loss_fake, k_t=k_t, M=m_global, lr=lr)
        run.sample(step, ema_G.module, fixed_z)
        run.score(step, ema_G.module, fakes)
        run.checkpoint(step, state)
    return run.finish(ema_G.module, fakes)


if __name__ == "__main__":
    common.main(train, parse_args)
