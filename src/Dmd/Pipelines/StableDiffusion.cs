using System.Diagnostics;
using System.Text.Json.Nodes;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>Settings of one text-to-image run (<see cref="StableDiffusion.Generate(IReadOnlyList{string}, TextToImageOptions?, Tensor?, Action{int, int}?)"/>); the defaults are the <c>text2img</c> command's.</summary>
public sealed record TextToImageOptions
{
    /// <summary>The unconditional prompt of classifier-free guidance ("" = diffusers' default, the empty prompt).</summary>
    public string NegativePrompt { get; init; } = "";
    /// <summary>Sampling steps on the scheduler's sigmas (diffusers' <c>num_inference_steps</c>).</summary>
    public int Steps { get; init; } = 25;
    /// <summary>Guidance scale w (diffusers' <c>guidance_scale</c>, default 7.5); w &lt;= 1 runs the conditional model alone, as diffusers does.</summary>
    public double Guidance { get; init; } = 7.5;
    /// <summary>Image height in pixels (null: the UNet's sample_size times the VAE's downscaling factor, 512 for SD v1.5).</summary>
    public int? Height { get; init; }
    /// <summary>Image width in pixels (null: as <see cref="Height"/>).</summary>
    public int? Width { get; init; }
    /// <summary>Seed of the first image's initial latents; image i uses Seed + i (<see cref="StableDiffusion.InitialLatents"/>).</summary>
    public long Seed { get; init; }
    /// <summary>"euler" (diffusers' EulerDiscreteScheduler) or "heun" (EDM's Heun on the same sigmas: 2N-1 evaluations).</summary>
    public string Sampler { get; init; } = "euler";
    /// <summary>Images per network batch.</summary>
    public int Batch { get; init; } = 4;

    /// <summary>Checks the settings that need no model (a one-line <see cref="DmdInputException"/> naming the setting): call before loading one.</summary>
    public void Validate()
    {
        Settings.AtLeast("steps", Steps, 1);
        Settings.AtLeast("batch", Batch, 1);
        if (!double.IsFinite(Guidance)) throw new DmdInputException($"guidance {Guidance}: must be a finite number");
        if (Sampler.ToLowerInvariant() is not ("euler" or "heun")) throw new DmdInputException($"sampler '{Sampler}': use euler or heun");
        if (Height is < 1 || Width is < 1) throw new DmdInputException($"image size {Height}x{Width}: must be positive");
    }
}

/// <summary>
/// What <see cref="StableDiffusion.Generate(IReadOnlyList{string}, TextToImageOptions?, Tensor?, Action{int, int}?)"/> returns, on the host: the final latents (the UNet's scale, as diffusers'
/// <c>output_type="latent"</c>), the images (B, 3, H, W) in [-1, 1], the network evaluations per image and the time taken.
/// </summary>
public sealed record TextToImageResult(Tensor Latents, Tensor Images, int Nfe, double Seconds);

/// <summary>
/// Stable Diffusion (v1.x layout) from a diffusers folder: <c>tokenizer/</c>, <c>text_encoder/</c>, <c>unet/</c>,
/// <c>vae/</c>, <c>scheduler/</c> (<c>model_index.json</c> optional), the layout of runwayml/stable-diffusion-v1-5.
/// Text-to-image reproduces diffusers' <c>StableDiffusionPipeline</c> with <c>EulerDiscreteScheduler.from_config</c> of
/// the folder's scheduler config, written in EDM's variables: the UNet is an <see cref="EpsPredictionDenoiser"/>, the
/// guidance a <see cref="GuidedDenoiser"/> whose unconditional branch is the negative (or empty) prompt, the sampler
/// <see cref="Samplers.Euler(IDenoiser, Tensor, Tensor?, IReadOnlyList{double})"/> on the scheduler's sigmas.
/// The networks compute on <see cref="Device"/>; inputs are moved there and results come back to the host.
/// </summary>
public sealed class StableDiffusion : IDisposable
{
    private StableDiffusion(ClipTokenizer tokenizer, ClipTextModel textEncoder, UNet2DConditionModel unet, AutoencoderKL vae,
                            DiscreteVpSchedule scheduler, Device device)
    {
        Tokenizer = tokenizer;
        TextEncoder = textEncoder;
        Unet = unet;
        Vae = vae;
        Scheduler = scheduler;
        Device = device;
    }

    /// <summary>The CLIP tokenizer (<c>tokenizer/</c>).</summary>
    public ClipTokenizer Tokenizer { get; }
    /// <summary>The CLIP text encoder (<c>text_encoder/</c>).</summary>
    public ClipTextModel TextEncoder { get; }
    /// <summary>The eps-prediction UNet (<c>unet/</c>).</summary>
    public UNet2DConditionModel Unet { get; }
    /// <summary>The autoencoder (<c>vae/</c>).</summary>
    public AutoencoderKL Vae { get; }
    /// <summary>The training schedule and sampling timesteps (<c>scheduler/scheduler_config.json</c>).</summary>
    public DiscreteVpSchedule Scheduler { get; }
    /// <summary>Where the networks compute.</summary>
    public Device Device { get; }

    /// <summary>Pixels per latent pixel: 2^(VAE levels - 1), diffusers' <c>vae_scale_factor</c> (8 for SD v1.5).</summary>
    public int VaeScaleFactor => 1 << (Vae.Config.BlockOutChannels.Length - 1);

    /// <summary>The default image size, the UNet's sample_size times <see cref="VaeScaleFactor"/> (512 for SD v1.5).</summary>
    public int DefaultSize => Unet.Config.SampleSize * VaeScaleFactor;

    /// <summary>
    /// The teacher as an EDM denoiser, <c>D(x, sigma, context)</c> on latents at the UNet's scale, with <c>t(sigma)</c> by
    /// log-sigma interpolation (what DMD's loss calls; text contexts from <see cref="EncodePrompts"/> as its labels).
    /// </summary>
    public EpsPredictionDenoiser Denoiser => new(Eps, Scheduler, Unet.Config.CrossAttentionDim, Device);

    private Tensor Eps(Tensor x, Tensor t, Tensor context) => Unet.forward(x, t, context);

    /// <summary>
    /// Loads a diffusers Stable Diffusion folder onto <paramref name="device"/> (default CPU). A missing subfolder, a
    /// config this implementation does not build, or parts that do not fit together is a one-line <see cref="DmdInputException"/>.
    /// </summary>
    public static StableDiffusion Load(string folder, Device? device = null)
    {
        if (File.Exists(folder))
            throw new DmdInputException($"{folder} is a file: for a single-file checkpoint (v1-5-pruned-emaonly.safetensors / .ckpt) convert it once with " +
                                        "`dmd convert-sd FILE --out DIR --tokenizer TOKENIZER_DIR` (or load it with StableDiffusion.LoadSingleFile)");
        if (!Directory.Exists(folder))
            throw new DmdInputException($"model folder not found: {folder} (pass a diffusers Stable Diffusion folder with tokenizer/, text_encoder/, unet/, vae/, scheduler/)");
        foreach (var sub in new[] { "tokenizer", "text_encoder", "unet", "vae", "scheduler" })
            if (!Directory.Exists(Path.Combine(folder, sub)))
                throw new DmdInputException($"{folder} has no {sub}/ folder: a diffusers Stable Diffusion folder holds tokenizer/, text_encoder/, unet/, vae/ and scheduler/");
        CheckModelIndex(Path.Combine(folder, "model_index.json"));

        var tokenizer = ClipTokenizer.FromFolder(Path.Combine(folder, "tokenizer"));
        var scheduler = DiscreteVpSchedule.Load(Path.Combine(folder, "scheduler"));
        var textEncoder = ClipTextModel.FromFolder(Path.Combine(folder, "text_encoder"));
        var unet = UNet2DConditionModel.FromPretrained(Path.Combine(folder, "unet"));
        var vae = AutoencoderKL.FromPretrained(Path.Combine(folder, "vae"));
        return Assemble(tokenizer, textEncoder, unet, vae, scheduler, device ?? CPU, folder);
    }

    /// <summary>
    /// Loads Stable Diffusion v1.x's single-file checkpoint (the original LDM layout: <c>v1-5-pruned-emaonly.safetensors</c>,
    /// or a <c>.ckpt</c>) as diffusers' <c>from_single_file</c> does (<see cref="StableDiffusionCheckpoint"/>): the UNet,
    /// VAE and CLIP text encoder from the file, their architectures read off the tensors' shapes (SD v1.x) or from
    /// <see cref="SingleFileOptions.ConfigFolder"/>, the tokenizer from a folder, SD v1.5's scheduler unless the config
    /// folder has one. Anything missing or not fitting is a one-line <see cref="DmdInputException"/>.
    /// </summary>
    public static StableDiffusion LoadSingleFile(string file, SingleFileOptions? options = null, Device? device = null)
    {
        options ??= new SingleFileOptions();
        if (!File.Exists(file)) throw new DmdInputException($"checkpoint file not found: {file}");
        var configDir = options.ConfigFolder;
        if (configDir is not null && !Directory.Exists(configDir))
            throw new DmdInputException($"config folder not found: {configDir} (pass a diffusers Stable Diffusion folder; its config.json files, tokenizer/ and scheduler/ are used)");
        var tokenizerDir = options.TokenizerFolder ?? (configDir is null ? null : Path.Combine(configDir, "tokenizer"));
        if (tokenizerDir is null)
            throw new DmdInputException($"{file}: a single-file checkpoint holds no tokenizer: pass a CLIP tokenizer folder with vocab.json and merges.txt " +
                                        "(--tokenizer; e.g. the tokenizer/ folder of any SD v1.x diffusers folder or of openai/clip-vit-large-patch14)");
        var tokenizer = ClipTokenizer.FromFolder(tokenizerDir);
        var scheduler = configDir is not null && Directory.Exists(Path.Combine(configDir, "scheduler"))
            ? DiscreteVpSchedule.Load(Path.Combine(configDir, "scheduler")) : DiscreteVpSchedule.StableDiffusion15;

        var tensors = StableDiffusionCheckpoint.Read(file);
        try
        {
            var textConfig = configDir is null ? StableDiffusionCheckpoint.InferTextConfig(tensors, file) : ClipTextConfig.Load(Path.Combine(configDir, "text_encoder", "config.json"));
            var unetConfig = configDir is null ? StableDiffusionCheckpoint.InferUnetConfig(tensors, file) : UNet2DConditionConfig.Load(Path.Combine(configDir, "unet"));
            var vaeConfig = configDir is null ? StableDiffusionCheckpoint.InferVaeConfig(tensors, file) : AutoencoderKLConfig.Load(Path.Combine(configDir, "vae"));
            var textEncoder = new ClipTextModel(textConfig);
            StableDiffusionCheckpoint.LoadInto(textEncoder, tensors, n => StableDiffusionCheckpoint.TextName(tensors, n), StableDiffusionCheckpoint.TextPrefix,
                                               "text encoder", file, StableDiffusionCheckpoint.TextName(tensors, ClipTextModel.PositionIdsKey));
            var unet = new UNet2DConditionModel(unetConfig);
            StableDiffusionCheckpoint.LoadInto(unet, tensors, n => StableDiffusionCheckpoint.UnetPrefix + StableDiffusionCheckpoint.UnetName(n, unetConfig),
                                               StableDiffusionCheckpoint.UnetPrefix, "UNet", file);
            var vae = new AutoencoderKL(vaeConfig);
            StableDiffusionCheckpoint.LoadInto(vae, tensors, n => StableDiffusionCheckpoint.VaePrefix + StableDiffusionCheckpoint.VaeName(n, vaeConfig),
                                               StableDiffusionCheckpoint.VaePrefix, "VAE", file);
            textEncoder.eval();
            unet.eval();
            vae.eval();
            return Assemble(tokenizer, textEncoder, unet, vae, scheduler, device ?? CPU, file);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Converts a single-file checkpoint (<see cref="LoadSingleFile"/>) into a diffusers folder that <see cref="Load"/> and
    /// every command read: <c>tokenizer/</c> (the tokenizer folder's files, copied), <c>text_encoder/</c>, <c>unet/</c>,
    /// <c>vae/</c> (float32 safetensors), <c>scheduler/</c> (the config folder's, else SD v1.5's published config),
    /// <c>model_index.json</c>. <paramref name="outDir"/> must not hold a model already.
    /// </summary>
    public static void ConvertSingleFile(string file, string outDir, SingleFileOptions? options = null)
    {
        options ??= new SingleFileOptions();
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new DmdInputException($"--out {outDir} is not empty: choose a new folder for the converted model");
        using var sd = LoadSingleFile(file, options);
        var tokenizerDir = options.TokenizerFolder ?? Path.Combine(options.ConfigFolder!, "tokenizer");
        var tmp = outDir.TrimEnd('/', '\\') + ".converting";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        var dst = Path.Combine(tmp, "tokenizer");
        Directory.CreateDirectory(dst);
        foreach (var f in Directory.EnumerateFiles(tokenizerDir))
            if (Path.GetExtension(f) is ".json" or ".txt") File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        sd.TextEncoder.SavePretrained(Path.Combine(tmp, "text_encoder"), sd.Tokenizer.BosId, sd.Tokenizer.EosId, sd.Tokenizer.PadId);
        sd.Unet.SavePretrained(Path.Combine(tmp, "unet"));
        sd.Vae.SavePretrained(Path.Combine(tmp, "vae"));
        var scheduler = options.ConfigFolder is null ? null : Path.Combine(options.ConfigFolder, "scheduler", "scheduler_config.json");
        if (scheduler is not null && File.Exists(scheduler))
        {
            Directory.CreateDirectory(Path.Combine(tmp, "scheduler"));
            File.Copy(scheduler, Path.Combine(tmp, "scheduler", "scheduler_config.json"));
        }
        else WriteSchedulerConfig(Path.Combine(tmp, "scheduler"));
        WriteModelIndex(tmp);
        if (Directory.Exists(outDir)) Directory.Delete(outDir);
        Directory.Move(tmp, outDir);   // complete or absent
    }

    /// <summary>Writes SD v1.5's published <c>scheduler/scheduler_config.json</c> (runwayml/stable-diffusion-v1-5; a PNDMScheduler config, no timestep_spacing).</summary>
    public static void WriteSchedulerConfig(string folder)
    {
        Directory.CreateDirectory(folder);
        IO.Checkpoint.SaveJson(new JsonObject
        {
            ["_class_name"] = "PNDMScheduler", ["_diffusers_version"] = "0.6.0", ["beta_end"] = 0.012, ["beta_schedule"] = "scaled_linear",
            ["beta_start"] = 0.00085, ["num_train_timesteps"] = 1000, ["set_alpha_to_one"] = false, ["skip_prk_steps"] = true,
            ["steps_offset"] = 1, ["trained_betas"] = null, ["clip_sample"] = false,
        }, Path.Combine(folder, "scheduler_config.json"));
    }

    /// <summary>Writes the <c>model_index.json</c> of a StableDiffusionPipeline folder without safety checker.</summary>
    public static void WriteModelIndex(string folder)
    {
        static JsonArray Pair(string? a, string? b) => new(JsonValue.Create(a), JsonValue.Create(b));
        IO.Checkpoint.SaveJson(new JsonObject
        {
            ["_class_name"] = "StableDiffusionPipeline", ["_diffusers_version"] = "0.27.2",
            ["feature_extractor"] = Pair(null, null), ["requires_safety_checker"] = false, ["safety_checker"] = Pair(null, null),
            ["scheduler"] = Pair("diffusers", "PNDMScheduler"), ["text_encoder"] = Pair("transformers", "CLIPTextModel"),
            ["tokenizer"] = Pair("transformers", "CLIPTokenizer"), ["unet"] = Pair("diffusers", "UNet2DConditionModel"),
            ["vae"] = Pair("diffusers", "AutoencoderKL"),
        }, Path.Combine(folder, "model_index.json"));
    }

    /// <summary>Checks the parts fit together and moves the networks to <paramref name="device"/>.</summary>
    private static StableDiffusion Assemble(ClipTokenizer tokenizer, ClipTextModel textEncoder, UNet2DConditionModel unet, AutoencoderKL vae,
                                            DiscreteVpSchedule scheduler, Device device, string source)
    {
        if (textEncoder.Config.HiddenSize != unet.Config.CrossAttentionDim)
            throw new DmdInputException($"{source}: the text encoder's hidden_size {textEncoder.Config.HiddenSize} is not the UNet's cross_attention_dim {unet.Config.CrossAttentionDim}; the parts come from different models");
        if (vae.Config.LatentChannels != unet.Config.InChannels)
            throw new DmdInputException($"{source}: the VAE's latent_channels {vae.Config.LatentChannels} is not the UNet's in_channels {unet.Config.InChannels}; the parts come from different models");
        if (tokenizer.ContextLength > textEncoder.Config.MaxPositionEmbeddings)
            throw new DmdInputException($"{source}: the tokenizer's model_max_length {tokenizer.ContextLength} exceeds the text encoder's {textEncoder.Config.MaxPositionEmbeddings} positions");
        if (device.type != DeviceType.CPU)
        {
            textEncoder.to(device);
            unet.to(device);
            vae.to(device);
        }
        return new StableDiffusion(tokenizer, textEncoder, unet, vae, scheduler, device);
    }

    /// <summary>model_index.json is optional; when present it must describe a pipeline with these five parts (not SDXL's two text encoders).</summary>
    private static void CheckModelIndex(string path)
    {
        if (!File.Exists(path)) return;
        JsonObject? index;
        try { index = JsonNode.Parse(File.ReadAllText(path)) as JsonObject; }
        catch (System.Text.Json.JsonException e) { throw new DmdInputException($"{path} is not valid JSON: {e.Message}", e); }
        if (index is null) throw new DmdInputException($"{path} does not hold a JSON object");
        if (index.ContainsKey("text_encoder_2") || index.ContainsKey("prior") || !index.ContainsKey("unet"))
            throw new DmdInputException($"{path} describes a {index["_class_name"]?.ToString() ?? "pipeline"} with other parts: only Stable Diffusion v1.x/2.x-style folders (one text encoder, a UNet) are implemented");
    }

    /// <summary>The text contexts (B, 77, C) of <paramref name="prompts"/> (CLIP's last_hidden_state), on the host.</summary>
    public Tensor EncodePrompts(IReadOnlyList<string> prompts)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = Tokenizer.Encode(prompts).to(Device);
        return TextEncoder.forward(ids).cpu().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Unit-variance initial latents (count, latent channels, H/f, W/f) on the host, image i from torch's CPU generator
    /// seeded with <paramref name="seed"/> + i (<see cref="ImageSampling.SeededNoise"/>): the latents diffusers draws with
    /// <c>generator=[torch.Generator().manual_seed(seed + i) for i in range(count)]</c> before scaling them by init_noise_sigma.
    /// </summary>
    public Tensor InitialLatents(int count, long seed, int height, int width)
    {
        CheckSize(height, width);
        return ImageSampling.SeededNoise(new[] { Unet.Config.InChannels, height / VaeScaleFactor, width / VaeScaleFactor }, seed, count);
    }

    /// <summary>Images (B, 3, H, W) of latents at the UNet's scale: <c>vae.decode(latents / scaling_factor)</c>, not clamped, on the host.</summary>
    public Tensor DecodeLatents(Tensor latents)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var z = latents.to(Device) / DenoiserExtensions.Const(Vae.ScalingFactor, latents.to(Device));
        return Vae.Decode(z).cpu().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Text-to-image, as diffusers' <c>StableDiffusionPipeline(prompt, negative_prompt, num_inference_steps, guidance_scale,
    /// latents=...)</c> with an EulerDiscreteScheduler: contexts of the prompts and of the negative prompt (one for every
    /// image, diffusers' <c>[negative] * B</c>); sigmas and timesteps of <see cref="DiscreteVpSchedule.SamplingSigmas"/>;
    /// latents <c>z * init_noise_sigma</c> (<c>prepare_latents</c>); guided Euler steps in sigma space
    /// (<c>scale_model_input</c> + UNet + CFG on eps + <c>step</c>, which is Euler on <c>D = x - sigma eps</c>); then
    /// <c>vae.decode(latents / scaling_factor)</c> clamped to [-1, 1] (the clamp of diffusers' postprocess).
    /// </summary>
    /// <param name="prompts">One prompt per image.</param>
    /// <param name="options">Steps, guidance, size, seed, sampler, batch.</param>
    /// <param name="latents">Unit-variance initial latents (B, C, H/f, W/f) (diffusers' <c>latents=</c>); null draws
    /// <see cref="InitialLatents"/> from the options' seed.</param>
    /// <param name="onEval">Called after each network evaluation with (done, total).</param>
    public TextToImageResult Generate(IReadOnlyList<string> prompts, TextToImageOptions? options = null, Tensor? latents = null,
                                      Action<int, int>? onEval = null)
    {
        var o = options ?? new TextToImageOptions();
        o.Validate();
        var sampler = o.Sampler.ToLowerInvariant();
        if (prompts.Count == 0) throw new DmdInputException("no prompts: give at least one");
        int height = o.Height ?? DefaultSize, width = o.Width ?? DefaultSize;
        CheckSize(height, width);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var z = latents ?? InitialLatents(prompts.Count, o.Seed, height, width);
        if (z.dim() != 4 || z.shape[0] != prompts.Count || z.shape[1] != Unet.Config.InChannels)
            throw new DmdInputException($"latents must be [{prompts.Count}, {Unet.Config.InChannels}, h, w] (one per prompt), got [{string.Join(", ", z.shape)}]");

        var clock = Stopwatch.StartNew();
        var context = EncodePrompts(prompts);
        var (sigmas, timesteps) = Scheduler.SamplingSigmas(o.Steps);
        double initSigma = Scheduler.InitNoiseSigma(sigmas);
        IDenoiser d = Denoiser.PinTimesteps(sigmas, timesteps);
        if (o.Guidance > 1) d = new GuidedDenoiser(d, o.Guidance, EncodePrompts(new[] { o.NegativePrompt }));  // do_classifier_free_guidance
        int nfe = sampler == "euler" ? o.Steps : 2 * o.Steps - 1;
        int batches = (prompts.Count + o.Batch - 1) / o.Batch;
        var counted = new CountingDenoiser(d, batches * nfe, onEval);

        var finals = new List<Tensor>();
        var images = new List<Tensor>();
        for (int i = 0; i < prompts.Count; i += o.Batch)
        {
            int j = Math.Min(prompts.Count, i + o.Batch);
            var x = z[i..j].to(ScalarType.Float32).to(Device);
            x = x * DenoiserExtensions.Const(initSigma, x);                                       // prepare_latents
            var c = context[i..j].to(Device);
            var res = sampler == "euler" ? Samplers.Euler(counted, x, c, sigmas) : Samplers.Heun(counted, x, c, sigmas);
            var final = res.Samples.cpu();
            finals.Add(final);
            images.Add(DecodeLatents(final).clamp(-1, 1));
        }
        var result = new TextToImageResult(cat(finals).MoveToOuterDisposeScope(), cat(images).MoveToOuterDisposeScope(), nfe,
                                           clock.Elapsed.TotalSeconds);
        return result;
    }

    /// <summary>
    /// Text-to-image with a distilled generator of this pipeline's UNet (`dmd distill` on it): its K steps (one by default)
    /// instead of the sampler, from the same initial latents as <see cref="Generate(IReadOnlyList{string}, TextToImageOptions?, Tensor?, Action{int, int}?)"/>
    /// (seed + i for image i; between steps <see cref="Distillation.OneStepGenerator.SeededStepNoise"/>), then the VAE decode clamped to [-1, 1].
    /// The generator's latent size sets the image size.
    /// </summary>
    /// <param name="generator">The distilled generator (its spec set, as <see cref="Distillation.OneStepGenerator.Load"/> gives it).</param>
    /// <param name="prompts">One prompt per image.</param>
    /// <param name="seed">Image i's noise is drawn with seed + i (its initial latents unless <paramref name="latents"/> are given, and its step noise).</param>
    /// <param name="steps">How many of the generator's steps to run (default all).</param>
    /// <param name="batch">Images per network batch.</param>
    /// <param name="latents">Unit-variance initial latents (one per prompt), or null to draw them from the seed.</param>
    public TextToImageResult Generate(Distillation.OneStepGenerator generator, IReadOnlyList<string> prompts, long seed = 0, int? steps = null, int batch = 4,
                                      Tensor? latents = null)
    {
        if (prompts.Count == 0) throw new DmdInputException("no prompts: give at least one");
        var spec = generator.Spec ?? throw new ArgumentException("the generator needs its spec: load it with OneStepGenerator.Load");
        if (spec.SampleShape.Length != 3 || spec.SampleShape[0] != Unet.Config.InChannels || spec.LabelDim != Unet.Config.CrossAttentionDim)
            throw new DmdInputException($"the generator makes [{string.Join(",", spec.SampleShape)}] samples conditioned on {spec.LabelDim} channels: it was not distilled from this pipeline's UNet ([{Unet.Config.InChannels}, h, w], context {Unet.Config.CrossAttentionDim})");
        int k = generator.CheckSteps(steps);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var clock = Stopwatch.StartNew();
        var z = latents ?? ImageSampling.SeededNoise(spec.SampleShape, seed, prompts.Count);
        if (z.shape[0] != prompts.Count || !z.shape.Skip(1).SequenceEqual(spec.SampleShape.Select(v => (long)v)))
            throw new DmdInputException($"latents must be [{prompts.Count}, {string.Join(", ", spec.SampleShape)}] (one per prompt), got [{string.Join(", ", z.shape)}]");
        var noise = Distillation.OneStepGenerator.SeededStepNoise(spec.SampleShape, seed, prompts.Count, k);
        var context = EncodePrompts(prompts);
        var dev = generator.Net.Device;
        var finals = new List<Tensor>();
        var images = new List<Tensor>();
        for (int i = 0; i < prompts.Count; i += Math.Max(1, batch))
        {
            int j = Math.Min(prompts.Count, i + Math.Max(1, batch));
            var batchLatents = generator.Generate(z[i..j].to(dev), context[i..j].to(dev), noise.Select(t => t[i..j].to(dev)).ToArray(), k).cpu();
            finals.Add(batchLatents);
            images.Add(DecodeLatents(batchLatents).clamp(-1, 1));
        }
        return new TextToImageResult(cat(finals).MoveToOuterDisposeScope(), cat(images).MoveToOuterDisposeScope(), k, clock.Elapsed.TotalSeconds);
    }

    private void CheckSize(int height, int width)
    {
        int f = VaeScaleFactor;
        if (height < f || width < f || height % f != 0 || width % f != 0)
            throw new DmdInputException($"image size {height}x{width}: height and width must be positive multiples of {f} (the VAE's downscaling factor)");
    }

    /// <summary>Disposes the networks.</summary>
    public void Dispose()
    {
        TextEncoder.Dispose();
        Unet.Dispose();
        Vae.Dispose();
    }

    /// <summary>Counts network evaluations for progress reports.</summary>
    private sealed class CountingDenoiser : IDenoiser
    {
        private readonly IDenoiser inner;
        private readonly int total;
        private readonly Action<int, int>? onEval;
        private int done;

        public CountingDenoiser(IDenoiser inner, int total, Action<int, int>? onEval) => (this.inner, this.total, this.onEval) = (inner, total, onEval);

        public int LabelDim => inner.LabelDim;
        public Device Device => inner.Device;

        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
        {
            var d = inner.Denoise(x, sigma, labels);
            onEval?.Invoke(++done, total);
            return d;
        }
    }
}
