"""Regenerates the reference data of LpipsTests (run once here, results committed) with the lpips package's own code.

    G=/path/to/PerceptualSimilarity.git          # github.com/richzhang/PerceptualSimilarity, the lpips package's source
    mkdir /tmp/lpips-src && git --git-dir=$G archive v0.1.4 lpips | tar -x -C /tmp/lpips-src
    /usr/bin/python3 make_lpips_fixture.py --lpips-src /tmp/lpips-src    # in this folder

Reference: lpips 0.1.4 (the latest PyPI release, August 2021; setup.py says 0.1.4 at that tag), from tag v0.1.4 =
commit 3767a70e437c4020decf5888a83f438d2726a10f of richzhang/PerceptualSimilarity, whose folder `lpips/` is the
package's code (setup.py: packages=['lpips']). Nothing of it is copied into this repository: the script puts
--lpips-src first on sys.path and runs `import lpips`, and it checks the git blob ids of lpips/__init__.py,
lpips/lpips.py and lpips/pretrained_networks.py (the files of the forward) against that commit, so the fixture
cannot silently come from other code. Interpreter: Debian 12's /usr/bin/python3 with
python3-torch 1.13 and python3-torchvision 0.14, plus python3-scipy and python3-tqdm, which `import lpips` needs
(lpips/trainer.py imports them); nothing is stubbed.

Nothing can be downloaded here, so the networks carry deterministic pseudo-random weights instead of ImageNet's and
lpips': every tensor is `fill(name, shape)` below (names as in torchvision's checkpoint and lpips' lin .pth),
built on make_testdata.py's `uniform` stream, and LpipsTests recomputes the same weights in C#. They enter the
package through its own loading path, unmodified: `lpips.LPIPS(net=..., version='0.1', pretrained=True,
model_path=LIN)` with the default pnet_rand=False, so lpips/pretrained_networks.py asks torchvision for
`vgg16(pretrained=True)` / `alexnet(pretrained=True)`, which torchvision reads from its download cache, where the
script has put a torchvision-format checkpoint of the fill() weights (classifier zeros: LPIPS never runs it) under
the name torchvision expects, in a temporary torch.hub folder; and LPIPS.__init__ loads the lin weights from LIN,
a lin .pth of fill() weights like lpips/weights/v0.1/{vgg,alex}.pth. The script then checks that every tensor of
the built model equals fill() of its torchvision / lpips name (so nothing was left at a random init by the
package's load_state_dict(strict=False)), which also pins the mapping net.slice{k}.{i} -> features.{i}.

- lpips_state_dict.txt: backbone, name and shape of every tensor of LPIPS-vgg and LPIPS-alex, in the package's
  state-dict order without its two ScalingLayer buffers: the trunk under torchvision's names `features.{i}.weight`
  / `features.{i}.bias`, then the package's `lin{k}.model.1.weight`.
- lpips_cases.safetensors (written by tools/convert_lpips_weights.py's writer): for each case `{case}.x`,
  `{case}.y` (float32 images), `{case}.resize` (int64 [1], 0 = no resize) and the distances `{case}.d_f32` /
  `{case}.d_f64`: the package's `LPIPS.forward(in0, in1)` (normalize=False, retPerLayer=False; the model in eval
  mode as the package leaves it; `.double()` for d_f64), flattened from (B, 1, 1, 1) to (B,). Before it, outside
  the package, DMD's preprocessing (Lpips.cs does the same): greyscale repeated to RGB, then a bilinear resize
  (align_corners=False) to `resize` x `resize`. The resize is 64 for the vgg case rather than DMD's 224 to keep the
  test fast; the alex case uses 224.

The script also runs tools/convert_lpips_weights.py on the same two files (the torchvision checkpoint, with its
classifier, and the lin .pth) and checks that the file it writes holds exactly the expected names, shapes and values.
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from make_testdata import uniform  # noqa: E402  (splitmix64 stream shared with InceptionTests)

spec = importlib.util.spec_from_file_location("convert_lpips_weights",
                                              os.path.join(HERE, "../../../../tools/convert_lpips_weights.py"))
convert_lpips = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_lpips)

UPSTREAM = "richzhang/PerceptualSimilarity tag v0.1.4, commit 3767a70e437c4020decf5888a83f438d2726a10f (lpips 0.1.4)"
UPSTREAM_BLOBS = {"lpips/__init__.py": "83f441548bc206f1a2caeb147ab72406d475930b",
                  "lpips/lpips.py": "b5a3937c2dd17a1ce9407e977925a0470c688a6f",
                  "lpips/pretrained_networks.py": "a70ebbeab1618da4fe2538833f049dc569f1eea1"}
TORCHVISION = {"vgg": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
               "alex": (torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1)}


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


def git_blob_id(path):
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def import_lpips(src):
    """`import lpips` from the fetched source folder (the one that holds lpips/), after checking it is v0.1.4's."""
    for rel, blob in UPSTREAM_BLOBS.items():
        path = os.path.join(src, rel)
        if not os.path.isfile(path) or git_blob_id(path) != blob:
            sys.exit(f"{path} is not the file of {UPSTREAM} (git blob {blob}); "
                     f"extract it with: git --git-dir=PerceptualSimilarity.git archive v0.1.4 lpips | tar -x -C {src}")
    sys.path.insert(0, os.path.abspath(src))
    import lpips
    assert os.path.dirname(os.path.abspath(lpips.__file__)) == os.path.join(os.path.abspath(src), "lpips"), lpips.__file__
    return lpips


def dmd_name(name):
    """The package's state-dict name -> torchvision's / lpips' checkpoint name (None for the ScalingLayer buffers;
    `lins.{k}.*`, the package's second name of `lin{k}.*`, is returned as is and skipped by the caller)."""
    if name.startswith("scaling_layer."):
        return None
    m = re.fullmatch(r"net\.slice\d+\.(\d+)\.(weight|bias)", name)
    return f"features.{m.group(1)}.{m.group(2)}" if m else name


def build(lpips, net, tmp):
    """LPIPS-{net} v0.1 as the package builds it, with fill() weights fed through torchvision's cache and model_path."""
    make, weights_enum = TORCHVISION[net]
    trunk = make(weights=None).state_dict()
    with torch.no_grad():
        for k, t in trunk.items():
            t.copy_(torch.from_numpy(fill(k, tuple(t.shape))) if k.startswith("features.") else torch.zeros_like(t))
    cache = os.path.join(tmp, "hub", "checkpoints")
    os.makedirs(cache, exist_ok=True)
    trunk_file = os.path.join(cache, os.path.basename(urlparse(weights_enum.url).path))  # e.g. vgg16-397923af.pth
    torch.save(trunk, trunk_file)
    del trunk
    lin_file = os.path.join(tmp, f"lin-{net}.pth")  # like lpips/weights/v0.1/{net}.pth
    torch.save({f"lin{k}.model.1.weight": torch.from_numpy(fill(f"lin{k}.model.1.weight", (1, c, 1, 1)))
                for k, c in enumerate(convert_lpips.TRUNKS[net][1])}, lin_file)

    torch.hub.set_dir(os.path.join(tmp, "hub"))
    model = lpips.LPIPS(pretrained=True, net=net, version="0.1", model_path=lin_file)
    assert not model.training

    shapes, sd = {}, model.state_dict()
    for k, t in sd.items():
        name = dmd_name(k)
        if name is None:
            continue
        alias = re.fullmatch(r"lins\.(\d+)\.(.*)", name)  # self.lins is a ModuleList of the same lin0..lin4
        if alias:
            assert t.data_ptr() == sd[f"lin{alias.group(1)}.{alias.group(2)}"].data_ptr(), k
            continue
        assert torch.equal(t, torch.from_numpy(fill(name, tuple(t.shape)))), f"{k} ({name}) is not fill()'s"
        shapes[name] = tuple(t.shape)
    expected = convert_lpips.expected_shapes(net)
    assert shapes == expected, (shapes, expected)
    return model, shapes, trunk_file, lin_file


def dmd_preprocess(x, resize):
    """What Lpips.cs does before LPIPS proper: greyscale to RGB, bilinear resize (none when resize is 0)."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if resize and tuple(x.shape[2:]) != (resize, resize):
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    return x


def distances(model, x, y, resize):
    with torch.no_grad():
        return model(dmd_preprocess(x, resize), dmd_preprocess(y, resize)).flatten()  # LPIPS returns (B, 1, 1, 1)


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


def check_converter(net, trunk_file, lin_file, tmp):
    out = os.path.join(tmp, f"lpips-{net}.safetensors")
    convert_lpips.main(["--net", net, "--lin", lin_file, "--torchvision", trunk_file, "--out", out])
    written = read_safetensors(out)
    expected = convert_lpips.expected_shapes(net)
    assert list(written) == list(expected), (list(written), list(expected))
    for k, v in written.items():
        assert tuple(v.shape) == expected[k] and np.array_equal(v, fill(k, expected[k])), k


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lpips-src", required=True, help="folder holding lpips/ of " + UPSTREAM)
    args = ap.parse_args()
    lpips = import_lpips(args.lpips_src)
    print(f"lpips from {os.path.dirname(lpips.__file__)} ({UPSTREAM}); torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")

    cases = {"vgg_64": ("vgg", 64, (2, 3, 32, 32)),      # resized 32 -> 64
             "vgg_none": ("vgg", 0, (2, 3, 24, 40)),     # no resize; odd sizes exercise the pools' floor
             "alex_224": ("alex", 224, (2, 1, 28, 28))}  # greyscale, resized 28 -> 224 as DMD does
    out = {}
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(HERE, "lpips_state_dict.txt"), "w") as listing:
        for net in ("vgg", "alex"):
            model, shapes, trunk_file, lin_file = build(lpips, net, tmp)
            for k, shape in shapes.items():
                listing.write(f"{net}\t{k}\t{','.join(map(str, shape))}\n")
            check_converter(net, trunk_file, lin_file, tmp)
            os.remove(trunk_file)
            for case, (case_net, resize, shape) in cases.items():
                if case_net != net:
                    continue
                x = images(case + ".x", shape)
                y = images(case + ".y", shape, like=x)
                d32 = distances(model.float(), x, y, resize)
                d64 = distances(model.double(), x.double(), y.double(), resize)
                out.update({f"{case}.x": x, f"{case}.y": y, f"{case}.resize": torch.tensor([resize], dtype=torch.int64),
                            f"{case}.d_f32": d32, f"{case}.d_f64": d64})
                print(f"{case}: d_f32 {d32.tolist()}  d_f64 {d64.tolist()}  "
                      f"rel diff {((d32.double() - d64) / d64).abs().max():.2g}")
            del model
    convert_lpips.save_safetensors({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "lpips_cases.safetensors"))


if __name__ == "__main__":
    main()
