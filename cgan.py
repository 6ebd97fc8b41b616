"""CGAN: conditional generative adversarial networks, in DCGAN's convolutional form.

Paper: Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014, arXiv:1411.1784.

Objective: both nets see the class label y, with the generator's non-saturating form:
    max_D  E_(x,y)[log D(x|y)] + E_(z,y)[log(1 - D(G(z|y)|y))]
    max_G  E_(z,y)[log D(G(z|y)|y)]               z ~ N(0, I), y ~ the data's labels, D(.) = sigmoid(logit)

Changes from dcgan.py: the label enters G as a learned embedding concatenated to z, and D as a
learned embedding shaped as one more image channel, so both nets see it from their first layer on.
Fakes are made for labels drawn as often as the data's: with uniform ones, D could tell the fakes of an
imbalanced data set by their label alone. Grids have a row per class, the columns sharing their noise, and
--label draws one class from a trained run, both in evaluation mode: the image of a (z, y) is the
same in either. Needs labels: digits, mnist, fashion, cifar10, or a folder of class sub-folders.

Departures from the paper, and why:
- DCGAN's convolutional nets and Gaussian z, where the paper's are fully connected (ReLU in G, maxout in D, with
  dropout) on a uniform z: so that `diff dcgan.py cgan.py` is the conditioning alone.
- Adam at DCGAN's lr 2e-4 and beta1 0.5, where the paper ran SGD at lr 0.1 (decaying) with momentum 0.5 rising to 0.7.
- y enters as a learned embedding, not the paper's one-hot code: as expressive, and D gets it as an image channel.
- G's moving average (--ema) draws, as in later GANs, since it beat G alone on the digits (docs/results.md).

Run:
    python cgan.py                                                   # scikit-learn digits, CPU minutes
    python cgan.py --dataset mnist --data_root data                  # downloads MNIST into data/
    python cgan.py --dataset folder --data_root lego/ --img_size 64  # lego/<class>/*.jpg
    python cgan.py --resume runs/cgan_digits_20260101-120000        # continue a run
    torchrun --standalone --nproc_per_node=4 cgan.py                # 4 GPUs of one machine
    python cgan.py --resume runs/cgan_digits_20260101-120000 --label 7   # a grid of 7s, no training
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import common

# Generator steps per data set (--n_iters): about 80 passes over the digits, 20 over MNIST.
DATASET_DEFAULTS = dict(
    digits=dict(n_iters=2240), mnist=dict(n_iters=18750), fashion=dict(n_iters=18750), cifar10=dict(n_iters=23400),
    anime=dict(n_iters=8000), folder=dict(n_iters=8000),
)  # fmt: skip


def parse_args(argv=None):
    parser = common.ArgumentParser(description="CGAN (Mirza & Osindero 2014)", dataset_defaults=DATASET_DEFAULTS)
    parser.add_argument("--dataset", choices=common.DATASETS, default="digits", help="training images, labelled")
    parser.add_argument("--data_root", default="data", help="where data sets are kept; folder: one sub-folder a class")
    parser.add_argument("--img_size", type=image_size, help="image height and width (default: per data set)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 RGB (default: per data set)")
    parser.add_argument("--n_iters", type=common.positive_int, help="generator steps (default: per data set)")
    parser.add_argument("--n_epochs", type=common.positive_int, help="passes over the data; --n_iters wins")
    parser.add_argument("--batch_size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate (DCGAN's: 2e-4)")
    parser.add_argument("--b1", type=common.adam_beta, default=0.5, help="Adam beta1 (DCGAN's: 0.5)")
    parser.add_argument("--b2", type=common.adam_beta, default=0.999, help="Adam beta2")
    parser.add_argument("--n_critic", type=common.positive_int, default=1, help="D steps per G step")
    parser.add_argument("--latent_dim", type=common.positive_int, default=100, help="size of z (paper: 100)")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="G's width at its last hidden layer")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="D's width at its first layer")
    parser.add_argument("--sample_interval", type=common.positive_int, help="generator steps between grids")
    parser.add_argument("--label", type=common.nonnegative_int, help="with --resume: draw a grid of this class, exit")
    common.add_run_args(parser, ema=0.995)
    opt = parser.parse_args(argv)
    if opt.label is not None and not opt.resume:
        parser.error("--label draws from a trained generator: pass --resume RUN_FOLDER with it")
    if opt.label is not None and (opt.generate or opt.interpolate):
        parser.error("--label draws one class's grid: drop it, or --generate and --interpolate, which draw every class")
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


class Generator(nn.Module):
    """(z, y) -> image: z and y's embedding, concatenated, are lifted to a base x base map, then as in
    dcgan.py each stride-2 transposed convolution doubles the size; BatchNorm + ReLU between, Tanh last."""

    def __init__(self, latent_dim, n_classes, channels, img_size, ngf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        width = ngf * 2 ** (doublings - 1)
        self.label_embedding = nn.Embedding(n_classes, n_classes)  # as expressive as a one-hot code, and learned
        # Convolutions followed by BatchNorm need no bias: BatchNorm's shift replaces it.
        layers = [nn.ConvTranspose2d(latent_dim + n_classes, width, base, 1, 0, bias=False), nn.BatchNorm2d(width)]
        layers += [nn.ReLU()]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2)]
            layers += [nn.ReLU()]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]  # no BatchNorm at the output
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels):
        return self.net(torch.cat([z, self.label_embedding(labels)], 1)[:, :, None, None])


class Discriminator(nn.Module):
    """(image, y) -> logit: y's embedding, shaped as one more image channel, joins the input; then as in
    dcgan.py stride-2 convolutions, LeakyReLU(0.2), BatchNorm but at the input, a convolution to one number."""

    def __init__(self, n_classes, channels, img_size, ndf):
        super().__init__()
        base, doublings = conv_plan(img_size)
        self.img_size = img_size
        self.label_embedding = nn.Embedding(n_classes, img_size * img_size)  # lets the first layer relate y to pixels
        layers = [nn.Conv2d(channels + 1, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]  # no BatchNorm at the input
        width = ndf
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        # A logit, not a probability: the loss applies the sigmoid in a numerically stable way.
        layers += [nn.Conv2d(width, 1, base, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, img, labels):
        label_map = self.label_embedding(labels).view(-1, 1, self.img_size, self.img_size)
        return self.net(torch.cat([img, label_map], 1)).flatten()


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
    """-E[log D(x|y)] - E[log(1 - D(G(z|y)|y))]: binary cross-entropy with real = 1, fake = 0."""
    real = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
    fake = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    return real + fake


def generator_loss(d_fake):
    """-E[log D(G(z|y)|y)]: the non-saturating loss. log(1 - D(G(z|y)|y)) has almost no gradient
    while D easily rejects early fakes; this one has the same fixed point and strong gradients there."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


# ---------------------------------------- Training -----------------------------------------------
def train(opt):
    device = common.setup(opt)  # seeded; under torchrun, one process per GPU
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    if data.labels is None:
        what = f"{opt.data_root} has no class sub-folders" if opt.dataset == "folder" else "it has no labels"
        raise common.UsageError(f"--dataset {opt.dataset}: {what}; cgan needs labelled data, a sub-folder per class")
    batches = common.Batches(data, opt.batch_size, device, opt.seed, opt.n_cpu)
    opt.n_iters = opt.n_iters or max(1, opt.n_epochs * len(batches) // opt.n_critic)  # --n_epochs in steps
    run = common.Run(opt, __file__, data, device, training=opt.label is None)  # --label only draws

    generator = (
        Generator(opt.latent_dim, data.n_classes, opt.channels, opt.img_size, opt.ngf).to(device).apply(init_weights)
    )
    discriminator = Discriminator(data.n_classes, opt.channels, opt.img_size, opt.ndf).to(device).apply(init_weights)
    ema_G = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(opt.ema), use_buffers=True)  # before DDP/compile
    generator, discriminator = common.distribute(opt, generator, discriminator)  # --compile; DDP under torchrun
    optimizer_G = torch.optim.Adam(generator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    optimizer_D = torch.optim.Adam(discriminator.parameters(), opt.lr, (opt.b1, opt.b2), fused=device.type == "cuda")
    autocast = torch.autocast(device.type, common.amp_dtype(device), enabled=opt.amp)  # --amp: half-precision passes
    scaling = opt.amp and autocast.fast_dtype == torch.float16  # float16 (where bfloat16 is missing) scales the losses
    scaler_D = torch.amp.GradScaler(device.type, enabled=scaling)
    scaler_G = torch.amp.GradScaler(device.type, enabled=scaling)
    fixed_z = torch.randn(64, opt.latent_dim, device=device)  # the same z for every grid: how G(z|y) evolves
    label_counts = torch.bincount(data.labels, minlength=data.n_classes).float().to(device)  # fake labels' odds
    state = dict(generator=generator, discriminator=discriminator, optimizer_G=optimizer_G, optimizer_D=optimizer_D)
    state.update(scaler_G=scaler_G, scaler_D=scaler_D, batches=batches, fixed_z=fixed_z, ema_G=ema_G)
    start = run.restore(state)

    def fakes(generator, n, rng):
        """n fakes of `generator` from noise drawn from `rng`, every class in turn: (images, labels)."""
        labels = torch.arange(n, device=device) % data.n_classes
        return generator(torch.randn(n, opt.latent_dim, device=device, generator=rng), labels), labels

    if opt.generate:  # --resume RUN --generate N: only write fakes from the checkpoint
        return run.scorer.write_fakes(run, ema_G.module, fakes, opt.generate)
    if opt.interpolate:  # --resume RUN --interpolate K: only draw latent walks from the checkpoint
        return run.plots.interpolate(run, ema_G.module, fixed_z, data.n_classes)
    if opt.label is not None:  # --resume RUN --label N: only draw class N for every fixed z from the checkpoint
        if opt.label >= data.n_classes:
            classes = f"{data.n_classes} classes, 0..{data.n_classes - 1} ({', '.join(data.classes)})"
            raise common.UsageError(f"--label {opt.label}: {data.name} has {classes}")
        with common.evaluating(ema_G.module) as net:  # running statistics: an image depends on its (z, y) alone
            images = net(fixed_z, torch.full((len(fixed_z),), opt.label, device=device))
        path = run.save_grid(images, f"label{opt.label}_{start:07d}.png")
        print(f"class {opt.label} ({data.classes[opt.label]}) at step {start}: {path}")
        return run

    real_batches = iter(batches)
    grid = fixed_z[:8].repeat(data.n_classes, 1), torch.arange(data.n_classes, device=device).repeat_interleave(8)
    for step in run.progress(start):
        # ---------------------
        #  Train Discriminator
        # ---------------------
        for _ in range(opt.n_critic):
            real, labels = next(real_batches)
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            fake_labels = torch.multinomial(label_counts, real.size(0), replacement=True)
            with autocast:
                with torch.no_grad():  # to D the fakes are constants: no graph through G is needed
                    fake = generator(z, fake_labels)
                d_real, d_fake = discriminator(real, labels), discriminator(fake, fake_labels)
                loss_D = discriminator_loss(d_real, d_fake)
            optimizer_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(optimizer_D)
            scaler_D.update()

        # -----------------
        #  Train Generator
        # -----------------
        z = torch.randn(real.size(0), opt.latent_dim, device=device)
        fake_labels = torch.multinomial(label_counts, real.size(0), replacement=True)
        with autocast, common.frozen(discriminator) as frozen_D:  # only G's weights need gradients here
            loss_G = generator_loss(frozen_D(generator(z, fake_labels), fake_labels))
        optimizer_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(optimizer_G)
        scaler_G.update()
        ema_G.update_parameters(generator)

        run.log(step, loss_D=loss_D, loss_G=loss_G, D_x=d_real.sigmoid().mean(), D_G_z=d_fake.sigmoid().mean())
        run.sample(step, ema_G.module, *grid)  # row k is class k, column j the same noise fixed_z[j]
        run.score(step, ema_G.module, fakes)
        run.checkpoint(step, state)
    return run.finish(ema_G.module, fakes)


if __name__ == "__main__":
    common.main(train, parse_args)
