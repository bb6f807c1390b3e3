"""Convert an EDM training snapshot (.pkl, NVlabs/edm) into the safetensors + JSON pair that Dmd loads.

    python tools/convert_edm_checkpoint.py --edm PATH/TO/edm edm-cifar10-32x32-cond-vp.pkl cifar10-cond.safetensors

EDM's .pkl files embed Python classes, so unpickling needs EDM's own code: --edm points at a checkout of
NVlabs/edm (its dnnlib and torch_utils packages). Run it once with your own PyTorch; the C# side never needs Python.

Writes:
  OUT.safetensors  the EMA network's state dict, EDM's parameter names unchanged ("model.enc.32x32_conv.weight", ...),
                   the network's constructor arguments as metadata ("edm_init_kwargs");
  OUT.json         the NetworkSpec Dmd rebuilds the architecture from (kind ddpmpp = SongUNet with positional
                   embedding, kind adm = DhariwalUNet).
Load it in C# with Dmd.IO.DenoiserFile.Load("OUT.safetensors"): missing, unexpected or mis-shaped tensors are
reported by name. Snapshots with settings NetworkSpec does not build (NCSN++, skip encoders/decoders, other noise or
embedding widths, other resample filters; VP/VE preconditioning) are refused here with the setting named.
Tested on tiny snapshots made with EDM's own code: tests/Dmd.Tests/TestData/edm_checkpoint (EdmCheckpointTests).
"""
import argparse
import json
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402


# Settings of EDM's networks that Dmd's NetworkSpec does not carry: it builds them with these values (EDM's defaults,
# and what EDM's train.py uses for --arch=ddpmpp / adm), so a snapshot with any other value is refused here.
FIXED = {
    "SongUNet": {"embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
                 "channel_mult_noise": 1, "channel_mult_emb": 4, "resample_filter": [1, 1]},
    "DhariwalUNet": {"channel_mult_emb": 4},
}


def network_spec(net, model_kwargs, model_type):
    """Maps EDM's EDMPrecond (its attributes) and its model's constructor arguments onto Dmd's NetworkSpec fields."""
    c, res = net.img_channels, net.img_resolution
    spec = {
        "Shape": [c, res, res],
        "LabelDim": net.label_dim,
        "SigmaData": net.sigma_data,
        "AugmentDim": model_kwargs.get("augment_dim", 0),
        "Dropout": model_kwargs.get("dropout", 0.10),
    }
    other = {k: model_kwargs[k] for k, v in FIXED.get(model_type, {}).items() if k in model_kwargs and as_list(model_kwargs[k]) != as_list(v)}
    if "embedding_type" in other or "encoder_type" in other:
        sys.exit("this snapshot is NCSN++ (Fourier embedding, residual encoder); Dmd's NetworkSpec builds DDPM++ and ADM only")
    if other:
        sys.exit(f"this {model_type} snapshot has settings Dmd's NetworkSpec does not build: {other} (it builds {FIXED[model_type]})")
    if model_type == "SongUNet":
        spec.update(Kind="ddpmpp", ModelChannels=model_kwargs.get("model_channels", 128),
                    ChannelMult=model_kwargs.get("channel_mult", [1, 2, 2, 2]), NumBlocks=model_kwargs.get("num_blocks", 4),
                    AttnResolutions=model_kwargs.get("attn_resolutions", [16]))
    elif model_type == "DhariwalUNet":
        spec.update(Kind="adm", ModelChannels=model_kwargs.get("model_channels", 192),
                    ChannelMult=model_kwargs.get("channel_mult", [1, 2, 3, 4]), NumBlocks=model_kwargs.get("num_blocks", 3),
                    AttnResolutions=model_kwargs.get("attn_resolutions", [32, 16, 8]))
    else:
        sys.exit(f"unsupported EDM network {model_type}")
    return spec


def as_list(v):
    """A setting compared as a list: [1, 1] and (1, 1) are the same resample filter."""
    return list(v) if isinstance(v, (list, tuple)) else [v]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edm", required=True, help="checkout of github.com/NVlabs/edm (for dnnlib, torch_utils)")
    ap.add_argument("pkl")
    ap.add_argument("out", help="output .safetensors path (a .json spec is written beside it)")
    a = ap.parse_args()
    sys.path.insert(0, a.edm)
    with open(a.pkl, "rb") as f:
        data = pickle.load(f)
    net = data["ema"] if isinstance(data, dict) else data
    if type(net).__name__ != "EDMPrecond":
        sys.exit(f"expected EDM's EDMPrecond network, found {type(net).__name__} (VP/VE snapshots: retrain or convert with EDMPrecond)")
    precond_kwargs = dict(net.init_kwargs)
    model_type = precond_kwargs.pop("model_type", type(net.model).__name__)
    model_kwargs = {k: v for k, v in net.model.init_kwargs.items()}
    tensors = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in net.state_dict().items()}
    spec = network_spec(net, model_kwargs, model_type)
    meta = {"format": "pt", "source": a.pkl, "edm_model_type": model_type,
            "edm_init_kwargs": json.dumps({"precond": precond_kwargs, "model": model_kwargs}, default=str)}
    save_safetensors(tensors, a.out, meta)
    spec_path = a.out[: -len(".safetensors")] + ".json" if a.out.endswith(".safetensors") else a.out + ".json"
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=2)
    print(f"wrote {len(tensors)} tensors to {a.out} and the network spec to {spec_path}")


if __name__ == "__main__":
    main()
