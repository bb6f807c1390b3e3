"""Convert LPIPS v0.1 weights (torchvision's ImageNet trunk + the lpips package's linear layers) into the one
safetensors file that Dmd's LPIPS (src/Dmd/Metrics/Lpips.cs) loads.

    python tools/convert_lpips_weights.py --net vgg  --lin lpips/weights/v0.1/vgg.pth  --out lpips-vgg.safetensors
    python tools/convert_lpips_weights.py --net alex --lin lpips/weights/v0.1/alex.pth --out lpips-alex.safetensors

--lin is the weights file shipped inside the `lpips` Python package (lpips/weights/v0.1/{vgg,alex}.pth, also in
github.com/richzhang/PerceptualSimilarity). The trunk is torchvision's vgg16 / alexnet with weights IMAGENET1K_V1,
which torchvision downloads, or --torchvision FILE: that checkpoint already on disk (vgg16-397923af.pth,
alexnet-owt-7be5be79.pth, e.g. from ~/.cache/torch/hub/checkpoints). Needs PyTorch (and torchvision unless
--torchvision is given), plus either the safetensors package or numpy.

Written names: features.{i}.weight / features.{i}.bias (torchvision's) and lin{k}.model.1.weight [1, C_k, 1, 1]
(the lpips package's); nothing else.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

# (conv index in `features`, in channels, out channels, kernel) and the channels of the five LPIPS taps
TRUNKS = {
    "vgg": ([(0, 3, 64, 3), (2, 64, 64, 3), (5, 64, 128, 3), (7, 128, 128, 3), (10, 128, 256, 3), (12, 256, 256, 3),
             (14, 256, 256, 3), (17, 256, 512, 3), (19, 512, 512, 3), (21, 512, 512, 3), (24, 512, 512, 3),
             (26, 512, 512, 3), (28, 512, 512, 3)], [64, 128, 256, 512, 512]),
    "alex": ([(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)],
             [64, 192, 384, 256, 256]),
}


def expected_shapes(net):
    convs, chns = TRUNKS[net]
    shapes = {}
    for i, cin, cout, k in convs:
        shapes[f"features.{i}.weight"] = (cout, cin, k, k)
        shapes[f"features.{i}.bias"] = (cout,)
    for k, c in enumerate(chns):
        shapes[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
    return shapes


def load_state_dict(path):
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # PyTorch older than 1.13
        sd = torch.load(path, map_location="cpu")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        sys.exit(f"{path} is not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def torchvision_trunk(net):
    import torchvision
    make = torchvision.models.vgg16 if net == "vgg" else torchvision.models.alexnet
    try:
        return make(weights="IMAGENET1K_V1").state_dict()
    except TypeError:  # torchvision older than 0.13
        return make(pretrained=True).state_dict()


def convert(net, trunk_sd, lin_sd):
    """The tensors of the output file from a torchvision state dict (whole model or `features` alone) and lpips'."""
    shapes = expected_shapes(net)
    tensors = {}
    for name in shapes:
        if name.startswith("features."):
            src = trunk_sd.get(name, trunk_sd.get(name[len("features."):]))
        else:
            src = lin_sd.get(name)
        if src is None:
            sys.exit(f"{name} is missing: are these the {net} weights (torchvision {'vgg16' if net == 'vgg' else 'alexnet'}, lpips v0.1 {net}.pth)?")
        if tuple(src.shape) != shapes[name]:
            sys.exit(f"{name} has shape {list(src.shape)}, LPIPS-{net} needs {list(shapes[name])}: wrong --net?")
        tensors[name] = src.detach().float().contiguous()
    return tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", required=True, choices=sorted(TRUNKS))
    ap.add_argument("--lin", required=True, help="lpips package's weights/v0.1/{vgg,alex}.pth")
    ap.add_argument("--out", required=True, help="safetensors file to write")
    ap.add_argument("--torchvision", default=None, help="torchvision ImageNet checkpoint on disk instead of a download")
    args = ap.parse_args(argv)
    trunk = load_state_dict(args.torchvision) if args.torchvision else torchvision_trunk(args.net)
    tensors = convert(args.net, trunk, load_state_dict(args.lin))
    save_safetensors(tensors, args.out)
    print(f"wrote {len(tensors)} tensors (LPIPS-{args.net}) to {args.out}")


if __name__ == "__main__":
    main()
