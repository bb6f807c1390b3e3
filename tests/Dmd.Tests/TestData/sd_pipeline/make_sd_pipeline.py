"""Regenerates the Stable Diffusion pipeline fixtures in this folder (see README.md).

    /usr/bin/python3 make_sd_pipeline.py --diffusers /path/to/diffusers/src --transformers /path/to/transformers \
        --clip /path/to/CLIP [--stub-imports]

--diffusers is the src folder of huggingface/diffusers at tag v0.27.2 (as for ../sd_parity); --transformers and --clip
are what ../clip_parity/make_clip_parity.py takes (its load_reference() imports transformers' CLIPTokenizer and
CLIPTextModel with their package stubbed around them). --stub-imports installs ../sd_parity/diffusers_import_stubs.py.

Builds ONE tiny, consistent Stable Diffusion folder, `model/`, laid out as SD v1.5's diffusers folder:
  model/model_index.json
  model/tokenizer/        the toy CLIP vocabulary of ../clip_parity/tokenizer (copied)
  model/text_encoder/     a random tiny CLIPTextModel whose hidden size is the UNet's cross_attention_dim
  model/unet/, model/vae/ a tiny UNet2DConditionModel and AutoencoderKL (random weights, perturbed off diffusers' init)
  model/scheduler/scheduler_config.json   SD v1.5's published scheduler config (a PNDMScheduler config), verbatim
and runs diffusers' own StableDiffusionPipeline on it (EulerDiscreteScheduler.from_config of that config, no safety
checker, no feature extractor) from given latents. Writes pipeline_io.safetensors:
  io.latents            (2,4,16,16) the initial latents, image i = torch.randn(4,16,16, generator=Generator().manual_seed(SEED + i))
  io.final_latents      the pipeline's output_type="latent" result for PROMPTS, NEGATIVE, STEPS steps, guidance GUIDANCE
  io.decoded            vae.decode(final_latents / scaling_factor).sample (before the pipeline's clamp and uint8 step)
  io.final_latents_leading   the same run with timestep_spacing "leading" added to the scheduler config
  io.final_latents_25   the published config, 25 steps (fractional linspace timesteps), guidance 7.5, no negative
                        prompt (diffusers' default unconditional branch: the empty prompt)
  io.prompt_embeds      text_encoder(tokenizer(PROMPTS)) (2,77,32); io.negative_embeds the same for NEGATIVE
  sched.<spacing>.<n>.sigmas / .timesteps / .init_noise_sigma   EulerDiscreteScheduler.set_timesteps(n), n in 4, 25,
                        for the published config (spacing "published": EulerDiscreteScheduler's default "linspace",
                        since the config has no timestep_spacing) and with timestep_spacing leading / trailing
  sched.alphas_cumprod  (1000) float32
Prompts and settings are also written to pipeline_case.json.
"""
import argparse
import json
import os
import shutil
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tools"))
sys.path.insert(0, os.path.join(HERE, "..", "clip_parity"))
sys.path.insert(0, os.path.join(HERE, "..", "sd_parity"))
from safetensors_io import save_safetensors  # noqa: E402  (the repository's one safetensors writer)

DIFFUSERS_COMMIT = "b69fd990ad8026f21893499ab396d969b62bb8cc"  # tag v0.27.2
SEED = 3000                      # torch seed of the weights; the latents use SEED + i per image
PERTURB_STD = 0.05
PROMPTS = ["a photograph of an astronaut riding a horse", "a painting of a fox sitting in a field at sunrise"]
NEGATIVE = "blurry, low quality"
STEPS = 4
GUIDANCE = 3.0

# SD v1.5's scheduler/scheduler_config.json as published (runwayml/stable-diffusion-v1-5).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False}

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                 max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=2, cross_attention_dim=32, norm_num_groups=4)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
    sample_size=32)


def perturb(net):
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.add_(torch.randn(p.shape) * PERTURB_STD)
    return net.eval()


def make_text_encoder(mod, cfg_mod, vocab_size):
    """A tiny CLIPTextModel initialised as ../clip_parity's (every part carries signal), wrapped for the pipeline."""

    class PipelineTextEncoder(mod.CLIPTextModel):
        # what StableDiffusionPipeline reads of a transformers model: .dtype, .device, output[0] = last_hidden_state
        dtype = property(lambda self: next(self.parameters()).dtype)
        device = property(lambda self: next(self.parameters()).device)

        def forward(self, input_ids, attention_mask=None, output_hidden_states=None):
            assert attention_mask is None and not output_hidden_states
            out = super().forward(input_ids=input_ids)
            return (out.last_hidden_state, out.pooler_output)

    config = dict(TINY_TEXT, vocab_size=vocab_size)
    model = PipelineTextEncoder(cfg_mod.CLIPTextConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm1.weight") or name.endswith("layer_norm2.weight") or name.endswith("final_layer_norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape))
            elif "embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) / p.shape[1] ** 0.5)
    return model, config


def make_tokenizer(tok_mod, folder):
    class PipelineTokenizer(tok_mod.CLIPTokenizer):
        # the reference's base class tokenizes one prompt; the pipeline calls with lists and return_tensors="pt"
        def __call__(self, text, padding="max_length", max_length=None, truncation=False, return_tensors=None, **kw):
            texts = [text] if isinstance(text, str) else list(text)
            if padding == "max_length":
                rows = [super(PipelineTokenizer, self).__call__(t, "max_length", max_length, truncation) for t in texts]
            else:  # "longest", untruncated: used by the pipeline only to warn about truncation
                rows = [self.build_inputs_with_special_tokens([self._convert_token_to_id(x) for x in self.tokenize(t)]) for t in texts]
                width = max(len(r) for r in rows)
                rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
            return types.SimpleNamespace(input_ids=torch.tensor(rows, dtype=torch.int64), attention_mask=None)

        def batch_decode(self, ids):
            return ["<truncated>" for _ in ids]

    return PipelineTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)


class NoProgress:
    def __enter__(self): return self
    def __exit__(self, *a): return False
    def update(self, n=1): pass


def save_folder(net, folder):
    os.makedirs(folder, exist_ok=True)
    net.save_config(folder)
    save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()},
                     os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffusers", required=True, help="src folder of a diffusers checkout at v0.27.2")
    ap.add_argument("--transformers", required=True, help="what ../clip_parity/make_clip_parity.py takes as --transformers")
    ap.add_argument("--clip", required=True, help="checkout of openai/CLIP (make_clip_parity.py's --clip)")
    ap.add_argument("--stub-imports", action="store_true", help="fake diffusers' import-time dependencies")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    if a.stub_imports:
        import diffusers_import_stubs  # noqa: F401
    import make_clip_parity
    tok_mod, mod, cfg_mod, _ = make_clip_parity.load_reference(os.path.abspath(a.transformers), os.path.abspath(a.clip))
    global torch
    import torch
    torch.set_num_threads(1)

    # diffusers imports its pipelines and loaders only where transformers is installed: report the stub package
    # load_reference() built as transformers 4.38 and give it the names diffusers imports from it: the reference
    # classes for the text side, dummies for the rest (image processor, safety checker, vision models: all unused here).
    import importlib.metadata
    version = importlib.metadata.version
    importlib.metadata.version = lambda name: "4.38.0" if name == "transformers" else version(name)
    transformers = sys.modules["transformers"]
    dummy = type("Dummy", (torch.nn.Module,), {})
    transformers.CLIPTextModel, transformers.CLIPTokenizer = mod.CLIPTextModel, tok_mod.CLIPTokenizer
    transformers.__getattr__ = lambda name: dummy
    for name in ("FLAX_WEIGHTS_NAME", "SAFE_WEIGHTS_NAME", "WEIGHTS_NAME"):  # file names pipeline_loading_utils reads
        setattr(sys.modules["transformers.utils"], name, name.lower())
    sys.path.insert(0, os.path.abspath(a.diffusers))
    import diffusers
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")

    model_dir = os.path.join(a.out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    tok_dir = os.path.join(model_dir, "tokenizer")
    shutil.copytree(os.path.join(HERE, "..", "clip_parity", "tokenizer"), tok_dir)
    tokenizer = make_tokenizer(tok_mod, tok_dir)

    torch.manual_seed(SEED)
    text_encoder, text_config = make_text_encoder(mod, cfg_mod, len(tokenizer.encoder))
    unet = perturb(UNet2DConditionModel(**TINY_UNET))
    vae = perturb(AutoencoderKL(**TINY_VAE))
    latents = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(SEED + i)) for i in range(len(PROMPTS))])

    def run(scheduler_config, negative=[NEGATIVE] * len(PROMPTS), steps=STEPS, guidance=GUIDANCE):
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.progress_bar = lambda iterable=None, total=None: NoProgress()  # tqdm may be a stub
        with torch.no_grad():
            return pipe(prompt=PROMPTS, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                        latents=latents.clone(), output_type="latent").images

    final = run(SD15_SCHEDULER)
    final_leading = run(dict(SD15_SCHEDULER, timestep_spacing="leading"))
    final_25 = run(SD15_SCHEDULER, negative=None, steps=25, guidance=7.5)  # diffusers' defaults: the empty prompt, 7.5
    with torch.no_grad():
        decoded = vae.decode(final / vae.config.scaling_factor).sample
        embeds = text_encoder(tokenizer(PROMPTS, "max_length", 77, True).input_ids)[0]
        negative = text_encoder(tokenizer([NEGATIVE], "max_length", 77, True).input_ids)[0]
    for name, t in (("final latents", final), ("final latents (leading)", final_leading), ("final latents (25 steps)", final_25),
                    ("decoded", decoded)):
        assert torch.isfinite(t).all(), name
        print(f"{name}: shape {tuple(t.shape)}, max |x| {t.abs().max():.3g}, std {t.std():.3g}")
    print(f"|final - final_leading| max {(final - final_leading).abs().max():.3g}")

    tensors = {"io.latents": latents, "io.final_latents": final.contiguous(), "io.decoded": decoded.contiguous(),
               "io.final_latents_leading": final_leading.contiguous(), "io.final_latents_25": final_25.contiguous(), "io.prompt_embeds": embeds.contiguous(),
               "io.negative_embeds": negative.contiguous()}
    for spacing in ("published", "leading", "trailing"):
        cfg = SD15_SCHEDULER if spacing == "published" else dict(SD15_SCHEDULER, timestep_spacing=spacing)
        for n in (4, 25):
            s = EulerDiscreteScheduler.from_config(cfg)
            s.set_timesteps(n)
            tensors[f"sched.{spacing}.{n}.sigmas"] = s.sigmas.contiguous()
            tensors[f"sched.{spacing}.{n}.timesteps"] = s.timesteps.contiguous()
            tensors[f"sched.{spacing}.{n}.init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)])
        if spacing == "published":
            print(f"published config read by EulerDiscreteScheduler: timestep_spacing {s.config.timestep_spacing}, "
                  f"steps_offset {s.config.steps_offset}")
            tensors["sched.alphas_cumprod"] = s.alphas_cumprod.contiguous()

    # the folder: SD v1.5's layout
    enc_dir = os.path.join(model_dir, "text_encoder")
    os.makedirs(enc_dir, exist_ok=True)
    with open(os.path.join(enc_dir, "config.json"), "w") as f:
        json.dump({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
                   "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32", **text_config}, f, indent=2)
    weights = dict(text_encoder.state_dict())
    weights["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_safetensors({k: v.contiguous() for k, v in weights.items()}, os.path.join(enc_dir, "model.safetensors"))
    save_folder(unet, os.path.join(model_dir, "unet"))
    save_folder(vae, os.path.join(model_dir, "vae"))
    os.makedirs(os.path.join(model_dir, "scheduler"), exist_ok=True)
    with open(os.path.join(model_dir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SD15_SCHEDULER, f, indent=2)
    with open(os.path.join(model_dir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                   "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
                   "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    save_safetensors(tensors, os.path.join(a.out, "pipeline_io.safetensors"))
    with open(os.path.join(a.out, "pipeline_case.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "negative_prompt": NEGATIVE, "steps": STEPS, "guidance_scale": GUIDANCE,
                   "seed": SEED, "height": 32, "width": 32}, f, indent=2)


if __name__ == "__main__":
    main()
