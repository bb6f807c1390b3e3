"""Convert pytorch-fid's FID Inception weights (.pth) into the safetensors file that Dmd's FID metric loads.

    python tools/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth fid_inception.safetensors

The .pth is the FID_WEIGHTS_URL file of pytorch-fid (src/pytorch_fid/inception.py); download it yourself.
Needs PyTorch, plus either the safetensors package or numpy. Tensor names are kept as they are
(e.g. Conv2d_1a_3x3.conv.weight, Mixed_7c.branch_pool.bn.running_var, fc.weight [1008, 2048]);
BatchNorm num_batches_tracked counters are added when the file lacks them.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

EXPECTED_ENTRIES = 566  # 94 conv + BatchNorm units x 6 tensors, fc.weight, fc.bias


def load_state_dict(path):
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # PyTorch older than 1.13
        sd = torch.load(path, map_location="cpu")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        sys.exit(f"{path} is not a state dict of tensors")
    return dict(sd)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    sd = load_state_dict(src)
    for key in [k for k in sd if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        sd.setdefault(counter, torch.tensor(0, dtype=torch.int64))
    unexpected = [k for k in sd if k.startswith("AuxLogits.")]
    if unexpected or "fc.weight" not in sd or tuple(sd["fc.weight"].shape) != (1008, 2048):
        sys.exit(f"{src} does not look like pytorch-fid's FID Inception weights (fc.weight must be [1008, 2048], no AuxLogits)")
    if len(sd) != EXPECTED_ENTRIES:
        sys.exit(f"{src} has {len(sd)} tensors, the FID Inception network has {EXPECTED_ENTRIES}")
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_safetensors(tensors, dst)
    print(f"wrote {len(tensors)} tensors to {dst}")


if __name__ == "__main__":
    main()
