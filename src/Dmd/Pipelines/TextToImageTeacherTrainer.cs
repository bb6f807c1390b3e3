using System.Text.Json;
using System.Text.Json.Nodes;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// Hyper-parameters and sizes of a small latent text-to-image teacher in Stable Diffusion's layout (`dmd
/// train-text2img-teacher`). Defaults: the Fashion-MNIST run of the README (32x32 greyscale images, 4x16x16 latents).
/// </summary>
public sealed record TextToImageTeacherConfig
{
    // ---- stage a: the autoencoder ----
    /// <summary>VAE optimiser steps (stage a)</summary>
    public int VaeSteps { get; init; } = 400;
    /// <summary>images per VAE step</summary>
    public int VaeBatchSize { get; init; } = 32;
    /// <summary>VAE Adam learning rate</summary>
    public double VaeLearningRate { get; init; } = 1e-3;
    /// <summary>weight of the KL term against the per-image summed L1 reconstruction loss (LDM's first-stage weighting; SD's VAE used 1e-6)</summary>
    public double VaeKlWeight { get; init; } = 1e-6;
    /// <summary>training images whose posterior means set the latent scaling_factor (1 / their std, as SD did)</summary>
    public int ScaleImages { get; init; } = 4096;
    /// <summary>VAE width of the first level; the second has twice as many channels</summary>
    public int VaeChannels { get; init; } = 16;

    // ---- stage b: UNet + text encoder ----
    /// <summary>UNet + text encoder optimiser steps (stage b)</summary>
    public int Steps { get; init; } = 20_000;
    /// <summary>images per UNet step</summary>
    public int BatchSize { get; init; } = 64;
    /// <summary>AdamW learning rate of the UNet and the text encoder</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>AdamW weight decay</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>linear learning-rate warm-up of both stages, in steps</summary>
    public int LrRampupSteps { get; init; } = 100;
    /// <summary>gradient norm clip of stage b (SD's max_grad_norm)</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    /// <summary>EMA half-life of the UNet and text encoder weights, in steps (the EMA is the saved model)</summary>
    public double EmaHalfLifeSteps { get; init; } = 100;
    /// <summary>probability that a caption is replaced by the empty prompt (the unconditional branch of CFG)</summary>
    public double CaptionDropout { get; init; } = 0.1;
    /// <summary>UNet width of the first level; the second has twice as many channels</summary>
    public int UnetChannels { get; init; } = 32;
    /// <summary>attention heads per UNet level (diffusers' attention_head_dim)</summary>
    public int UnetHeads { get; init; } = 2;
    /// <summary>GroupNorm groups of the UNet and the VAE</summary>
    public int NormGroups { get; init; } = 8;
    /// <summary>text encoder width (the UNet's cross_attention_dim)</summary>
    public int TextHidden { get; init; } = 64;
    /// <summary>text encoder layers</summary>
    public int TextLayers { get; init; } = 2;
    /// <summary>text encoder attention heads</summary>
    public int TextHeads { get; init; } = 4;

    // ---- both ----
    /// <summary>seed of the weight initialisation and of the run's random generator</summary>
    public long Seed { get; init; } = 0;
    /// <summary>checkpoint every N steps of either stage (and at its end)</summary>
    public int CheckpointEvery { get; init; } = 200;
    /// <summary>a losses.csv row every N steps</summary>
    public int LogEvery { get; init; } = 25;
    /// <summary>sample grid of the EMA model every N UNet steps (0: only at the end)</summary>
    public int GridEvery { get; init; } = 200;
    /// <summary>images per class (row) in the grids</summary>
    public int GridPerClass { get; init; } = 8;
    /// <summary>Euler steps of the grids</summary>
    public int GridSteps { get; init; } = 25;
    /// <summary>CFG scale of the grids</summary>
    public double GridGuidance { get; init; } = 3.0;

    /// <summary>Rejects values no run can use, naming the setting.</summary>
    public void Validate()
    {
        Settings.RequireFinite(this);
        Settings.AtLeast("vae-steps", VaeSteps, 1);
        Settings.AtLeast("vae-batch-size", VaeBatchSize, 1);
        Settings.Positive("vae-learning-rate", VaeLearningRate);
        Settings.InRange("vae-kl-weight", VaeKlWeight, 0, 1, hiInclusive: true);
        Settings.AtLeast("scale-images", ScaleImages, 2);
        Settings.AtLeast("steps", Steps, 1);
        Settings.AtLeast("batch-size", BatchSize, 1);
        Settings.Positive("learning-rate", LearningRate);
        Settings.InRange("weight-decay", WeightDecay, 0, 1, hiInclusive: true);
        Settings.AtLeast("lr-rampup-steps", LrRampupSteps, 0);
        Settings.Positive("max-grad-norm", MaxGradNorm);
        Settings.Positive("ema-half-life-steps", EmaHalfLifeSteps);
        Settings.InRange("caption-dropout", CaptionDropout, 0, 1);
        Settings.AtLeast("checkpoint-every", CheckpointEvery, 1);
        Settings.AtLeast("log-every", LogEvery, 1);
        Settings.AtLeast("grid-every", GridEvery, 0);
        Settings.AtLeast("grid-per-class", GridPerClass, 1);
        Settings.AtLeast("grid-steps", GridSteps, 1);
        foreach (var (name, ch) in new[] { ("vae-channels", VaeChannels), ("unet-channels", UnetChannels) })
            if (ch < 1 || ch % NormGroups != 0)
                throw new DmdInputException($"--{name} {ch}: must be a positive multiple of --norm-groups {NormGroups}");
        if (UnetChannels % UnetHeads != 0) throw new DmdInputException($"--unet-channels {UnetChannels}: must be a multiple of --unet-heads {UnetHeads}");
        if (TextHidden < 1 || TextHeads < 1 || TextHidden % TextHeads != 0) throw new DmdInputException($"--text-hidden {TextHidden}: must be a positive multiple of --text-heads {TextHeads}");
        Settings.AtLeast("text-layers", TextLayers, 1);
    }

    /// <summary>The autoencoder: 1 channel in and out, 4 latent channels, two levels (f = 2), one resnet per encoder block.</summary>
    public AutoencoderKLConfig VaeConfig(int channels = 1, int resolution = 32) => new()
    {
        InChannels = channels, OutChannels = channels, LatentChannels = 4, BlockOutChannels = new[] { VaeChannels, 2 * VaeChannels },
        LayersPerBlock = 1, NormNumGroups = NormGroups, ScalingFactor = 1.0, SampleSize = resolution,
    };

    /// <summary>The UNet: CrossAttnDownBlock2D + DownBlock2D, UpBlock2D + CrossAttnUpBlock2D, one resnet per down block.</summary>
    public UNet2DConditionConfig UnetConfig(int latentSize = 16) => new()
    {
        InChannels = 4, OutChannels = 4, BlockOutChannels = new[] { UnetChannels, 2 * UnetChannels },
        DownBlockTypes = new[] { "CrossAttnDownBlock2D", "DownBlock2D" }, UpBlockTypes = new[] { "UpBlock2D", "CrossAttnUpBlock2D" },
        LayersPerBlock = 1, AttentionHeads = new[] { UnetHeads, UnetHeads }, CrossAttentionDim = TextHidden, NormNumGroups = NormGroups,
        SampleSize = latentSize,
    };

    /// <summary>The CLIP text encoder for a vocabulary of <paramref name="vocabSize"/> tokens: 77 positions, MLP 4x wide, quick_gelu.</summary>
    public ClipTextConfig TextConfig(int vocabSize) =>
        new(vocabSize, TextHidden, 4 * TextHidden, TextHeads, TextLayers, ClipTokenizer.DefaultContextLength, "quick_gelu", 1e-5);
}

/// <summary>What a text-to-image teacher run saves as its config.json (compared when it is continued).</summary>
internal sealed record TextToImageRunInfo(TextToImageTeacherConfig Config, string Data, long TrainImages,
                                          AutoencoderKLConfig Vae, UNet2DConditionConfig Unet, ClipTextConfig TextEncoder);

/// <summary>
/// Trains a small Stable Diffusion from scratch on captioned images, in two resumable stages:
/// <list type="number">
/// <item>an <see cref="AutoencoderKL"/> (L1 reconstruction + <see cref="TextToImageTeacherConfig.VaeKlWeight"/> x KL of a
/// posterior sample's decoding, LDM's first stage without its GAN and LPIPS terms), then <c>scaling_factor</c> = 1 / std of
/// the posterior means of <see cref="TextToImageTeacherConfig.ScaleImages"/> training images (what SD did);</item>
/// <item>a <see cref="ClipTextModel"/> and a <see cref="UNet2DConditionModel"/> jointly, on the frozen VAE's scaled
/// posterior samples (<c>latent_dist.sample() * scaling_factor</c>, as diffusers' train_text_to_image.py): eps-prediction MSE at
/// timesteps uniform in 0..999 of <see cref="DiscreteVpSchedule.StableDiffusion15"/>, captions from
/// <see cref="FashionMnistCaptions"/> with a random template, dropped to "" with probability
/// <see cref="TextToImageTeacherConfig.CaptionDropout"/>; AdamW, warm-up, gradient clipping, EMA.</item>
/// </list>
/// The output folder is a diffusers Stable Diffusion folder (<c>tokenizer/</c>, <c>text_encoder/</c>, <c>unet/</c>,
/// <c>vae/</c>, <c>scheduler/</c>, <c>model_index.json</c>) that <see cref="StableDiffusion.Load"/> reads, holding the EMA
/// weights; beside it the run's <c>config.json</c>, <c>losses.csv</c> and <c>checkpoint/</c> of stage b, <c>vae-stage/</c>
/// (stage a's losses.csv and checkpoint/, <c>reconstructions.png</c>), and <c>samples-STEP.png</c> grids (one row per
/// class, <see cref="FashionMnistCaptions.PromptFor"/>, drawn by <see cref="StableDiffusion.Generate(IReadOnlyList{string}, TextToImageOptions?, Tensor?, Action{int, int}?)"/> from the folder).
/// </summary>
public sealed class TextToImageTeacherTrainer : IDisposable
{
    /// <summary>The run's settings.</summary>
    public TextToImageTeacherConfig Config { get; }
    /// <summary>The tokenizer of the captions (<see cref="FashionMnistCaptions.BuildVocabulary"/>).</summary>
    public ClipTokenizer Tokenizer { get; }
    /// <summary>The autoencoder (trained in stage a, frozen in stage b).</summary>
    public AutoencoderKL Vae { get; private set; }
    /// <summary>The text encoder being trained.</summary>
    public ClipTextModel TextEncoder { get; }
    /// <summary>The UNet being trained.</summary>
    public UNet2DConditionModel Unet { get; }
    /// <summary>EMA of <see cref="TextEncoder"/> (saved as the model).</summary>
    public ClipTextModel EmaTextEncoder { get; }
    /// <summary>EMA of <see cref="Unet"/> (saved as the model).</summary>
    public UNet2DConditionModel EmaUnet { get; }
    /// <summary>The DDPM schedule of stage b (SD v1.5's scaled-linear betas).</summary>
    public DiscreteVpSchedule Schedule { get; } = DiscreteVpSchedule.StableDiffusion15;
    /// <summary>VAE steps done.</summary>
    public int VaeStep { get; private set; }
    /// <summary>UNet steps done.</summary>
    public int UnetStep { get; private set; }
    /// <summary>The latent scale (1 until stage a has finished and set it).</summary>
    public double ScalingFactor => Vae.Config.ScalingFactor;
    /// <summary>Seconds spent drawing grids (so callers can time training alone).</summary>
    public double GridSeconds { get; private set; }

    private readonly ImageDataset data;
    private readonly optim.Optimizer vaeOpt;
    private readonly optim.Optimizer opt;
    private readonly Generator vaeRng;
    private readonly Generator rng;
    private readonly Tensor alphasCumprod;
    private double smoothedVae = double.NaN, smoothedUnet = double.NaN;

    /// <summary>
    /// Builds the three networks (initialised from the seed), the EMA copies and the optimisers for images
    /// <paramref name="data"/> (labelled with the ten Fashion-MNIST classes, 1 channel, sides divisible by 2).
    /// </summary>
    public TextToImageTeacherTrainer(TextToImageTeacherConfig config, ImageDataset data)
    {
        config.Validate();
        if (data.ClassIndex is null || data.NumClasses != FashionMnistCaptions.ClassNames.Count)
            throw new DmdInputException($"the text-to-image teacher needs images labelled with the {FashionMnistCaptions.ClassNames.Count} Fashion-MNIST classes (its captions name them); use --data fashion-mnist");
        if (data.Shape[1] % 2 != 0 || data.Shape[2] % 2 != 0)
            throw new DmdInputException($"images {data.Shape[1]}x{data.Shape[2]}: sides must be even (the VAE halves them)");
        Config = config;
        this.data = data;
        var (vocab, merges) = FashionMnistCaptions.BuildVocabulary();
        Tokenizer = new ClipTokenizer(vocab, merges);
        torch.manual_seed(config.Seed);
        Vae = new AutoencoderKL(config.VaeConfig(data.Shape[0], data.Shape[1]));
        TextEncoder = new ClipTextModel(config.TextConfig(Tokenizer.VocabSize));
        Unet = new UNet2DConditionModel(config.UnetConfig(data.Shape[1] / 2));
        EmaTextEncoder = new ClipTextModel(TextEncoder.Config);
        EmaUnet = new UNet2DConditionModel(Unet.Config);
        TrainingUtils.CopyWeights(TextEncoder, EmaTextEncoder);
        TrainingUtils.CopyWeights(Unet, EmaUnet);
        TrainingUtils.Freeze(EmaTextEncoder);
        TrainingUtils.Freeze(EmaUnet);
        vaeOpt = optim.Adam(Vae.parameters(), config.VaeLearningRate);
        opt = optim.AdamW(TextEncoder.parameters().Concat(Unet.parameters()), config.LearningRate, weight_decay: config.WeightDecay);
        vaeRng = new Generator((ulong)config.Seed);
        rng = new Generator((ulong)config.Seed + 1);
        alphasCumprod = tensor(Schedule.AlphasCumprod.Select(a => (float)a).ToArray());
    }

    /// <summary>Random images (n, C, H, W) in [-1, 1] and their class indices (n) from the training set.</summary>
    private (Tensor X, long[] Classes) Draw(int n, Generator g)
    {
        var idx = Rng.Integers(0, data.Count, n, g);
        var x = ImageDataset.ToFloat(data.Images.index_select(0, idx));
        return (x, data.ClassIndex!.index_select(0, idx).data<long>().ToArray());
    }

    /// <summary>
    /// One VAE step; returns (loss, mean absolute error per pixel, KL per image). The loss is LDM's: the per-image sum of
    /// |x - decode(z)|, z drawn from the posterior, plus <see cref="TextToImageTeacherConfig.VaeKlWeight"/> x the per-image
    /// KL to N(0, I), both averaged over the batch.
    /// </summary>
    public (double Loss, double L1, double Kl, bool Skipped) TrainVaeStep()
    {
        using var scope = NewDisposeScope();
        Vae.train();
        var (x, _) = Draw(Config.VaeBatchSize, vaeRng);
        TrainingUtils.SetLearningRate(vaeOpt, TrainingUtils.WarmupLr(Config.VaeLearningRate, VaeStep, Config.LrRampupSteps));
        vaeOpt.zero_grad();
        var post = Vae.Encode(x);
        var rec = Vae.Decode(post.Sample(vaeRng));
        var l1 = (rec - x).abs().flatten(1).sum(1).mean();
        var kl = (post.Mean.square() + post.LogVar.exp() - 1 - post.LogVar).flatten(1).sum(1).mean() * 0.5;
        var loss = l1 + kl * Config.VaeKlWeight;
        loss.backward();
        bool skipped = !TrainingUtils.UpdateIsFinite(loss, Vae);
        if (!skipped) TrainingUtils.OptimizerStep(vaeOpt);
        VaeStep++;
        return (TrainingUtils.Value(loss), TrainingUtils.Value(l1) / x[0].numel(), TrainingUtils.Value(kl), skipped);
    }

    /// <summary>The captions of a batch: a random template per image, "" with probability <see cref="TextToImageTeacherConfig.CaptionDropout"/>.</summary>
    private string[] Captions(long[] classes)
    {
        int n = classes.Length;
        var template = Rng.Integers(0, FashionMnistCaptions.Templates.Count, n, rng).data<long>().ToArray();
        var drop = Rng.Uniform(new long[] { n }, rng).data<float>().ToArray();
        return Enumerable.Range(0, n).Select(i => drop[i] < Config.CaptionDropout ? "" : FashionMnistCaptions.Caption((int)classes[i], (int)template[i])).ToArray();
    }

    /// <summary>
    /// One step of stage b; returns the eps-prediction MSE. The VAE must be trained (its scaling factor set): latents are
    /// <c>vae.encode(x).latent_dist.sample() * scaling_factor</c>, noised to <c>sqrt(abar_t) z + sqrt(1 - abar_t) eps</c> at
    /// t uniform in 0..999, and the UNet predicts eps from them and the text encoder's states of the captions.
    /// </summary>
    public (double Loss, bool Skipped) TrainUnetStep()
    {
        using var scope = NewDisposeScope();
        TextEncoder.train();
        Unet.train();
        var (x, classes) = Draw(Config.BatchSize, rng);
        var ids = Tokenizer.Encode(Captions(classes));
        Tensor z;
        using (no_grad()) z = Vae.Encode(x).Sample(rng) * ScalingFactor;
        int n = (int)z.shape[0];
        var t = Rng.Integers(0, Schedule.NumTrainTimesteps, n, rng);
        var abar = alphasCumprod.index_select(0, t).view(n, 1, 1, 1);
        var eps = Rng.Normal(z.shape, rng);
        var noisy = abar.sqrt() * z + (1 - abar).sqrt() * eps;
        TrainingUtils.SetLearningRate(opt, TrainingUtils.WarmupLr(Config.LearningRate, UnetStep, Config.LrRampupSteps));
        opt.zero_grad();
        var pred = Unet.forward(noisy, t, TextEncoder.forward(ids));
        var loss = nn.functional.mse_loss(pred, eps);
        loss.backward();
        bool skipped = !TrainingUtils.UpdateIsFinite(loss, Unet) || !TrainingUtils.UpdateIsFinite(loss, TextEncoder);
        if (!skipped)
        {
            TrainingUtils.ClipGradNorm(TextEncoder.parameters().Concat(Unet.parameters()), Config.MaxGradNorm);
            TrainingUtils.OptimizerStep(opt);
            double beta = Math.Pow(0.5, 1.0 / Config.EmaHalfLifeSteps);
            TrainingUtils.UpdateEma(EmaTextEncoder, TextEncoder, beta);
            TrainingUtils.UpdateEma(EmaUnet, Unet, beta);
        }
        UnetStep++;
        return (TrainingUtils.Value(loss), skipped);
    }

    /// <summary>
    /// 1 / std of the VAE's posterior means over <see cref="TextToImageTeacherConfig.ScaleImages"/> training images (the
    /// first ones), SD's recipe for <c>scaling_factor</c>.
    /// </summary>
    public double MeasureScalingFactor()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Vae.eval();
        int n = (int)Math.Min(Config.ScaleImages, data.Count);
        var means = new List<Tensor>();
        for (int i = 0; i < n; i += 256)
            means.Add(Vae.Encode(ImageDataset.ToFloat(data.Images[i..Math.Min(n, i + 256)])).Mean);
        return 1.0 / cat(means).std().item<float>();
    }

    /// <summary>Sets the latent scale (a new VAE with the same weights and the config's <c>scaling_factor</c>).</summary>
    private void SetScalingFactor(double s)
    {
        var scaled = new AutoencoderKL(Vae.Config with { ScalingFactor = s });
        TrainingUtils.CopyWeights(Vae, scaled);
        Vae = scaled;
    }

    /// <summary>
    /// Runs both stages to their ends, or until <paramref name="options"/> stops it (time budget over the whole call, stop
    /// request), resuming from <paramref name="outDir"/> where it holds a run with the same settings. Stage a is skipped
    /// when <c>vae/</c> is already written. The diffusers folder is (re)written whenever stage b stops or checkpoints (with a grid when it stops), so
    /// it always holds the latest EMA model. <paramref name="onStage"/> tells which stage starts ("vae", "unet").
    /// Returns false when the run was stopped before its last step.
    /// </summary>
    public bool Run(string outDir, string dataName, RunOptions? options = null, Action<string>? onStage = null)
    {
        options ??= new RunOptions();
        Directory.CreateDirectory(outDir);
        var info = new TextToImageRunInfo(Config, dataName, data.Count, Config.VaeConfig(data.Shape[0], data.Shape[1]), Unet.Config, TextEncoder.Config);
        TrainingLoop.CheckSameRun(outDir, info, options, MayChange, pathFields: System.Array.Empty<string>());
        Checkpoint.SaveJson(info, Path.Combine(outDir, "config.json"));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        RunOptions Remaining() => options with
        {
            TimeBudget = options.TimeBudget is TimeSpan b ? (b - clock.Elapsed > TimeSpan.Zero ? b - clock.Elapsed : TimeSpan.FromTicks(1)) : null,
        };

        // ---- stage a ----
        var vaeDir = Path.Combine(outDir, "vae");
        if (File.Exists(Path.Combine(vaeDir, DiffusersConfig.WeightsName)))
        {
            Vae = AutoencoderKL.FromPretrained(vaeDir);
            options.OnMessage?.Invoke($"VAE already trained: {vaeDir} (scaling_factor {Vae.ScalingFactor:G5})");
        }
        else
        {
            onStage?.Invoke("vae");
            var stageDir = Path.Combine(outDir, "vae-stage");
            Directory.CreateDirectory(stageDir);
            var stage = new VaeStage(this);
            var o = Remaining();
            bool resumed = TrainingLoop.Resume(stage, stageDir, o);
            TrainingLoop.Run(stage, stageDir, resumed, Config.VaeSteps, Config.LogEvery, Config.CheckpointEvery, o);
            if (VaeStep < Config.VaeSteps) return false;   // stopped (request, time budget or StopAfter): stage b waits
            SetScalingFactor(MeasureScalingFactor());
            SaveReconstructions(Path.Combine(stageDir, "reconstructions.png"));
            SaveVae(vaeDir);
            options.OnMessage?.Invoke($"VAE trained; scaling_factor {Vae.ScalingFactor:G5}; wrote {vaeDir}");
        }
        TrainingUtils.Freeze(Vae);

        // ---- stage b ----
        onStage?.Invoke("unet");
        var unet = new UnetStage(this);
        var ob = Remaining();
        bool resumedB = TrainingLoop.Resume(unet, outDir, ob);
        void AfterStep(int step)
        {
            bool end = step == Config.Steps;
            if (step % Config.CheckpointEvery == 0 || end) Export(outDir);
            if (Config.GridEvery > 0 && step % Config.GridEvery == 0 || end) Grid(outDir, step);
        }
        TrainingLoop.Run(unet, outDir, resumedB, Config.Steps, Config.LogEvery, Config.CheckpointEvery, ob, AfterStep);
        if (UnetStep > 0 && UnetStep < Config.Steps)   // a stopped run's folder holds its latest EMA model, and a grid shows it
        {
            Export(outDir);
            if (!File.Exists(Path.Combine(outDir, $"samples-{UnetStep:D6}.png"))) Grid(outDir, UnetStep);
        }
        Plots.LossCurves(Path.Combine(outDir, "losses.png"), new[] { ("eps MSE", Path.Combine(outDir, "losses.csv")) });
        return UnetStep == Config.Steps;
    }

    /// <summary>Settings a continued run may change without --allow-changes: how long it runs and how often it reports.</summary>
    static readonly string[] MayChange =
    {
        "Config.Steps", "Config.CheckpointEvery", "Config.LogEvery", "Config.GridEvery", "Config.GridPerClass", "Config.GridSteps", "Config.GridGuidance",
    };

    /// <summary>A grid of originals (odd rows) over their reconstructions (even rows) of 8 x 4 training images.</summary>
    public void SaveReconstructions(string path)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Vae.eval();
        var x = ImageDataset.ToFloat(data.Images[..Math.Min(32, (int)data.Count)]);
        var rec = Vae.forward(x).clamp(-1, 1);
        int n = (int)x.shape[0], cols = Math.Min(8, n);
        var rows = new List<Tensor>();
        for (int i = 0; i < n; i += cols) { rows.Add(x[i..Math.Min(n, i + cols)]); rows.Add(rec[i..Math.Min(n, i + cols)]); }
        ImageGrid.Save(path, cat(rows), columns: cols, scale: 2);
    }

    /// <summary>Writes the diffusers vae/ folder (config.json with the scaling factor, weights).</summary>
    private void SaveVae(string dir) => Vae.SavePretrained(dir);

    /// <summary>
    /// Writes the diffusers pipeline folder of the EMA model into <paramref name="outDir"/>: tokenizer/, text_encoder/
    /// (transformers' config.json + model.safetensors), unet/, scheduler/ (SD v1.5's scheduler config), model_index.json.
    /// The vae/ folder is written when stage a ends.
    /// </summary>
    public void Export(string outDir)
    {
        FashionMnistCaptions.WriteTokenizer(Path.Combine(outDir, "tokenizer"));
        EmaTextEncoder.SavePretrained(Path.Combine(outDir, "text_encoder"), Tokenizer.BosId, Tokenizer.EosId, Tokenizer.PadId);
        EmaUnet.SavePretrained(Path.Combine(outDir, "unet"));
        StableDiffusion.WriteSchedulerConfig(Path.Combine(outDir, "scheduler"));
        StableDiffusion.WriteModelIndex(outDir);
    }

    /// <summary>
    /// samples-STEP.png: <see cref="TextToImageTeacherConfig.GridPerClass"/> images per class (a row each, prompt
    /// <see cref="FashionMnistCaptions.PromptFor"/>), drawn from the exported folder by <see cref="StableDiffusion.Generate(IReadOnlyList{string}, TextToImageOptions?, Tensor?, Action{int, int}?)"/>
    /// (Euler, <see cref="TextToImageTeacherConfig.GridSteps"/> steps, CFG <see cref="TextToImageTeacherConfig.GridGuidance"/>
    /// with the empty prompt, seed 0: the same latents each time).
    /// </summary>
    private void Grid(string outDir, int step)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var sd = StableDiffusion.Load(outDir);
        var prompts = Enumerable.Range(0, FashionMnistCaptions.ClassNames.Count)
            .SelectMany(c => Enumerable.Repeat(FashionMnistCaptions.PromptFor(c), Config.GridPerClass)).ToList();
        var res = sd.Generate(prompts, new TextToImageOptions { Steps = Config.GridSteps, Guidance = Config.GridGuidance, Seed = 0, Batch = 40 });
        using (res.Latents) using (res.Images)
            ImageGrid.Save(Path.Combine(outDir, $"samples-{step:D6}.png"), res.Images, columns: Config.GridPerClass, scale: 2,
                           rowLabels: FashionMnistCaptions.ClassNames);
        GridSeconds += clock.Elapsed.TotalSeconds;
    }


    /// <summary>Frees the optimisers and generators; the networks stay usable.</summary>
    public void Dispose()
    {
        vaeOpt.Dispose();
        opt.Dispose();
        vaeRng.Dispose();
        rng.Dispose();
        alphasCumprod.Dispose();
    }

    /// <summary>Stage a as the run loop sees it.</summary>
    private sealed class VaeStage(TextToImageTeacherTrainer t) : IResumableTrainer
    {
        public int Step => t.VaeStep;

        public Dictionary<string, double> TrainStep()
        {
            var (loss, l1, kl, skipped) = t.TrainVaeStep();
            if (skipped) return new() { ["loss"] = loss, [TrainingLoop.SkippedKey] = 1 };
            t.smoothedVae = double.IsNaN(t.smoothedVae) ? l1 : 0.95 * t.smoothedVae + 0.05 * l1;
            return new() { ["l1"] = t.smoothedVae, ["kl"] = kl, ["loss"] = loss };
        }

        public void WriteCheckpoint(CheckpointWriter w)
        {
            w.Module("vae.safetensors", t.Vae);
            w.Optimizer("optimizer.pt", t.vaeOpt);
            WriteState(w, t.VaeStep, t.vaeRng, t.smoothedVae);
        }

        public void ReadCheckpoint(CheckpointReader r)
        {
            r.Module("vae.safetensors", t.Vae);
            r.Optimizer("optimizer.pt", t.vaeOpt);
            (t.VaeStep, t.smoothedVae) = ReadState(r, t.vaeRng);
        }

        public bool WeightsFinite() => TrainingUtils.AllFinite(t.Vae);
    }

    /// <summary>A stage's state.json: its step, its random generator, its smoothed loss (NaN: none yet).</summary>
    private static void WriteState(CheckpointWriter w, int step, Generator rng, double smoothed) =>
        w.Json("state.json", new TrainState(step, Checkpoint.GeneratorState(rng), double.IsNaN(smoothed) ? null : smoothed));

    /// <summary>Reads <see cref="WriteState"/>'s file, restoring <paramref name="rng"/>; returns the step and the smoothed loss.</summary>
    private static (int Step, double Smoothed) ReadState(CheckpointReader r, Generator rng)
    {
        var st = r.Json<TrainState>("state.json");
        Checkpoint.RestoreGenerator(rng, st.Rng);
        return (st.Step, st.SmoothedLoss ?? double.NaN);
    }

    /// <summary>Stage b as the run loop sees it.</summary>
    private sealed class UnetStage(TextToImageTeacherTrainer t) : IResumableTrainer
    {
        public int Step => t.UnetStep;

        public Dictionary<string, double> TrainStep()
        {
            var (loss, skipped) = t.TrainUnetStep();
            if (skipped) return new() { ["loss"] = loss, [TrainingLoop.SkippedKey] = 1 };
            t.smoothedUnet = double.IsNaN(t.smoothedUnet) ? loss : 0.95 * t.smoothedUnet + 0.05 * loss;
            return new() { ["loss"] = t.smoothedUnet };
        }

        public void WriteCheckpoint(CheckpointWriter w)
        {
            w.Module("text_encoder.safetensors", t.TextEncoder);
            w.Module("unet.safetensors", t.Unet);
            w.Module("ema_text_encoder.safetensors", t.EmaTextEncoder);
            w.Module("ema_unet.safetensors", t.EmaUnet);
            w.Optimizer("optimizer.pt", t.opt);
            WriteState(w, t.UnetStep, t.rng, t.smoothedUnet);
        }

        public void ReadCheckpoint(CheckpointReader r)
        {
            r.Module("text_encoder.safetensors", t.TextEncoder);
            r.Module("unet.safetensors", t.Unet);
            r.Module("ema_text_encoder.safetensors", t.EmaTextEncoder);
            r.Module("ema_unet.safetensors", t.EmaUnet);
            r.Optimizer("optimizer.pt", t.opt);
            (t.UnetStep, t.smoothedUnet) = ReadState(r, t.rng);
        }

        public bool WeightsFinite() =>
            TrainingUtils.AllFinite(t.TextEncoder) && TrainingUtils.AllFinite(t.Unet) && TrainingUtils.AllFinite(t.EmaTextEncoder) && TrainingUtils.AllFinite(t.EmaUnet);
    }
}
