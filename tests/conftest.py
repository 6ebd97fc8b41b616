"""Shared test helpers: run a script in-process on tiny settings, watch what its loop shows its nets and what its
losses push them to, check DCGAN's architecture guidelines, make image folders."""

import copy
import csv
import functools
import importlib
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import plots  # noqa: E402 - from the repository root

SHARED_DATA = ROOT.parent / "shared" / "data"

# The environment for running a script as a program: it imports common.py from the repo root.
SCRIPT_ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def train_script(name, out, *args):
    """Parse `args` as the script's command line (plus --out) and train in-process; returns the Run."""
    module = importlib.import_module(name)
    opt = module.parse_args(["--out", str(out), *map(str, args)])
    return module.train(opt)


def spy_training(script, out, generator, discriminator, *args):
    """Train `script` in-process as train_script does, watching its classes `generator` and `discriminator`; returns
    what the loop showed them: `calls`, each forward of D whose outputs a loss differentiates, in order, as a
    namespace of `step` ("D", or "G" through the frozen D), `inputs`, `kinds` (per image input: "real", "fake" or
    "interpolate"), `outputs` and `grads`, the gradient of the step's loss with respect to each output (the sign and
    the target of each term of the loss where the loop uses it); `fakes`, id -> (image, G's inputs, index of the
    output); `reals`, id -> (images, labels) of the batches the data streams gave; `first`, G and D as first called,
    before any update; `run`, the Run."""
    import common

    module = importlib.import_module(script)
    classes = getattr(module, generator), getattr(module, discriminator)
    spied = SimpleNamespace(calls=[], fakes={}, reals={}, first={})
    forward_G, forward_D, batches = classes[0].forward, classes[1].forward, common.Batches.__iter__

    def watched_generator(net, *inputs):
        spied.first.setdefault("generator", copy.deepcopy(net))
        output = forward_G(net, *inputs)
        for index, image in enumerate(output if isinstance(output, tuple) else (output,)):
            spied.fakes[id(image)] = image, inputs, index
        return output

    def watched_discriminator(net, *inputs):
        spied.first.setdefault("discriminator", copy.deepcopy(net))
        output = forward_D(net, *inputs)
        outputs = output if isinstance(output, tuple) else (output,)
        if outputs[0].requires_grad:  # not a sample grid or a logged measurement
            images = [x for x in inputs if x.is_floating_point()]  # not cgan's labels
            kinds = tuple(
                "fake" if id(x) in spied.fakes else "interpolate" if x.requires_grad else "real" for x in images
            )
            step = "D" if any(p.requires_grad for p in net.parameters()) else "G"
            call = SimpleNamespace(step=step, inputs=inputs, kinds=kinds, outputs=outputs, grads=[None] * len(outputs))
            for index, tensor in enumerate(outputs):
                tensor.register_hook(functools.partial(call.grads.__setitem__, index))
            spied.calls.append(call)
        return output

    def watched_batches(stream):
        for images, labels in batches(stream):
            spied.reals[id(images)] = images, labels
            yield images, labels

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classes[0], "forward", watched_generator)
        patch.setattr(classes[1], "forward", watched_discriminator)
        patch.setattr(common.Batches, "__iter__", watched_batches)
        patch.setattr(plots, "save_plots", skip_plots)  # a module's fixture runs before the autouse one
        spied.run = train_script(script, out, *args)
    return spied


def assert_cross_entropy_pulls(calls):
    """The gradient of each step's loss, as the loop computes it, with respect to D's logits l (binary cross-entropy
    with logits, a mean over the N logits of the loss): (s(l) - 1) / N where the target is real (D's step at the
    reals, G's at the fakes: the non-saturating loss), s(l) / N where it is fake (D's step at the fakes)."""
    for call in calls:
        target, n = float(call.step == "G" or call.kinds[0] == "real"), sum(len(logits) for logits in call.outputs)
        for logits, grad in zip(call.outputs, call.grads):
            torch.testing.assert_close(grad, (logits.detach().sigmoid() - target) / n)


def assert_dcgan_guidelines(generator_layers, discriminator_layers, norm=nn.BatchNorm2d):
    """Radford et al.'s architecture guidelines on G's and D's layers, in order: only convolutions, strided (no
    pooling), no fully connected hidden layer; in G transposed ones, BatchNorm and ReLU after each but the last, Tanh at
    the output; in D LeakyReLU(0.2) after each but the last and `norm` after each but the first (none at the input)
    and the last, which gives a logit (no sigmoid)."""

    def blocks(layers, conv):  # each convolution with the layers after it, as types
        assert isinstance(layers[0], conv), layers[0]
        groups = []
        for layer in layers:
            if isinstance(layer, conv):
                groups.append([])
            groups[-1].append(layer)
        return [[type(layer) for layer in group] for group in groups], [group[0] for group in groups]

    (g, g_convs), (d, d_convs) = blocks(generator_layers, nn.ConvTranspose2d), blocks(discriminator_layers, nn.Conv2d)
    assert g == [[nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU]] * (len(g) - 1) + [[nn.ConvTranspose2d, nn.Tanh]]
    assert d == [[nn.Conv2d, nn.LeakyReLU]] + [[nn.Conv2d, norm, nn.LeakyReLU]] * (len(d) - 2) + [[nn.Conv2d]]
    assert {layer.negative_slope for layer in discriminator_layers if isinstance(layer, nn.LeakyReLU)} == {0.2}
    assert {conv.stride for conv in g_convs[1:] + d_convs[:-1]} == {(2, 2)}  # but G's lift of z and D's last


def assert_dcgan_nets(spied):
    """The spied run's G and D follow DCGAN's guidelines and initialisation, and D outputs logits."""
    generator, discriminator = spied.first["generator"], spied.first["discriminator"]
    assert_dcgan_guidelines(list(generator.net), list(discriminator.net))
    assert_dcgan_init(generator)
    assert_dcgan_init(discriminator)
    assert any((call.outputs[0] < 0).any() for call in spied.calls)  # logits, not probabilities


def assert_dcgan_init(net):
    """DCGAN's initialisation: (transposed) convolution weights from N(0, 0.02) and biases 0, BatchNorm scales from
    N(1, 0.02) and shifts 0, where PyTorch's own draws weights and biases uniformly and sets scales to 1."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = module.weight.detach()
            assert abs(weight.mean()) < 0.01 and abs(weight.std() - 0.02) < 0.005, module
            assert module.bias is None or not module.bias.any(), module
        elif isinstance(module, nn.BatchNorm2d):
            scale = module.weight.detach()
            assert (scale - 1).abs().max() < 0.1 and (scale != 1).any() and not module.bias.any(), module


def read_metrics(run_dir, name="metrics.csv"):
    """metrics.csv (or scores.csv) as a list of dicts, without `seconds`: the one column that differs
    between otherwise identical runs."""
    with open(run_dir / name, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def log_sigmoid(x):
    """log(1 / (1 + e^-x)), by hand: the tests' reference for the cross-entropy losses."""
    return -math.log1p(math.exp(-x))


def write_images(folder, count, size=(12, 10), mode="RGB", start=0):
    """Write `count` random images into `folder` (created), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    for i in range(start, start + count):
        array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(folder / f"img{i:04d}.png")
    return folder


@pytest.fixture(autouse=True)
def no_plots_at_finish(request, monkeypatch):
    """Every run draws its plots at the end, two seconds each: skipped but in the tests marked `plots`."""
    if not request.node.get_closest_marker("plots"):
        monkeypatch.setattr(plots, "save_plots", skip_plots)


def skip_plots(folder):  # plots.save_plots in the runs that do not test it
    return []


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
