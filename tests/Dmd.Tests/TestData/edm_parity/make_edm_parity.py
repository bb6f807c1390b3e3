"""Regenerates edm_parity_*.safetensors: tiny EDM U-Nets with their weights, inputs and outputs (see README.md).

    /usr/bin/python3 make_edm_parity.py --edm /path/to/edm      # writes the four files beside this script

--edm is a checkout of github.com/NVlabs/edm at commit 008a4e5316c8e3bfe61a62f874bddba254295afb; its
training/networks.py (SongUNet, DhariwalUNet) is imported as it is. Needs torch and numpy (Debian 12:
python3-torch 1.13, python3-numpy, python3-requests for dnnlib). Runs on the CPU in float32 in a few seconds.

Every random value comes from torch's CPU generator seeded per file (SEEDS below), so the weights and inputs are
the same on every run and machine; the outputs are computed by libtorch's float32 kernels, whose rounding may
differ between CPUs/builds in the last bits (a rerun elsewhere can differ by ~1e-7, far below the 2e-5 the tests
allow). The script checks each float32 output against the same network run in float64.

File layout (safetensors written by tools/safetensors_io.py, float32): the module's state_dict() under EDM's names (no prefix), every
parameter moved off EDM's init by N(0, 0.05^2) (so the zero-/1e-5-initialised layers carry signal; buffers such
as resample_filter and map_noise.freqs are kept), then
  io.x                 (2, 3, 16, 16) ~ N(0, 1)
  io.c_noise           [ln(0.3)/4, ln(20)/4]  (EDMPrecond's c_noise for sigma 0.3 and 20)
  io.labels            one-hot of classes 1 and 3 of 4
  io.augment_labels    (2, 9) ~ N(0, 0.5^2)
  io.output            net(x, c_noise, labels, augment_labels)    (module in eval mode)
  io.output_no_augment net(x, c_noise, labels)
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "tools"))
from safetensors_io import save_safetensors  # noqa: E402  (the repository's one safetensors writer)

EDM_COMMIT = "008a4e5316c8e3bfe61a62f874bddba254295afb"
COMMON = dict(img_resolution=16, in_channels=3, label_dim=4, augment_dim=9, num_blocks=1, attn_resolutions=[8], dropout=0)
NETWORKS = {  # file suffix: (EDM class, constructor arguments beyond COMMON)
    "ddpmpp": ("SongUNet", dict(out_channels=3, model_channels=8, channel_mult=[1, 2])),
    "ncsnpp": ("SongUNet", dict(out_channels=3, model_channels=8, channel_mult=[1, 2], embedding_type="fourier",
                                channel_mult_noise=2, encoder_type="residual", resample_filter=[1, 3, 3, 1])),
    "song_skip": ("SongUNet", dict(out_channels=2, model_channels=8, channel_mult=[1, 2, 2], encoder_type="skip",
                                   decoder_type="skip")),
    # 16 channels: no attention heads (EDM's DhariwalUNet has 64 channels per head), as in the README
    "adm": ("DhariwalUNet", dict(out_channels=3, model_channels=16, channel_mult=[1, 1])),
}
SEEDS = {"ddpmpp": 1001, "ncsnpp": 1002, "song_skip": 1003, "adm": 1004}
PERTURB_STD = 0.05


def make(kind):
    """The network, its perturbed parameters and its inputs, all from the file's seed."""
    cls_name, kwargs = NETWORKS[kind]
    torch.manual_seed(SEEDS[kind])
    net = getattr(networks, cls_name)(**COMMON, **kwargs)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.add_(torch.randn(p.shape) * PERTURB_STD)
    x = torch.randn(2, 3, 16, 16)
    augment_labels = torch.randn(2, 9) * 0.5
    c_noise = torch.tensor([math.log(0.3) / 4, math.log(20) / 4])
    labels = torch.nn.functional.one_hot(torch.tensor([1, 3]), 4).float()
    return net.eval(), x, c_noise, labels, augment_labels


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edm", required=True, help=f"checkout of github.com/NVlabs/edm (commit {EDM_COMMIT})")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="folder for the .safetensors files")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.edm))
    global torch, networks
    import torch
    from training import networks
    torch.set_num_threads(1)
    for kind in NETWORKS:
        net, x, c_noise, labels, augment_labels = make(kind)
        with torch.no_grad():
            output = net(x, c_noise, labels, augment_labels)
            output_no_augment = net(x, c_noise, labels)
            net64 = make(kind)[0].double()
            ref = net64(x.double(), c_noise.double(), labels.double(), augment_labels.double())
        err = (output.double() - ref).abs().max().item()
        assert torch.isfinite(output).all() and torch.isfinite(output_no_augment).all(), kind
        assert err < 1e-5, f"{kind}: float32 and float64 outputs differ by {err}"
        tensors = dict(net.state_dict())
        tensors.update({"io.x": x, "io.c_noise": c_noise, "io.labels": labels, "io.augment_labels": augment_labels,
                        "io.output": output, "io.output_no_augment": output_no_augment})
        path = os.path.join(a.out, f"edm_parity_{kind}.safetensors")
        save_safetensors(tensors, path)
        print(f"wrote {path}: {len(tensors) - 6} weights, |output| max {output.abs().max():.3f}, "
              f"float32 vs float64 {err:.1e}")


if __name__ == "__main__":
    main()
