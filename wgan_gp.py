"""WGAN-GP: Wasserstein GAN with gradient penalty.

Paper: Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of Wasserstein GANs", arXiv:1704.00028.

Objective: G minimises -E_z[D(G(z))], the critic D this (minus its first two terms, W_estimate, estimates W):
    L_D = E_z[D(G(z))] - E_x[D(x)] + lambda * E_xhat[(||grad_xhat D(xhat)||_2 - 1)^2],  xhat = eps x + (1 - eps) G(z)
with lambda = 10, eps ~ U[0, 1] per sample: an optimal critic has gradient norm 1 on the lines between reals and fakes.

Changes from DCGAN: an unbounded score (no sigmoid, no log) and no BatchNorm in the critic (layer norm instead); the
penalty at points between reals and fakes (not WGAN's clipping); 5 critic steps a generator step; Adam 1e-4, (0, 0.9).

Departures from the paper, and why:
- DCGAN's nets and 100-d z, where the paper's CIFAR-10 and LSUN results use ResNets and the authors' code a 128-d z:
  so that `diff dcgan.py wgan_gp.py` is the algorithm alone. On the digits they are 32 wide (--ngf, --ndf), for 3
  times faster steps.
- G's moving average (--ema) draws, as in later GANs, since it beat G alone on the digits (docs/results.md).

Run:
    python wgan_gp.py                                                # scikit-learn digits, CPU minutes
    torchrun --standalone --nproc_per_node=4 wgan_gp.py             # 4 GPUs of one machine
"""

import argparse

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import common

# Generator steps (--n_iters): digits 300 passes at 5 batches a step, width 32 (3x faster a step); else DCGAN's / 5.
DATASET_DEFAULTS = dict(
    digits=dict(n_iters=1680, ngf=32, ndf=32), mnist=dict(n_iters=3750), fashion=dict(n_iters=3750),
    cifar10=dict(n_iters=4680), anime=dict(n_iters=1600), folder=dict(n_iters=1600),
)  # fmt: skip


def parse_args(argv=None):
    parser = common.ArgumentParser(description="WGAN-GP (Gulrajani et al. 2017)", dataset_defaults=DATASET_DEFAULTS)
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="training images")
    parser.add_argument("--data_root", default="data", help="where data sets are kept; the folder for folder")
    parser.add_argument("--img_size", type=image_size, help="image height and width (default: per data set)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 RGB (default: per data set)")
    parser.add_argument("--n_iters", type=common.positive_int, help="generator steps (default: per data set)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over the data; --n_iters wins")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--b1", type=common.adam_beta, default=0.0, help="Adam beta1 (paper: 0)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.9, help="Adam beta2 (paper: 0.9)")
    parser.add_argument("--n_critic", type=common.positive_int, default=5, help="critic steps per G step (paper: 5)")
    parser.add_argument("--lambda_gp", type=common.nonnegative_float, default=10.0, help="penalty weight (paper: 10)")
    parser.add_argument("--log_grad_norms", action="store_true", help="log ||grad_x D|| at reals and fakes")
    parser.add_argument("--latent_dim", type=common.positive_int, default=100, help="size of z (DCGAN's: 100)")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="G's width at its last hidden layer")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="the critic's width at its first layer")
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


class Critic(nn.Module):
    """image -> score: stride-2 convolutions halve the size and double the width, LeakyReLU(0.2), layer norm (one
    GroupNorm group, the paper's advice) after all but the first; no BatchNorm, which ties each score to the batch."""

    def __init__(self, channels, img_size, ndf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]  # no normalisation at the input
        width = ndf
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.GroupNorm(1, width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        # An unbounded score, not a probability: the critic estimates a distance, not a class.
        layers += [nn.Conv2d(width, 1, base, 1, 0)]
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
def critic_loss(d_real, d_fake):
    """E[D(G(z))] - E[D(x)]: minus the critic's estimate of the Wasserstein distance."""
    return d_fake.mean() - d_real.mean()


def generator_loss(d_fake):
    """-E[D(G(z))]: the generator moves its samples up the critic's score."""
    return -d_fake.mean()


def gradient_penalty(critic, real, fake):
    """E[(||grad_xhat D(xhat)||_2 - 1)^2], xhat = eps x + (1 - eps) G(z), norms over C x H x W; and the mean norm."""
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    # In float32 even under --amp: a half-precision double backward loses the penalty's small gradients.
    with torch.autocast(real.device.type, enabled=False):
        xhat = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
        # The summed scores' gradient holds each sample's own; create_graph: the penalty is minimised through it.
        (grad,) = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)
        norm = grad.flatten(1).norm(2, dim=1)
        return ((norm - 1) ** 2).mean(), norm.mean()


def input_gradient_norm(critic, images):
    """||grad_x D(x)||_2 averaged over the batch, the critic's slope at the images (--log_grad_norms), each image's own:
    in evaluation mode, since with BatchNorm's batch statistics (wgan's critic) each score depends on the others."""
    images = images.detach().requires_grad_(True)
    with common.evaluating(critic) as net, torch.enable_grad():  # evaluating() turns gradients off: back on for x
        (grad,) = torch.autograd.grad(net(images).sum(), images)
    return grad.flatten(1).norm(2, dim=1).mean()


# ---------------------------------------- Training -----------------------------------------------
def train(opt):
    device = common.setup(opt)  # seeded; under torchrun, one process per GPU
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    batches = common.Batches(data, opt.batch_size, device, opt.seed, opt.n_cpu)
    opt.n_iters = opt.n_iters or max(1, opt.n_epochs * len(batches) // opt.n_critic)  # --n_epochs in steps
    run = common.Run(opt, __file__, data, device)

    generator = Generator(opt.latent_dim, opt.channels, opt.img_size, opt.ngf).to(device).apply(init_weights)
    discriminator = Critic(opt.channels, opt.img_size, opt.ndf).to(device).apply(init_weights)
    # --compile leaves the critic eager: compiled code has no double backward, which the penalty needs.
    ema_G = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(opt.ema), use_buffers=True)  # before DDP/compile
    generator, discriminator = common.distribute(opt, generator, discriminator, compile=(opt.compile, False))
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
        #  Train Critic
        # ---------------------
        for _ in range(opt.n_critic):
            real, _ = next(real_batches)
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():  # to the critic the fakes are constants: no graph through G is needed
                    fake = generator(z)
                d_real, d_fake = discriminator(real), discriminator(fake)
                penalty, at_xhat = gradient_penalty(discriminator, real, fake)  # at_xhat: the mean norm
                loss_D = critic_loss(d_real, d_fake) + opt.lambda_gp * penalty
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

        at = dict(real=real, fake=fake) if opt.log_grad_norms else {}  # through the bare critic: DDP would wait
        norms = {f"grad_norm_{name}": input_gradient_norm(common.unwrap(discriminator), x) for name, x in at.items()}
        run.log(step, loss_D=loss_D, loss_G=loss_G, W_estimate=-critic_loss(d_real, d_fake), grad_norm=at_xhat, **norms)
        run.sample(step, ema_G.module, fixed_z)
        run.score(step, ema_G.module, fakes)
        run.checkpoint(step, state)
    return run.finish(ema_G.module, fakes)


if __name__ == "__main__":
    common.main(train, parse_args)
