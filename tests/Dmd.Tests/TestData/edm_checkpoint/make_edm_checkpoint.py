"""Regenerates the tiny EDM training snapshots of this folder, converts them with tools/convert_edm_checkpoint.py, and
stores EDM's own denoiser outputs for EdmCheckpointTests (see README.md).

    /usr/bin/python3 make_edm_checkpoint.py --edm /path/to/edm         # writes everything beside this script

--edm is a checkout of github.com/NVlabs/edm at commit 008a4e5316c8e3bfe61a62f874bddba254295afb. Needs torch and
numpy (Debian 12: python3-torch 1.13, python3-numpy, python3-requests for dnnlib). Runs on the CPU in seconds.

For each NAME in SNAPSHOTS it does what EDM's train.py + training/training_loop.py do, at a tiny size:
  1. network_kwargs as train.py sets them for --arch (class_name training.networks.EDMPrecond), the network built
     with dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution, img_channels, label_dim), as the
     training loop builds it; EDMLoss and (with augmentation) AugmentPipe built the same way;
  2. "training": every parameter moved off its initial value by N(0, 0.05^2) (seeded), so the zero/1e-5
     initialised output layers carry signal;
  3. the snapshot as the training loop writes network-snapshot-*.pkl: dict(ema, loss_fn, augment_pipe,
     dataset_kwargs), each module deep-copied, .eval().requires_grad_(False).cpu(), plain pickle.dump; the
     classes are EDM's torch_utils.persistence classes, so the pickle embeds the source of training/networks.py,
     loss.py and augment.py;
  4. the .pkl loaded back with pickle.load and its 'ema' network evaluated: D(x; sigma, labels) =
     ema(x, sigma, labels) for a fixed batch, stored in NAME_io.safetensors (io.x, io.sigma, io.labels,
     io.output; float32, checked against the same network in float64);
  5. tools/convert_edm_checkpoint.py --edm EDM NAME.pkl NAME.safetensors, which also writes NAME.json.

The .pkl files are kept only with --keep-pkl (they are pickles: only the converted output is committed).
Weights and inputs come from torch's seeded CPU generator, so they are the same on every run; outputs are
libtorch float32 results whose last bits may differ between CPUs (~1e-7).
"""
import argparse
import copy
import os
import pickle
import subprocess
import sys
import tempfile

EDM_COMMIT = "008a4e5316c8e3bfe61a62f874bddba254295afb"
HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "..", "tools"))
CONVERTER = os.path.join(TOOLS, "convert_edm_checkpoint.py")
sys.path.insert(0, TOOLS)
from safetensors_io import save_safetensors  # noqa: E402  (the repository's one safetensors writer)

# train.py's network_kwargs for --arch=ddpmpp / --arch=adm with --precond=edm, made tiny with --cbase / --cres, plus
# num_blocks 1 and attention at 8x8 (16x16 images), which train.py leaves at the networks' defaults.
SNAPSHOTS = {
    # --cond=1 --arch=ddpmpp --augment=0.12 --dropout=0.13 --cbase=8 --cres=1,2: augment_dim 9
    "edm_tiny_ddpmpp": dict(
        seed=2001, resolution=16, channels=3, label_dim=4, augment=0.12,
        network_kwargs=dict(class_name="training.networks.EDMPrecond", model_type="SongUNet",
                            embedding_type="positional", encoder_type="standard", decoder_type="standard",
                            channel_mult_noise=1, resample_filter=[1, 1], model_channels=8, channel_mult=[1, 2],
                            num_blocks=1, attn_resolutions=[8], augment_dim=9, dropout=0.13, use_fp16=False)),
    # --cond=1 --arch=adm --augment=0 --dropout=0.10 --cbase=8 --cres=1,2, and sigma_data 0.6 instead of EDM's
    # 0.5 so that the test sees the converter carry it into the spec. 8 channels: no attention heads (EDM's
    # DhariwalUNet has 64 channels per head; a head would make the file ~3 MB).
    "edm_tiny_adm": dict(
        seed=2002, resolution=16, channels=3, label_dim=4, augment=0,
        network_kwargs=dict(class_name="training.networks.EDMPrecond", model_type="DhariwalUNet",
                            model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                            dropout=0.10, sigma_data=0.6, use_fp16=False)),
}
SIGMAS = [0.002, 0.3, 2.5, 80.0]   # EDM's sigma_min, two mid-range levels, sigma_max
CLASSES = [0, 3, 1, 2]
PERTURB_STD = 0.05


def write_snapshot(cfg, pkl_path):
    """Steps 1-3: EDM's training-loop objects, "trained", pickled as network-snapshot-*.pkl."""
    torch.manual_seed(cfg["seed"])
    interface_kwargs = dict(img_resolution=cfg["resolution"], img_channels=cfg["channels"], label_dim=cfg["label_dim"])
    net = dnnlib.util.construct_class_by_name(**cfg["network_kwargs"], **interface_kwargs)  # as training_loop
    net.train().requires_grad_(True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape) * PERTURB_STD)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    loss_fn = dnnlib.util.construct_class_by_name(class_name="training.loss.EDMLoss")
    augment_pipe = None
    if cfg["augment"]:
        augment_pipe = dnnlib.util.construct_class_by_name(
            class_name="training.augment.AugmentPipe", p=cfg["augment"],
            xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    dataset_kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path="datasets/tiny.zip",
                                     use_labels=cfg["label_dim"] > 0, xflip=False, cache=True,
                                     resolution=cfg["resolution"], max_size=1000)
    data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
    for key, value in data.items():            # training_loop.py, "Save network snapshot."
        if isinstance(value, torch.nn.Module):
            value = copy.deepcopy(value).eval().requires_grad_(False)
            # (misc.check_ddp_consistency(value) here compares ranks of torch.distributed: one process, skipped)
            data[key] = value.cpu()
        del value
    with open(pkl_path, "wb") as f:
        pickle.dump(data, f)


def precond64(ema, x, sigma, labels):
    """EDMPrecond.forward in float64 (EDMPrecond itself casts to float32): only to bound the float32 rounding."""
    model, sd = copy.deepcopy(ema.model).double(), ema.sigma_data
    x, s = x.double(), sigma.double().reshape(-1, 1, 1, 1)
    f = model(x / (sd ** 2 + s ** 2).sqrt(), (s.log() / 4).flatten(), class_labels=labels.double())
    return sd ** 2 / (s ** 2 + sd ** 2) * x + s * sd / (s ** 2 + sd ** 2).sqrt() * f


def reference_io(cfg, pkl_path):
    """Step 4: EDM's D(x; sigma, labels) from the network read back from the snapshot."""
    with open(pkl_path, "rb") as f:
        ema = pickle.load(f)["ema"]
    assert type(ema).__name__ == "EDMPrecond" and not ema.training
    g = torch.Generator().manual_seed(cfg["seed"] + 100)
    n, c, r = len(SIGMAS), cfg["channels"], cfg["resolution"]
    sigma = torch.tensor(SIGMAS)
    x = (torch.randn(n, c, r, r, generator=g) * 0.5 + torch.randn(n, c, r, r, generator=g) * sigma.reshape(-1, 1, 1, 1))
    labels = torch.nn.functional.one_hot(torch.tensor(CLASSES), cfg["label_dim"]).float()
    with torch.no_grad():
        out = ema(x, sigma, labels)
        ref = precond64(ema, x, sigma, labels)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    assert err < 1e-5, f"float32 and float64 outputs differ by {err}"
    return dict(x=x, sigma=sigma, labels=labels, output=out), err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edm", required=True, help=f"checkout of github.com/NVlabs/edm (commit {EDM_COMMIT})")
    ap.add_argument("--out", default=HERE, help="folder for the converted files and the io files")
    ap.add_argument("--keep-pkl", action="store_true", help="keep the .pkl snapshots in --out")
    a = ap.parse_args()
    edm = os.path.abspath(a.edm)
    sys.path.insert(0, edm)
    global torch, dnnlib
    import torch
    import dnnlib
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pkl_dir = a.out if a.keep_pkl else tmp
        for name, cfg in SNAPSHOTS.items():
            pkl = os.path.join(pkl_dir, f"{name}.pkl")
            write_snapshot(cfg, pkl)
            io, err = reference_io(cfg, pkl)
            save_safetensors({f"io.{k}": v for k, v in io.items()}, os.path.join(a.out, f"{name}_io.safetensors"))
            # the converter records its pkl argument as metadata: run it beside the .pkl with the bare file name
            subprocess.run([sys.executable, CONVERTER, "--edm", edm, f"{name}.pkl",
                            os.path.abspath(os.path.join(a.out, f"{name}.safetensors"))], cwd=pkl_dir, check=True)
            print(f"{name}: snapshot {os.path.getsize(pkl)} bytes, |D| max {io['output'].abs().max():.3f}, "
                  f"float32 vs float64 {err:.1e}")


if __name__ == "__main__":
    main()
