"""Regenerates the Stable Diffusion parity fixtures in this folder (see README.md).

    /usr/bin/python3 make_sd_parity.py --diffusers /path/to/diffusers/src [--stub-imports]

--diffusers is the src folder of a checkout of github.com/huggingface/diffusers at tag v0.27.2 (commit
DIFFUSERS_COMMIT below, the newest release found that imports under torch 1.13); its UNet2DConditionModel and
AutoencoderKL are imported as they are. Needs torch and numpy (Debian 12: python3-torch 1.13, python3-numpy,
python3-regex, python3-packaging). diffusers imports huggingface_hub, safetensors, PIL, filelock, ... at import time;
where those are not installed, --stub-imports installs fake modules for them (diffusers_import_stubs.py in this
folder). None of them is used by the model code. Runs on the CPU in float32; the full-size SD v1.5 UNet is
instantiated once to list its parameters (~3.5 GB of memory, a minute).

Writes, beside this script:
  unet/config.json, unet/diffusion_pytorch_model.safetensors   a tiny UNet2DConditionModel as a diffusers folder
  unet_io.safetensors     io.sample (2,4,16,16) ~ N(0,1), io.timestep [981, 37], io.encoder_hidden_states (2,77,32)
                          ~ N(0,1), io.output = unet(sample, timestep, encoder_hidden_states).sample (eval mode);
                          io.sample_odd (1,4,15,13), io.timestep_odd 500 (a 0-d tensor), io.encoder_hidden_states_odd
                          (1,10,32), io.output_odd: a size the downsampler rounds up (diffusers' upsample_size path)
  vae/config.json, vae/diffusion_pytorch_model.safetensors     a tiny AutoencoderKL as a diffusers folder
  vae_io.safetensors      io.image (2,3,32,32) ~ U(-1,1), io.mean and io.logvar of vae.encode(image).latent_dist,
                          io.latent (2,4,16,16) ~ N(0,1), io.decoded = vae.decode(latent).sample,
                          io.posterior_sample = latent_dist.sample(generator=torch.Generator().manual_seed(7))
  sd15_unet_params.txt, sd15_vae_params.txt   "name shape" per line, the state_dict() of diffusers' classes built
                          from SD v1.5's published configs (SD15_UNET, SD15_VAE below)

Every parameter of the tiny models is moved off diffusers' init by N(0, 0.05^2) (GroupNorm/LayerNorm gains and
biases included), and every random value comes from torch's CPU generator seeded per model, so a rerun writes the
same weights and inputs; another CPU's float32 kernels may change the outputs' last bits. The script checks each
float32 output against the same model run in float64.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "tools"))
from safetensors_io import save_safetensors  # noqa: E402  (the repository's one safetensors writer)

DIFFUSERS_COMMIT = "b69fd990ad8026f21893499ab396d969b62bb8cc"  # tag v0.27.2
PERTURB_STD = 0.05
SEEDS = {"unet": 2001, "vae": 2002}

# Tiny models: every block type SD v1.5 uses, at widths that keep the fixtures small.
TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=2,  # diffusers reads this as the number of heads (2 heads of 8 channels here), as in SD v1.5
    cross_attention_dim=32, norm_num_groups=8)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
    sample_size=32)

# SD v1.5's published configs (runwayml/stable-diffusion-v1-5, unet/config.json and vae/config.json).
SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
SD15_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=["UpDecoderBlock2D"] * 4)


def perturb(net):
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.add_(torch.randn(p.shape) * PERTURB_STD)
    return net.eval()


def make_unet():
    torch.manual_seed(SEEDS["unet"])
    net = perturb(UNet2DConditionModel(**TINY_UNET))
    sample = torch.randn(2, 4, 16, 16)
    timestep = torch.tensor([981.0, 37.0])
    ehs = torch.randn(2, 77, TINY_UNET["cross_attention_dim"])
    odd = (torch.randn(1, 4, 15, 13), torch.tensor(500.0), torch.randn(1, 10, TINY_UNET["cross_attention_dim"]))
    return net, sample, timestep, ehs, odd


def make_vae():
    torch.manual_seed(SEEDS["vae"])
    net = perturb(AutoencoderKL(**TINY_VAE))
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    latent = torch.randn(2, 4, 16, 16)
    return net, image, latent


def save_folder(net, folder):
    os.makedirs(folder, exist_ok=True)
    net.save_config(folder)
    save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()},
                     os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def check(name, out32, out64):
    err = (out32.double() - out64).abs().max().item()
    scale = out64.abs().max().item()
    assert torch.isfinite(out32).all(), name
    print(f"{name}: shape {tuple(out32.shape)}, max |x| {scale:.3g}, max |float32 - float64| {err:.2e}")


def param_list(net, path):
    with open(path, "w") as f:
        for k, v in net.state_dict().items():
            f.write(f"{k} {','.join(str(s) for s in v.shape)}\n")
    print(f"{path}: {len(net.state_dict())} tensors, {sum(v.numel() for v in net.state_dict().values())} values")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffusers", required=True, help="src folder of a diffusers checkout at v0.27.2")
    ap.add_argument("--stub-imports", action="store_true", help="fake diffusers' import-time dependencies (diffusers_import_stubs.py)")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--skip-full-size", action="store_true", help="do not rewrite the SD v1.5 parameter lists")
    a = ap.parse_args()
    if a.stub_imports:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import diffusers_import_stubs  # noqa: F401
    sys.path.insert(0, os.path.abspath(a.diffusers))
    global torch, UNet2DConditionModel, AutoencoderKL
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    import diffusers
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    torch.set_num_threads(1)

    net, sample, timestep, ehs, odd = make_unet()
    with torch.no_grad():
        out = net(sample, timestep, ehs).sample
        out_odd = net(*odd).sample
        net64 = make_unet()[0].double()
        ref = net64(sample.double(), timestep.double(), ehs.double()).sample
        ref_odd = net64(*(t.double() for t in odd)).sample
    check("unet", out, ref)
    check("unet odd size", out_odd, ref_odd)
    save_folder(net, os.path.join(a.out, "unet"))
    save_safetensors({"io.sample": sample, "io.timestep": timestep, "io.encoder_hidden_states": ehs, "io.output": out,
                      "io.sample_odd": odd[0], "io.timestep_odd": odd[1], "io.encoder_hidden_states_odd": odd[2],
                      "io.output_odd": out_odd},
                     os.path.join(a.out, "unet_io.safetensors"))

    vae, image, latent = make_vae()
    with torch.no_grad():
        post = vae.encode(image).latent_dist
        decoded = vae.decode(latent).sample
        drawn = post.sample(generator=torch.Generator().manual_seed(7))
        vae64 = make_vae()[0].double()
        post64 = vae64.encode(image.double()).latent_dist
        decoded64 = vae64.decode(latent.double()).sample
    check("vae mean", post.mean, post64.mean)
    check("vae logvar", post.logvar, post64.logvar)
    check("vae decoded", decoded, decoded64)
    save_folder(vae, os.path.join(a.out, "vae"))
    save_safetensors({"io.image": image, "io.mean": post.mean.contiguous(), "io.logvar": post.logvar.contiguous(),
                      "io.latent": latent, "io.decoded": decoded, "io.posterior_sample": drawn.contiguous()},
                     os.path.join(a.out, "vae_io.safetensors"))

    if not a.skip_full_size:
        param_list(AutoencoderKL(**SD15_VAE), os.path.join(a.out, "sd15_vae_params.txt"))
        param_list(UNet2DConditionModel(**SD15_UNET), os.path.join(a.out, "sd15_unet_params.txt"))


if __name__ == "__main__":
    main()
