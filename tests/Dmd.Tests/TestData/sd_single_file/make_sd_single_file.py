"""Regenerates the single-file (original LDM layout) Stable Diffusion fixtures in this folder (see README.md).

    /usr/bin/python3 make_sd_single_file.py --diffusers /path/to/diffusers/src [--stub-imports]

--diffusers is the src folder of huggingface/diffusers at tag v0.27.2 (as for ../sd_parity and ../sd_pipeline);
--stub-imports installs ../sd_parity/diffusers_import_stubs.py.

Writes, from the tiny diffusers folder ../sd_pipeline/model (its unet/, vae/ and text_encoder/ weights):
  tiny-sd.safetensors   the three networks in one file with the names of CompVis' original checkpoints (SD v1.5's
                        v1-5-pruned-emaonly.safetensors): model.diffusion_model.*, first_stage_model.*,
                        cond_stage_model.transformer.*
  tiny-sd.ckpt          the same tensors as a PyTorch Lightning-style pickle: torch.save({"state_dict": ..., "global_step": 0})
  sd15_ldm_params.txt   "name shape" per line: the UNet and VAE of SD v1.5 (../sd_parity/sd15_*_params.txt) under
                        their single-file names
The names are made here by a diffusers-to-LDM map written for this script, and then CHECKED against diffusers' own
loader: diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint (loaders/single_file_utils.py, what
from_single_file calls) and its CLIP prefix removal must turn the file back into exactly the diffusers state dicts
(every name, every value; for SD v1.5's full size, every name and shape). So the file is one diffusers itself loads
into the tiny folder's networks.
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tools"))
from safetensors_io import load_safetensors, save_safetensors  # noqa: E402

MODEL = os.path.join(HERE, "..", "sd_pipeline", "model")
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_name(k, cfg):
    L = cfg["layers_per_block"]
    up_attention = [t == "CrossAttnUpBlock2D" for t in cfg["up_block_types"]]
    fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "mid_block.attentions.0.": "middle_block.1."}
    for a, b in fixed.items():
        if k.startswith(a):
            return b + k[len(a):]
    m = re.match(r"^mid_block\.resnets\.(\d)\.(\w+)\.(.*)$", k)
    if m:
        return f"middle_block.{2 * int(m[1])}.{RESNET[m[2]]}.{m[3]}"
    m = re.match(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)$", k)
    if m:
        return f"input_blocks.{1 + int(m[1]) * (L + 1) + int(m[2])}.0.{RESNET[m[3]]}.{m[4]}"
    m = re.match(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$", k)
    if m:
        return f"input_blocks.{1 + int(m[1]) * (L + 1) + int(m[2])}.1.{m[3]}"
    m = re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$", k)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    m = re.match(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)$", k)
    if m:
        return f"output_blocks.{int(m[1]) * (L + 1) + int(m[2])}.0.{RESNET[m[3]]}.{m[4]}"
    m = re.match(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$", k)
    if m:
        return f"output_blocks.{int(m[1]) * (L + 1) + int(m[2])}.1.{m[3]}"
    m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$", k)
    if m:
        i = int(m[1])
        return f"output_blocks.{i * (L + 1) + L}.{2 if up_attention[i] else 1}.conv.{m[2]}"
    raise KeyError(k)


def vae_name(k, cfg):
    n = len(cfg["block_out_channels"])
    fixed = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for a, b in fixed.items():
        if k.startswith(a):
            return b + k[len(a):]
    m = re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$", k)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$", k)
    if m:
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    m = re.match(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", k)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$", k)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", k)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$", k)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if re.match(r"^(encoder|decoder)\.(conv_in|conv_out)\.|^(post_)?quant_conv\.", k):
        return k
    raise KeyError(k)


def to_ldm(unet, unet_cfg, vae, vae_cfg, text):
    out = {}
    for k, v in unet.items():
        out["model.diffusion_model." + unet_name(k, unet_cfg)] = v
    for k, v in vae.items():
        name = vae_name(k, vae_cfg)
        if ".mid.attn_1." in name and name.endswith(".weight") and v.dim() == 2:
            v = v[:, :, None, None]  # the original VAE's attention projections are 1x1 convolutions
        out["first_stage_model." + name] = v
    for k, v in (text or {}).items():
        out["cond_stage_model.transformer." + k] = v
    return out


def check_roundtrip(torch, su, ldm, unet, unet_cfg, vae, vae_cfg, text, what, values=True):
    """diffusers' own single-file converters must give back exactly the diffusers state dicts."""
    back_unet = su.convert_ldm_unet_checkpoint(dict(ldm), unet_cfg)
    back_vae = su.convert_ldm_vae_checkpoint(dict(ldm), vae_cfg)
    back_text = {}
    for k, v in ldm.items():
        for prefix in su.LDM_CLIP_PREFIX_TO_REMOVE:
            if k.startswith(prefix):
                back_text[k[len(prefix):]] = v
    for name, got, want in (("unet", back_unet, unet), ("vae", back_vae, vae), ("text encoder", back_text, text or {})):
        if set(got) != set(want):
            raise SystemExit(f"{what} {name}: diffusers' converter gives other names: missing {sorted(set(want) - set(got))[:5]}, "
                             f"extra {sorted(set(got) - set(want))[:5]}")
        for k in want:
            if tuple(got[k].shape) != tuple(want[k].shape) or (values and not torch.equal(got[k], want[k])):
                raise SystemExit(f"{what} {name}: {k} differs after diffusers' converter")
    print(f"{what}: diffusers' single-file converters give back all {len(unet)} + {len(vae)} + {len(text or {})} tensors")


def read_params(path):
    import torch
    out = {}
    for line in open(path):
        name, shape = line.split()
        out[name] = torch.empty([int(s) for s in shape.split(",")], device="meta")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--diffusers", required=True, help="huggingface/diffusers src folder at tag v0.27.2")
    ap.add_argument("--stub-imports", action="store_true", help="fake diffusers' import-time dependencies")
    a = ap.parse_args()
    if a.stub_imports:
        sys.path.insert(0, os.path.join(HERE, "..", "sd_parity"))
        import diffusers_import_stubs  # noqa: F401
    sys.path.insert(0, os.path.abspath(a.diffusers))
    import json
    import torch
    import diffusers.loaders.single_file_utils as su

    unet_cfg = json.load(open(os.path.join(MODEL, "unet", "config.json")))
    vae_cfg = json.load(open(os.path.join(MODEL, "vae", "config.json")))
    unet = load_safetensors(os.path.join(MODEL, "unet", "diffusion_pytorch_model.safetensors"))
    vae = load_safetensors(os.path.join(MODEL, "vae", "diffusion_pytorch_model.safetensors"))
    text = load_safetensors(os.path.join(MODEL, "text_encoder", "model.safetensors"))
    ldm = {k: v.contiguous() for k, v in to_ldm(unet, unet_cfg, vae, vae_cfg, text).items()}
    check_roundtrip(torch, su, ldm, unet, unet_cfg, vae, vae_cfg, text, "tiny")
    save_safetensors(ldm, os.path.join(HERE, "tiny-sd.safetensors"))
    torch.save({"state_dict": ldm, "global_step": 0}, os.path.join(HERE, "tiny-sd.ckpt"))

    sd15_unet_cfg = {"layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280],
                     "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    sd15_vae_cfg = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
                    "up_block_types": ["UpDecoderBlock2D"] * 4}
    sd_parity = os.path.join(HERE, "..", "sd_parity")
    unet15 = read_params(os.path.join(sd_parity, "sd15_unet_params.txt"))
    vae15 = read_params(os.path.join(sd_parity, "sd15_vae_params.txt"))
    ldm15 = to_ldm(unet15, sd15_unet_cfg, vae15, sd15_vae_cfg, None)
    check_roundtrip(torch, su, ldm15, unet15, sd15_unet_cfg, vae15, sd15_vae_cfg, None, "SD v1.5", values=False)
    with open(os.path.join(HERE, "sd15_ldm_params.txt"), "w") as f:
        for k, v in ldm15.items():
            f.write(f"{k} {','.join(str(s) for s in v.shape)}\n")


if __name__ == "__main__":
    main()
