"""Regenerates the reference data of LpipsTests (run once here, results committed).

    /usr/bin/python3 make_lpips_fixture.py      # in this folder; Debian 12: python3-torch 1.13, python3-torchvision 0.14

Nothing can be downloaded here, so the networks carry deterministic pseudo-random weights instead of ImageNet's
and lpips': every tensor is `fill(name, shape)` below, built on make_testdata.py's `uniform` stream, and
LpipsTests recomputes the same weights in C#. Only inputs and expected distances are committed.

- lpips_state_dict.txt: backbone, name and shape of every tensor of LPIPS-vgg and LPIPS-alex: torchvision's
  vgg16().features / alexnet().features (prefixed `features.`) and the lpips package's NetLinLayer weights
  `lin{k}.model.1.weight`, in that order.
- lpips_cases.safetensors (written by tools/convert_lpips_weights.py's writer): for each case `{case}.x`,
  `{case}.y` (float32 images), `{case}.resize` (int64 [1], 0 = no resize) and the distances `{case}.d_f32` /
  `{case}.d_f64` computed in float32 / float64. The reference is the lpips v0.1 forward (lpips/lpips.py
  LPIPS.forward with lpips=True, spatial=False, normalize=False, version 0.1; trunk slices of
  lpips/pretrained_networks.py), preceded by DMD's preprocessing: greyscale repeated to RGB, then a bilinear
  resize (align_corners=False) to `resize` x `resize`. The resize is 64 for the vgg case rather than DMD's 224
  to keep the test fast; the alex case uses 224.

The script also runs tools/convert_lpips_weights.py on these weights (saved as a torchvision checkpoint and an
lpips lin .pth) and checks that the file it writes holds exactly the expected names, shapes and values.
"""
import importlib.util
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from make_testdata import uniform  # noqa: E402  (splitmix64 stream shared with InceptionTests)

spec = importlib.util.spec_from_file_location("convert_lpips_weights",
                                              os.path.join(HERE, "../../../../tools/convert_lpips_weights.py"))
convert_lpips = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_lpips)

TAP_SLICES = {"vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)],   # relu1_2 .. relu5_3
              "alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]}    # relu1 .. relu5
CHANNELS = {"vgg": [64, 128, 256, 512, 512], "alex": [64, 192, 384, 256, 256]}


def fill(name, shape):
    """Deterministic weights: He-uniform convolutions, small biases, non-negative lin weights (as lpips' are)."""
    n = int(np.prod(shape))
    u = uniform(name, n)
    if name.startswith("features.") and name.endswith(".weight"):
        out = (2.0 * u - 1.0) * math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
    elif name.startswith("features.") and name.endswith(".bias"):
        out = 0.1 * (2.0 * u - 1.0)
    elif name.startswith("lin"):
        out = u
    else:
        raise KeyError(name)
    return out.astype(np.float32).reshape(shape)


class ScalingLayer(nn.Module):  # lpips.lpips.ScalingLayer
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.Tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.Tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):  # lpips.lpips.NetLinLayer(use_dropout=True)
    def __init__(self, c):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False))


class Reference(nn.Module):
    """LPIPS v0.1: the lpips package's forward on torchvision's trunk, with DMD's resize in front."""

    def __init__(self, net):
        super().__init__()
        self.features = (torchvision.models.vgg16 if net == "vgg" else torchvision.models.alexnet)(weights=None).features
        self.lins = nn.ModuleList([NetLinLayer(c) for c in CHANNELS[net]])
        self.scaling_layer = ScalingLayer()
        # the slices share the modules of `features`, as pretrained_networks.py's do
        self.slices = [nn.Sequential(*[self.features[i] for i in range(a, b)]) for a, b in TAP_SLICES[net]]

    def named_weights(self):
        sd = {"features." + k: v for k, v in self.features.state_dict().items()}
        sd.update({f"lin{k}.model.1.weight": lin.model[1].weight.detach() for k, lin in enumerate(self.lins)})
        return sd

    def forward(self, in0, in1, resize):
        if in0.shape[1] == 1:
            in0, in1 = in0.repeat(1, 3, 1, 1), in1.repeat(1, 3, 1, 1)
        if resize and tuple(in0.shape[2:]) != (resize, resize):
            in0 = F.interpolate(in0, size=(resize, resize), mode="bilinear", align_corners=False)
            in1 = F.interpolate(in1, size=(resize, resize), mode="bilinear", align_corners=False)
        # LPIPS.forward, normalize=False, version '0.1'
        h0, h1 = self.scaling_layer(in0), self.scaling_layer(in1)
        outs0, outs1 = [], []
        for s in self.slices:
            h0, h1 = s(h0), s(h1)
            outs0.append(h0)
            outs1.append(h1)
        val = 0
        for kk in range(len(self.slices)):
            diff = (normalize_tensor(outs0[kk]) - normalize_tensor(outs1[kk])) ** 2
            val = val + self.lins[kk].model(diff).mean([2, 3], keepdim=True)  # spatial_average
        return val.flatten()  # LPIPS returns (B, 1, 1, 1)


def normalize_tensor(x, eps=1e-10):  # lpips.normalize_tensor
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


def build(net):
    model = Reference(net)
    weights = model.named_weights()
    with torch.no_grad():
        for name, t in weights.items():
            t.copy_(torch.from_numpy(fill(name, tuple(t.shape))))
    return model.eval(), weights


def images(name, shape, like=None):
    """Uniform images in [-1, 1]; with `like`, a pair of it: sample 0 unrelated, sample 1 `like` plus 10% noise."""
    u = torch.from_numpy((2.0 * uniform(name, int(np.prod(shape))) - 1.0).astype(np.float32).reshape(shape))
    if like is None:
        return u
    u[1] = (like[1] + 0.1 * u[1]).clamp(-1, 1)
    return u


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    kinds = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], kinds[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items()}


def check_converter(net, weights):
    with tempfile.TemporaryDirectory() as tmp:
        trunk, lin, out = (os.path.join(tmp, f) for f in ("trunk.pth", "lin.pth", "out.safetensors"))
        torch.save({k: v for k, v in weights.items() if k.startswith("features.")}, trunk)
        torch.save({k: v for k, v in weights.items() if k.startswith("lin")}, lin)
        convert_lpips.main(["--net", net, "--lin", lin, "--torchvision", trunk, "--out", out])
        written = read_safetensors(out)
    expected = convert_lpips.expected_shapes(net)
    assert list(written) == list(expected), (list(written), list(expected))
    for k, v in written.items():
        assert tuple(v.shape) == expected[k] and np.array_equal(v, weights[k].numpy()), k


def main():
    cases = {"vgg_64": ("vgg", 64, (2, 3, 32, 32)),      # resized 32 -> 64
             "vgg_none": ("vgg", 0, (2, 3, 24, 40)),     # no resize; odd sizes exercise the pools' floor
             "alex_224": ("alex", 224, (2, 1, 28, 28))}  # greyscale, resized 28 -> 224 as DMD does
    models = {net: build(net) for net in ("vgg", "alex")}
    with open(os.path.join(HERE, "lpips_state_dict.txt"), "w") as f:
        for net, (_, weights) in models.items():
            for k, t in weights.items():
                f.write(f"{net}\t{k}\t{','.join(map(str, t.shape))}\n")
    for net, (_, weights) in models.items():
        check_converter(net, weights)

    out = {}
    for case, (net, resize, shape) in cases.items():
        model = models[net][0]
        x = images(case + ".x", shape)
        y = images(case + ".y", shape, like=x)
        with torch.no_grad():
            d32 = model(x, y, resize)
            d64 = model.double()(x.double(), y.double(), resize)
            model.float()
        out.update({f"{case}.x": x, f"{case}.y": y, f"{case}.resize": torch.tensor([resize], dtype=torch.int64),
                    f"{case}.d_f32": d32, f"{case}.d_f64": d64})
        print(f"{case}: d_f32 {d32.tolist()}  d_f64 {d64.tolist()}  rel diff {((d32.double() - d64) / d64).abs().max():.2g}")
    convert_lpips.save_safetensors({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "lpips_cases.safetensors"))


if __name__ == "__main__":
    main()
