"""CoGAN: coupled generative adversarial networks.

Paper: Liu & Tuzel, "Coupled Generative Adversarial Networks", NIPS 2016, arXiv:1606.07536.

Objective: two GANs, one per domain, trained together, with the generator's non-saturating form:
    max_{D1,D2}  E_x1[log D1(x1)] + E_z[log(1 - D1(G1(z)))] + E_x2[log D2(x2)] + E_z[log(1 - D2(G2(z)))]
    max_{G1,G2}  E_z[log D1(G1(z))] + E_z[log D2(G2(z))]
subject to weight sharing: G1 and G2 share their first layers (the high-level semantics) and keep
their last (each domain's pixels); D1 and D2 keep their first layers and share their last. No pair
(x1, x2) is ever shown, yet one z yields a corresponding pair (G1(z), G2(z)).

Changes from dcgan.py: DCGAN's nets, coupled: G1/G2 share all layers but the last transposed
convolution, D1/D2 all but the first convolution. Domain A is --dataset, domain B a folder
(--domain_b folder) or, as in the paper and the authors' create_two_domains (mingyuliutw/CoGAN), the
negatives (1 - x) or edges (3x3 dilation minus the image) of the other half of the images, split at
random (--seed): no image serves both domains. Scores compare domain A's fakes with all the data;
grids show G1(z), G2(z) side by side.

Departures from the paper, and why:
- DCGAN's nets, coupled, in place of the paper's own: so that `diff dcgan.py cogan.py` is the coupling alone.
- D's and G's losses are the two GANs' mean, half the paper's sum: Adam's steps do not change with the loss's scale.

Run:
    python cogan.py                                                  # digits and their negatives, CPU minutes
    python cogan.py --domain_b edges --dataset mnist --data_root data
    python cogan.py --dataset folder --data_root photos/ --domain_b folder --data_root_b sketches/ --img_size 64
    python cogan.py --resume runs/cogan_digits_20260101-120000      # continue a run
    torchrun --standalone --nproc_per_node=4 cogan.py               # 4 GPUs of one machine
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import common

# Generator steps per data set (--n_iters): two GANs a step, each on its half; a pass is 14 steps over the digits.
DATASET_DEFAULTS = dict(
    digits=dict(n_iters=2240), mnist=dict(n_iters=18750), fashion=dict(n_iters=18750), cifar10=dict(n_iters=23400),
    anime=dict(n_iters=8000), folder=dict(n_iters=8000),
)  # fmt: skip


def parse_args(argv=None):
    parser = common.ArgumentParser(description="CoGAN (Liu & Tuzel 2016)", dataset_defaults=DATASET_DEFAULTS)
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="domain A's images")
    parser.add_argument("--data_root", default="data", help="where data sets are kept; the folder for folder")
    parser.add_argument("--domain_b", choices=("negative", "edges", "folder"), default="negative", help="domain B")
    parser.add_argument("--data_root_b", help="with --domain_b folder: the folder of domain B's images")
    parser.add_argument("--img_size", type=image_size, help="image height and width (default: per data set)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 RGB (default: per data set)")
    parser.add_argument("--n_iters", type=common.positive_int, help="generator steps (default: per data set)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over domain A; --n_iters wins")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate (paper: 2e-4)")
    parser.add_argument("--b1", type=common.adam_beta, default=0.5, help="Adam beta1 (paper: 0.5)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.999, help="Adam beta2")
    parser.add_argument("--n_critic", type=common.positive_int, default=1, help="D steps per G step")
    parser.add_argument("--latent_dim", type=common.positive_int, default=100, help="size of z (paper: 100)")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="G's width at its last hidden layer")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="D's width at its first layer")
    parser.add_argument("--sample_interval", type=common.positive_int, help="generator steps between grids")
    common.add_run_args(parser)
    opt = parser.parse_args(argv)
    if (opt.domain_b == "folder") != (opt.data_root_b is not None):
        parser.error("--domain_b folder and --data_root_b DIR go together: pass both, or neither")
    return opt


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


class CoupledGenerators(nn.Module):
    """z -> (image A, image B): dcgan.py's generator, whose layers but the last are shared; BatchNorm +
    ReLU between, Tanh after each domain's last layer."""

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
        self.shared = nn.Sequential(*layers)  # the high-level content both domains have in common
        self.last_a, self.last_b = (nn.ConvTranspose2d(width, channels, 4, 2, 1) for _ in "ab")  # per domain's pixels

    def forward(self, z):
        hidden = self.shared(z[:, :, None, None])
        return self.last_a(hidden).tanh(), self.last_b(hidden).tanh()


class CoupledDiscriminators(nn.Module):
    """(image A, image B) -> (logit A, logit B): dcgan.py's discriminator, whose layers but the first
    convolution are shared; LeakyReLU(0.2), BatchNorm on every layer but the first."""

    def __init__(self, channels, img_size, ndf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        # Per domain: the first layer, which reads the domain's own pixels (no BatchNorm at the input).
        self.first_a, self.first_b = (nn.Conv2d(channels, ndf, 4, 2, 1) for _ in "ab")
        layers, width = [nn.LeakyReLU(0.2)], ndf  # shared: the rest, which judges the high-level content
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        # A logit, not a probability: the loss applies the sigmoid in a numerically stable way.
        layers += [nn.Conv2d(width, 1, base, 1, 0)]
        self.shared = nn.Sequential(*layers)

    def forward(self, img_a, img_b):
        return self.shared(self.first_a(img_a)).flatten(), self.shared(self.first_b(img_b)).flatten()


def init_weights(module):
    """Weights from N(0, 0.02), the DCGAN paper's; BatchNorm scales from N(1, 0.02) and biases 0, dcgan.torch's."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def edges(images):
    """Edge maps as the authors make them, the 3x3 dilation minus the image on [0, 1] (-1 + that on [-1, 1])."""
    return F.max_pool2d(images, 3, 1, 1) - images - 1


def halves(data, seed):
    """Two disjoint halves of the images of `data` (unlabelled), split by a permutation seeded with `seed`."""
    parts = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tensor_split(2)
    images = [data.images[part] if data.images is not None else None for part in parts]
    files = [[data.files[i] for i in part] if data.images is None else () for part in parts]  # decoded on the fly
    return [common.ImageData(data.name, data.img_size, data.channels, *pair) for pair in zip(images, files)]


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
    if opt.domain_b == "folder":  # A is the whole data set, B another one
        data_a, data_b = data, common.load_images("folder", opt.data_root_b, opt.img_size, opt.channels)
    else:  # B is made from the half of the images that A never sees
        data_a, data_b = halves(data, opt.seed)
    batches = common.Batches(data_a, opt.batch_size, device, opt.seed, opt.n_cpu)
    batches_b = common.Batches(data_b, opt.batch_size, device, opt.seed + 1, opt.n_cpu)
    to_domain_b = {"negative": torch.neg, "edges": edges, "folder": nn.Identity()}[opt.domain_b]  # 1 - x is -x
    opt.n_iters = opt.n_iters or max(1, opt.n_epochs * len(batches) // opt.n_critic)  # --n_epochs in steps
    run = common.Run(opt, __file__, data, device)  # the scores compare domain A with the whole data set

    generator = CoupledGenerators(opt.latent_dim, opt.channels, opt.img_size, opt.ngf).to(device).apply(init_weights)
    discriminator = CoupledDiscriminators(opt.channels, opt.img_size, opt.ndf).to(device).apply(init_weights)
    ema_G = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(opt.ema), use_buffers=True)  # before DDP/compile
    generator, discriminator = common.distribute(opt, generator, discriminator)  # --compile; DDP under torchrun
    optimizer_G = torch.optim.Adam(generator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    optimizer_D = torch.optim.Adam(discriminator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    autocast = torch.autocast(device.type, common.amp_dtype(device), enabled=opt.amp)  # --amp: half-precision passes
    scaling = opt.amp and autocast.fast_dtype == torch.float16  # float16 (where bfloat16 is missing) scales the losses
    scaler_D = torch.amp.GradScaler(device.type, enabled=scaling)
    scaler_G = torch.amp.GradScaler(device.type, enabled=scaling)
    fixed_z = torch.randn(32, opt.latent_dim, device=device)  # the same z for every grid: how G(z) evolves
    state = dict(generator=generator, discriminator=discriminator, optimizer_G=optimizer_G, optimizer_D=optimizer_D)
    state.update(scaler_G=scaler_G, scaler_D=scaler_D, batches=batches, batches_b=batches_b, fixed_z=fixed_z)
    state.update(ema_G=ema_G)
    start = run.restore(state)

    def fakes(generator, n, rng):
        """n fakes of domain A from noise drawn from `rng`, for scoring and --save_fakes: (images, labels)."""
        return generator(torch.randn(n, opt.latent_dim, device=device, generator=rng))[0], None

    if opt.generate:  # --resume RUN --generate N: only write fakes from the checkpoint
        return run.scorer.write_fakes(run, ema_G.module, fakes, opt.generate)
    if opt.interpolate:  # --resume RUN --interpolate K: only draw latent walks from the checkpoint
        return run.plots.interpolate(run, ema_G.module, fixed_z)

    print(f"domain A: {len(data_a)} images, domain B: {len(data_b)} images")
    real_batches, real_batches_b = iter(batches), iter(batches_b)
    for step in run.progress(start):
        # ---------------------
        #  Train Discriminator
        # ---------------------
        for _ in range(opt.n_critic):
            real, _ = next(real_batches)
            real_b = to_domain_b(next(real_batches_b)[0])  # from its own stream: never paired with `real`
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():  # to D the fakes are constants: no graph through G is needed
                    fake = generator(z)
                d_real, d_fake = torch.cat(discriminator(real, real_b)), torch.cat(discriminator(*fake))
                loss_D = discriminator_loss(d_real, d_fake)  # the two GANs' mean: half the paper's sum
            optimizer_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(optimizer_D)
            scaler_D.update()

        # -----------------
        #  Train Generator
        # -----------------
        z = torch.randn(real.size(0), opt.latent_dim, device=device)
        with autocast, common.frozen(discriminator) as frozen_D:  # only G's weights need gradients here
            loss_G = generator_loss(torch.cat(frozen_D(*generator(z))))
        optimizer_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(optimizer_G)
        scaler_G.update()
        ema_G.update_parameters(generator)

        run.log(step, loss_D=loss_D, loss_G=loss_G, D_x=d_real.sigmoid().mean(), D_G_z=d_fake.sigmoid().mean())
        run.sample(step, ema_G.module, fixed_z)  # G1(z), G2(z) side by side: 4 pairs a row
        run.score(step, ema_G.module, fakes)
        run.checkpoint(step, state)
    return run.finish(ema_G.module, fakes)


if __name__ == "__main__":
    common.main(train, parse_args)
