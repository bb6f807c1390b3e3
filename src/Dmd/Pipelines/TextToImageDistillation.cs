using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// DMD on a Stable-Diffusion-style teacher (a diffusers folder; DESIGN.md, "Text-to-image"): the UNet becomes the real
/// denoiser in the VP preconditioning (<see cref="EdmPrecond(EdmBackbone, DiscreteVpSchedule)"/>, the same D = x - sigma eps
/// the pipeline samples with), the prompts of a prompts file are encoded once by its text encoder
/// (<see cref="PromptConditions"/>, the empty prompt as CFG's unconditional branch), and <see cref="DmdTrainer"/> runs on
/// the latents unchanged: generator and fake denoiser copies of the UNet, DM noise levels on the teacher's own 1000
/// training sigmas (timesteps [min-step, max-step], DMD's 20..980), the generator mapping noise at the last one (14.61 for
/// SD v1.5, DMD's timestep 999), the fake denoiser trained with the eps MSE. The progress grids decode with the VAE.
/// </summary>
public static class TextToImageDistillation
{
    /// <summary>Whether <paramref name="path"/> is a diffusers text-to-image folder (it has unet/ and scheduler/), not an EDM teacher.</summary>
    public static bool IsPipelineFolder(string path) =>
        Directory.Exists(Path.Combine(path, "unet")) && Directory.Exists(Path.Combine(path, "scheduler"));

    /// <summary>The teacher's UNet as a frozen VP-preconditioned denoiser and its spec (latents at the UNet's sample_size).</summary>
    public static (EdmPrecond Teacher, SdUNetSpec Spec) Teacher(StableDiffusion sd)
    {
        var spec = SdUNetSpec.For(sd.Unet, sd.Scheduler);
        var teacher = new EdmPrecond(new SdUNetBackbone(sd.Unet, spec.SampleShape), sd.Scheduler);
        teacher.eval();
        return (teacher, spec);
    }

    /// <summary>The prompts' text contexts, <paramref name="batch"/> prompts at a time, and the empty prompt's as the unconditional one.</summary>
    public static PromptConditions EncodePrompts(StableDiffusion sd, IReadOnlyList<string> prompts, int batch = 64)
    {
        if (prompts.Count == 0) throw new DmdInputException("no prompts: give a prompts file with at least one line");
        var parts = new List<Tensor>();
        for (int i = 0; i < prompts.Count; i += batch)
            parts.Add(sd.EncodePrompts(prompts.Skip(i).Take(batch).ToArray()));
        return new PromptConditions(prompts, cat(parts), sd.EncodePrompts(new[] { "" }));
    }

    /// <summary>
    /// The config with a VP teacher's noise grid: grid-levels = its training timesteps and sigma-max = its largest training
    /// sigma when they were left at the EDM defaults (1000, 80); other values stay, for the trainer to check.
    /// </summary>
    public static DmdConfig ForSchedule(DmdConfig config, DiscreteVpSchedule schedule) => config with
    {
        GridLevels = config.GridLevels == new DmdConfig().GridLevels ? schedule.NumTrainTimesteps : config.GridLevels,
        SigmaMax = config.SigmaMax == new DmdConfig().SigmaMax ? schedule.SigmaMax : config.SigmaMax,
    };

    /// <summary>
    /// A DMD trainer for the text-to-image teacher in <paramref name="folder"/> on the prompts of <paramref name="promptsFile"/>
    /// (one a line), with regression pairs from `dmd pairs --prompts` when the config uses them. Returns it with the loaded
    /// pipeline (its tokenizer, text encoder and VAE stay in use for the grids; dispose it after the trainer).
    /// </summary>
    /// <param name="folder">The diffusers text-to-image folder (tokenizer/, text_encoder/, unet/, vae/, scheduler/).</param>
    /// <param name="promptsFile">The prompts the generator learns, one a line.</param>
    /// <param name="pairsPath">Regression pairs from `dmd pairs --prompts` (same prompts), or null.</param>
    /// <param name="config">The run's settings (grid-levels and sigma-max follow the teacher's schedule when left at their defaults).</param>
    /// <param name="device">Where the networks compute.</param>
    /// <param name="ganData">With gan-weight &gt; 0, DMD2's GAN needs captioned real images, encoded by the pipeline's VAE and
    /// text encoder: "captions:FOLDER" (<see cref="CaptionedLatents.FromFolder"/>) or "fashion-mnist" (its training images
    /// with <see cref="Data.FashionMnistCaptions"/>).</param>
    public static (DmdTrainer Trainer, StableDiffusion Pipeline) FromFolder(string folder, string promptsFile, string? pairsPath, DmdConfig config,
                                                                          Device? device = null, string? ganData = null)
    {
        if (config.UsesRealData && ganData != "fashion-mnist" && ganData?.StartsWith("captions:", StringComparison.Ordinal) != true)
            throw new DmdInputException($"{config.RealDataReason} on a text-to-image teacher needs captioned real images: --gan-data captions:FOLDER " +
                                        $"(images with a {CaptionedLatents.MetadataFile} of file_name and text) or fashion-mnist (with templated captions), or set {config.RealDataOff}");
        var sd = StableDiffusion.Load(folder, device);
        var conditions = EncodePrompts(sd, RegressionPairs.ReadPrompts(promptsFile));
        var (teacher, spec) = Teacher(sd);
        var pairs = pairsPath is not null ? RegressionPairs.Load(pairsPath) : null;
        var real = !config.UsesRealData ? null
            : ganData == "fashion-mnist" ? CaptionedLatents.FashionMnist(sd)
            : CaptionedLatents.FromFolder(sd, ganData!["captions:".Length..]);
        var trainer = new DmdTrainer(teacher, spec, ForSchedule(config, sd.Scheduler), pairs, device, conditions: conditions, realData: real)
        {
            DecodeLatents = sd.DecodeLatents,
        };
        return (trainer, sd);
    }

    /// <summary>
    /// Regression pairs of the text-to-image teacher in <paramref name="sd"/> for the prompts of <paramref name="prompts"/>:
    /// each pair's prompt drawn uniformly, its noise z at the largest training sigma, the teacher's Heun ODE (Karras levels
    /// from the largest to the smallest training sigma) with CFG <paramref name="guidance"/> against the empty prompt, in latent space.
    /// </summary>
    public static RegressionPairs MakePairs(StableDiffusion sd, IReadOnlyList<string> prompts, int count, int steps = 18, double guidance = 1.0,
                                           long seed = 1, int batchSize = 64, Action<int, int>? onBatch = null, string? shardDir = null)
    {
        var conditions = EncodePrompts(sd, prompts);
        var (teacher, spec) = Teacher(sd);
        return RegressionPairs.Generate(teacher, spec.SampleShape, count, steps, guidance, seed, batchSize, onBatch, sd.Device, shardDir,
                                        sigmaMax: sd.Scheduler.SigmaMax, conditions: conditions, sigmaMin: sd.Scheduler.SigmaMin);
    }
}
