"""Regenerates edm_keys_*.txt: name and shape of every state-dict entry of EDM's full-size networks.

    /usr/bin/python3 make_edm_keys.py --edm /path/to/edm        # writes the three lists beside this script

--edm is a checkout of github.com/NVlabs/edm at commit 008a4e5316c8e3bfe61a62f874bddba254295afb (its
training/networks.py, dnnlib and torch_utils are imported as they are). Needs torch and numpy (Debian 12:
python3-torch 1.13, python3-numpy; dnnlib also imports requests: python3-requests). No random values: the output
depends only on EDM's code, so a rerun is byte-identical.

The networks are built the way EDM's train.py builds them for the three published checkpoints (train.py's
--arch/--precond/--cond/--augment options turned into network_kwargs, then
dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution=..., img_channels=..., label_dim=...)):

  cifar10_cond_ddpmpp    edm-cifar10-32x32-cond-vp.pkl      --cond=1 --arch=ddpmpp   (augment 0.12: augment_dim 9)
  cifar10_uncond_ncsnpp  edm-cifar10-32x32-uncond-ve.pkl    --cond=0 --arch=ncsnpp   (augment 0.12: augment_dim 9)
  imagenet64_cond_adm    edm-imagenet-64x64-cond-adm.pkl    --cond=1 --arch=adm      (--augment=0: no augment_dim)

The names do not depend on the preconditioning (VP/VE/EDM all hold the network as .model), so all three use
EDMPrecond. Format: "# NAME: N tensors, V M values" (V = total values / 1e6, two decimals), then one
"name [d0, d1, ...]" line per entry in state_dict() order (parameters and persistent buffers).
"""
import argparse
import os
import sys

EDM_COMMIT = "008a4e5316c8e3bfe61a62f874bddba254295afb"

# train.py's network_kwargs for each architecture (lines "if opts.arch == 'ddpmpp': ..." and the --augment / --dropout
# options); dropout and use_fp16 do not change the state dict but are set as train.py sets them.
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
ADM = dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4])

NETWORKS = {
    "cifar10_cond_ddpmpp": dict(DDPMPP, img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, dropout=0.13),
    "cifar10_uncond_ncsnpp": dict(NCSNPP, img_resolution=32, img_channels=3, label_dim=0, augment_dim=9, dropout=0.13),
    "imagenet64_cond_adm": dict(ADM, img_resolution=64, img_channels=3, label_dim=1000, dropout=0.10),
}


def key_list(name, net):
    sd = net.state_dict()
    values = sum(v.numel() for v in sd.values())
    lines = [f"# {name}: {len(sd)} tensors, {values / 1e6:.2f} M values"]
    lines += [f"{k} [{', '.join(str(d) for d in v.shape)}]" for k, v in sd.items()]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edm", required=True, help=f"checkout of github.com/NVlabs/edm (commit {EDM_COMMIT})")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="folder for edm_keys_*.txt")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.edm))
    import torch
    import dnnlib
    torch.manual_seed(0)  # the shapes do not depend on it; only keeps the (discarded) initial values fixed
    for name, kwargs in NETWORKS.items():
        with torch.no_grad():
            net = dnnlib.util.construct_class_by_name(class_name="training.networks.EDMPrecond", use_fp16=False, **kwargs)
        path = os.path.join(a.out, f"edm_keys_{name}.txt")
        with open(path, "w", newline="\n") as f:
            f.write(key_list(name, net))
        print(f"wrote {path}: {len(net.state_dict())} tensors")
        del net


if __name__ == "__main__":
    main()
