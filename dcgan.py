"""DCGAN: deep convolutional generative adversarial networks.

Paper: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016, arXiv:1511.06434.

Objective (Goodfellow et al. 2014), with the generator's non-saturating form:
    max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]
    max_G  E_z[log D(G(z))]                       z ~ N(0, I), D(.) = sigmoid(logit)

The paper's guidelines, all kept: strided convolutions in D, transposed ones in G, no pooling or hidden fully
connected layer, BatchNorm but at G's output and D's input, ReLU in G (Tanh last), LeakyReLU(0.2) in D, N(0, 0.02)
weights, Adam 2e-4 with beta1 0.5. Departures: z is Gaussian, not uniform, and batches are 64, not 128, as in
PyTorch's DCGAN example; G's moving average (--ema) draws, as in later GANs, since it beat G alone (docs/results.md).

Run (--help lists the flags; torchrun --standalone --nproc_per_node=4 dcgan.py trains on 4 GPUs of one machine):
    python dcgan.py                                                  # scikit-learn digits, CPU minutes
    python dcgan.py --resume runs/dcgan_digits_20260101-120000      # continue; --interpolate 16: latent walks
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import common

# --n_iters per data set: a pass is 28 steps over the digits, 937 over MNIST (batch 64); the faces': docs/results.md
DATASET_DEFAULTS = dict(
    digits=dict(n_iters=2240), mnist=dict(n_iters=18750), fashion=dict(n_iters=18750), cifar10=dict(n_iters=23400),
    anime=dict(n_iters=5000), folder=dict(n_iters=5000),
)  # fmt: skip


def parse_args(argv=None):
    parser = common.ArgumentParser(description="DCGAN (Radford et al. 2016)", dataset_defaults=DATASET_DEFAULTS)
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="training images")
    parser.add_argument("--data_root", default="data", help="where data sets are kept; the folder for folder")
    parser.add_argument("--img_size", type=image_size, help="image height and width (default: per data set)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 RGB (default: per data set)")
    parser.add_argument("--n_iters", type=common.positive_int, help="generator steps (default: per data set)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over the data; --n_iters wins")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate (paper: 2e-4)")
    parser.add_argument("--b1", type=common.adam_beta, default=0.5, help="Adam beta1 (paper: 0.5)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.999, help="Adam beta2")
    parser.add_argument("--n_critic", type=common.positive_int, default=1, help="D steps per G step")
    parser.add_argument("--latent_dim", type=common.positive_int, default=100, help="size of z (paper: 100)")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="G's width at its last hidden layer")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="D's width at its first layer")
    parser.add_argument("--sample_interval", type=common.positive_int, help="generator steps between grids")
    common.add_run_args(parser, ema=0.995)
    return parser.parse_args(argv)


# ---------------------------------------- Models -------------------------------------------------
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
        raise argparse.ArgumentTypeError(f"{size} cannot be made by doubling: use 4..7 times a power of two, >= 16")
    return size


class Generator(nn.Module):
    """z -> image: a transposed convolution lifts z to a base x base map, then each stride-2 transposed
    convolution doubles the size and halves the width; BatchNorm + ReLU between, Tanh at the output."""

    def __init__(self, latent_dim, channels, img_size, ngf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        width = ngf * 2 ** (doublings - 1)
        # Convolutions followed by BatchNorm need no bias: BatchNorm's shift replaces it.
        layers = [nn.ConvTranspose2d(latent_dim, width, base, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2)]
            layers += [nn.ReLU()]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]  # no BatchNorm at the output
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image -> logit: stride-2 convolutions halve the size and double the width, LeakyReLU(0.2),
    BatchNorm on every layer but the first, then a base x base convolution to one number."""

    def __init__(self, channels, img_size, ndf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]  # no BatchNorm at the input
        width = ndf
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        layers += [nn.Conv2d(width, 1, base, 1, 0)]  # a logit, not a probability: the loss applies the sigmoid stably
        self.net = nn.Sequential(*layers)

    def forward(self, img):
        return self.net(img).flatten()


def init_weights(module):
    """Weights from N(0, 0.02), the DCGAN paper's; BatchNorm scales from N(1, 0.02) and biases 0, dcgan.torch's."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---------------------------------------- Losses -------------------------------------------------
def discriminator_loss(d_real, d_fake):
    """-E[log D(x)] - E[log(1 - D(G(z)))]: binary cross-entropy with real = 1, fake = 0."""
    real = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
    fake = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    return real + fake


def generator_loss(d_fake):
    """-E[log D(G(z))]: the non-saturating loss. log(1 - D(G(z))) has almost no gradient while D
    easily rejects early fakes; this one has the same fixed point and strong gradients there."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


# ---------------------------------------- Training -----------------------------------------------
def train(opt):
    device = common.setup(opt)  # seeded; under torchrun, one process per GPU
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    batches = common.Batches(data, opt.batch_size, device, opt.seed, opt.n_cpu)
    opt.n_iters = opt.n_iters or max(1, opt.n_epochs * len(batches) // opt.n_critic)  # --n_epochs in steps
    run = common.Run(opt, __file__, data, device)

    generator = Generator(opt.latent_dim, opt.channels, opt.img_size, opt.ngf).to(device).apply(init_weights)
    discriminator = Discriminator(opt.channels, opt.img_size, opt.ndf).to(device).apply(init_weights)
    ema_G = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(opt.ema), use_buffers=True)  # before DDP/compile
    generator, discriminator = common.distribute(opt, generator, discriminator)  # --compile; DDP under torchrun
    optimizer_G = torch.optim.Adam(generator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    optimizer_D = torch.optim.Adam(discriminator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    autocast = torch.autocast(device.type, common.amp_dtype(device), enabled=opt.amp)  # --amp: half-precision passes
    scaling = opt.amp and autocast.fast_dtype == torch.float16  # float16 (where bfloat16 is missing) scales the losses
    scaler_D = torch.amp.GradScaler(device.type, enabled=scaling)
    scaler_G = torch.amp.GradScaler(device.type, enabled=scaling)
    fixed_z = torch.randn(64, opt.latent_dim, device=device)  # the same z for every grid: how G(z) evolves
    state = dict(generator=generator, discriminator=discriminator, optimizer_G=optimizer_G, optimizer_D=optimizer_D)
    state.update(scaler_G=scaler_G, scaler_D=scaler_D, batches=batches, fixed_z=fixed_z, ema_G=ema_G)
    start = run.restore(state)

    def fakes(generator, n, rng):
        """n fakes of `generator` from noise drawn from `rng`, for scoring and --save_fakes: (images, labels)."""
        return generator(torch.randn(n, opt.latent_dim, device=device, generator=rng)), None

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
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():  # to D the fakes are constants: no graph through G is needed
                    fake = generator(z)
                d_real, d_fake = discriminator(real), discriminator(fake)
                loss_D = discriminator_loss(d_real, d_fake)
            optimizer_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(optimizer_D)
            scaler_D.update()

        # -----------------
        #  Train Generator
        # -----------------
        z = torch.randn(real.size(0), opt.latent_dim, device=device)
        with autocast, common.frozen(discriminator) as frozen_D:  # only G's weights need gradients here
            loss_G = generator_loss(frozen_D(generator(z)))
        optimizer_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(optimizer_G)
        scaler_G.update()
        ema_G.update_parameters(generator)

        run.log(step, loss_D=loss_D, loss_G=loss_G, D_x=d_real.sigmoid().mean(), D_G_z=d_fake.sigmoid().mean())
        run.sample(step, ema_G.module, fixed_z)
        run.score(step, ema_G.module, fakes)
        run.checkpoint(step, state)
    return run.finish(ema_G.module, fakes)


if __name__ == "__main__":
    common.main(train, parse_args)
