using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Pipelines;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// DMD on a Stable-Diffusion-style teacher (TestData/sd_pipeline/model: diffusers' tiny random UNet, VAE and CLIP text
/// model): the VP preconditioning is the pipeline's eps-to-EDM teacher, the fake denoiser trains with the eps MSE, the
/// noise levels are the teacher's training sigmas, prompts condition every draw, pairs carry prompt indices, and a
/// distillation run resumes bit for bit and yields a generator that `text2img` samples from.
/// </summary>
public sealed class TextToImageDmdTests
{
    static string Model => Path.Combine(AppContext.BaseDirectory, "TestData", "sd_pipeline", "model");

    static readonly string[] PromptLines = { "a photo of a cat", "a red bag", "an ankle boot, side view" };

    static string PromptsFile()
    {
        var path = Path.Combine(TestUtil.TempDir(), "prompts.txt");
        File.WriteAllLines(path, PromptLines);
        return path;
    }

    static DmdConfig Small() => new()
    {
        Steps = 4, BatchSize = 2, RegressionBatchSize = 2, LearningRate = 1e-3, WarmupSteps = 0, FakeUpdatesPerStep = 2,
        LambdaReg = 0, EmaDecay = 0.9, GridEvery = 2, CheckpointEvery = 2, LogEvery = 1, Seed = 5,
    };

    [Fact]
    public void TheVpPreconditionedUNetIsThePipelinesEpsTeacher()
    {
        using var sd = StableDiffusion.Load(Model);
        var (teacher, spec) = TextToImageDistillation.Teacher(sd);
        Assert.Equal(new[] { 4, 16, 16 }, spec.SampleShape);
        Assert.Equal(sd.Unet.Config.CrossAttentionDim, spec.LabelDim);
        using var _ = no_grad();
        var g = new Generator(3);
        var x0 = randn(new long[] { 4, 4, 16, 16 }, generator: g);
        var sigma = tensor(new[] { sd.Scheduler.TrainSigmas[999], sd.Scheduler.TrainSigmas[500], 0.7, sd.Scheduler.TrainSigmas[20] }, dtype: ScalarType.Float32);
        var x = x0 + sigma.reshape(4, 1, 1, 1) * randn(x0.shape, generator: g);
        var c = sd.EncodePrompts(new[] { "a photo of a cat", "", "a red bag", "x" });
        var ours = teacher.Denoise(x, sigma, c);
        var reference = sd.Denoiser.Denoise(x, sigma, c);
        double rel = ((ours - reference).abs().max() / reference.abs().max()).item<float>();
        Assert.True(rel < 1e-6, $"VP EdmPrecond differs from EpsPredictionDenoiser by {rel:E2}");
        // the largest training sigma is the network's timestep 999: the generator's input is DMD's pure noise at t = 999
        Assert.Equal(999f, sd.Scheduler.Timesteps(tensor(new[] { sd.Scheduler.SigmaMax })).item<float>(), 3);
    }

    /// <summary>
    /// The generator learns through the whole UNet: a loss on its output gives every weight a gradient (TorchSharp's
    /// GroupNorm module returned zero input gradients, which left everything before the last norm untrained), and the
    /// gradient of the first convolution agrees with a central finite difference along a random direction.
    /// </summary>
    [Fact]
    public void GradientsReachEveryWeightOfTheLatentGenerator()
    {
        using var sd = StableDiffusion.Load(Model);
        var (teacher, spec) = TextToImageDistillation.Teacher(sd);
        var net = spec.Build();
        TrainingUtils.CopyWeights(teacher, net);
        var g = new OneStepGenerator(net, sd.Scheduler.SigmaMax);
        var z = randn(new long[] { 2, 4, 16, 16 }, generator: new Generator(2));
        var c = sd.EncodePrompts(new[] { "a red bag", "a photo of a cat" });
        var r = randn(new long[] { 2, 4, 16, 16 }, generator: new Generator(3));
        Tensor Loss() => (g.Generate(z, c) * r).sum();
        net.zero_grad();
        Loss().backward();
        var silent = net.named_parameters().Where(p => p.parameter.grad is null || p.parameter.grad.abs().max().item<float>() == 0).Select(p => p.name).ToList();
        Assert.True(silent.Count == 0, $"no gradient reaches {silent.Count} weights, e.g. {string.Join(", ", silent.Take(4))}");

        var w = net.named_parameters().First(p => p.name.EndsWith("conv_in.weight")).parameter;
        var dir = randn(w.shape, generator: new Generator(4));
        double analytic = (w.grad! * dir).sum().item<float>();
        double h = 1e-3;
        double Shifted(double by) { using var _ = no_grad(); w.add_(dir * by); var v = Loss().item<float>(); w.sub_(dir * by); return v; }
        double numeric = (Shifted(h) - Shifted(-h)) / (2 * h);
        Assert.True(Math.Abs(analytic - numeric) < 0.02 * Math.Abs(numeric) + 1e-3, $"conv_in gradient {analytic} vs finite difference {numeric}");
    }

    [Fact]
    public void TheFakeDenoisersLossIsTheEpsMse()
    {
        using var sd = StableDiffusion.Load(Model);
        var (teacher, _) = TextToImageDistillation.Teacher(sd);
        using var __ = no_grad();
        var x0 = randn(new long[] { 3, 4, 16, 16 }, generator: new Generator(1));
        var sigma = tensor(new[] { 0.1, 2.0, 14.0 }, dtype: ScalarType.Float32);
        var c = sd.EncodePrompts(new[] { "a", "b", "c" });
        var loss = DmdLoss.FakeDenoising(teacher, x0, sigma, c, new Generator(9)).item<float>();
        // by hand: the same noise n, eps of x_vp = (x0 + sigma n) / sqrt(1 + sigma^2) at t(sigma), mean (eps - n)^2
        var n = randn(x0.shape, generator: new Generator(9));
        var sb = sigma.reshape(3, 1, 1, 1).to(ScalarType.Float32);
        var xv = (x0 + sb * n) / (sb.square() + 1).sqrt();
        var eps = sd.Unet.forward(xv, sd.Scheduler.Timesteps(sigma), c);
        var expected = (eps - n).square().mean().item<float>();
        Assert.True(Math.Abs(loss - expected) < 1e-5 * expected, $"fake loss {loss} vs eps MSE {expected}");
        // and EDM networks keep EDM's weighting 1/sigma^2 + 1/sd^2
        var edm = new EdmPrecond(new MlpBackbone(2, 16, 2), 0.5);
        var s = tensor(new[] { 0.3 });
        Assert.Equal(EdmLoss.Weight(s, 0.5).item<double>(), edm.LossWeight(s).item<double>(), 12);
    }

    [Fact]
    public void DistilsOnLatentsWithPromptsResumesBitForBitAndSamplesWithText2Img()
    {
        var prompts = PromptsFile();
        var cfg = Small();
        var dirA = TestUtil.TempDir(); var dirB = TestUtil.TempDir();
        Dictionary<string, Tensor> teacherWeights;
        {
            var (a, sd) = TextToImageDistillation.FromFolder(Model, prompts, null, cfg);
            using var _a = a; using var _sd = sd;
            Assert.Equal(sd.Scheduler.SigmaMax, a.Generator.SigmaMax, 9);
            Assert.Equal(1000, a.Config.GridLevels);
            teacherWeights = a.Real.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
            var before = a.Generator.Net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
            Assert.True(a.Run(dirA, Model, null, promptsPath: prompts));
            var losses = File.ReadAllLines(Path.Combine(dirA, "losses.csv"));
            Assert.Equal(5, losses.Length);
            Assert.Contains("loss_dm", losses[0]);
            Assert.Contains("loss_fake", losses[0]);
            // the generator and fake denoiser moved; the teacher did not
            Assert.Contains(a.Generator.Net.state_dict(), kv => !TestUtil.Same(kv.Value, before[kv.Key]));
            Assert.Contains(a.Fake.state_dict(), kv => !TestUtil.Same(kv.Value, teacherWeights[kv.Key]));
            Assert.All(a.Real.state_dict(), kv => Assert.True(TestUtil.Same(kv.Value, teacherWeights[kv.Key]), $"teacher {kv.Key} changed"));
        }
        Assert.True(File.Exists(Path.Combine(dirA, "samples-000004.png")));
        Assert.Equal(PromptLines, File.ReadAllLines(Path.Combine(dirA, "prompts.txt")));
        var spec = Checkpoint.LoadJson<NetworkSpec>(Path.Combine(dirA, "generator.json"));
        Assert.IsType<SdUNetSpec>(spec);
        // its UNet as a diffusers folder: the teacher's pipeline with it, one Euler step from timestep 999, is the generator
        var unetFolder = UNet2DConditionModel.FromPretrained(Path.Combine(dirA, "unet"));
        using (no_grad())
        {
            var loaded = OneStepGenerator.Load(dirA);
            using var sdT = StableDiffusion.Load(Model);
            var z = ImageSampling.SeededNoise(new[] { 4, 16, 16 }, 9, 2);
            var ctx = sdT.EncodePrompts(new[] { "a red bag", "" });
            var x = z * sdT.Scheduler.SigmaMax;
            var sig = sdT.Scheduler.SigmaMax;
            var viaDiffusersStep = x - sig * unetFolder.forward(x / Math.Sqrt(sig * sig + 1), tensor(new[] { 999f, 999f }), ctx);
            Assert.True((viaDiffusersStep - loaded.Generate(z, ctx)).abs().max().item<float>() < 1e-4);
        }

        // stopped at step 2 and continued: the same weights as the uninterrupted run
        foreach (var stop in new int?[] { 2, null })
        {
            var (b, sd) = TextToImageDistillation.FromFolder(Model, prompts, null, cfg);
            using var _b = b; using var _sd = sd;
            b.Run(dirB, Model, null, new RunOptions { StopAfter = stop }, promptsPath: prompts);
        }
        var ga = Checkpoint.LoadTensors(Path.Combine(dirA, "generator.safetensors"));
        var gb = Checkpoint.LoadTensors(Path.Combine(dirB, "generator.safetensors"));
        foreach (var k in ga.Keys) Assert.True(TestUtil.Same(ga[k], gb[k]), $"{k} differs after resume");

        // the saved generator loads as a VP-preconditioned UNet and the pipeline samples with it in one step
        var g = OneStepGenerator.Load(dirA);
        Assert.NotNull(g.Net.Schedule);
        using var sd2 = StableDiffusion.Load(Model);
        var res = sd2.Generate(g, new[] { "a red bag", "a photo of a cat" }, seed: 4);
        Assert.Equal(new long[] { 2, 3, 32, 32 }, res.Images.shape);
        Assert.Equal(1, res.Nfe);
        Assert.True(isfinite(res.Images).all().item<bool>());
        // the same latents as the generator on the pipeline's contexts and seeded noise
        using (no_grad())
        {
            var z = ImageSampling.SeededNoise(new[] { 4, 16, 16 }, 4, 2);
            var direct = g.Generate(z, sd2.EncodePrompts(new[] { "a red bag", "a photo of a cat" }));
            Assert.True(TestUtil.Same(direct, res.Latents));
        }
    }

    [Fact]
    public void PromptPairsStoreTheirPromptsAndFeedTheRegressionLoss()
    {
        var prompts = PromptsFile();
        var dir = Path.Combine(TestUtil.TempDir(), "pairs");
        using var sd = StableDiffusion.Load(Model);
        var made = TextToImageDistillation.MakePairs(sd, PromptLines, count: 5, steps: 2, seed: 7, batchSize: 2, shardDir: dir);
        var pairs = RegressionPairs.Load(dir);
        Assert.Equal(PromptLines, pairs.Prompts);
        Assert.Null(pairs.Y);
        Assert.True(TestUtil.Same(made.PromptIndex!, pairs.PromptIndex!));
        Assert.Equal(sd.Scheduler.SigmaMax, pairs.Info.SigmaMax);
        Assert.Equal(3, pairs.Info.Prompts);
        // pair 3's x is the teacher's Heun ODE from its z under its prompt's context
        var (teacher, _) = TextToImageDistillation.Teacher(sd);
        var p = pairs.PromptIndex![3].item<long>();
        var c = sd.EncodePrompts(new[] { PromptLines[p] });
        var x = Samplers.Heun(teacher, pairs.Z[3..4], c, 2, sd.Scheduler.SigmaMin, sd.Scheduler.SigmaMax).Samples;
        var diff = (x - pairs.X[3..4]).abs().max().item<float>();
        Assert.True(diff < 1e-4 * pairs.X[3..4].abs().max().item<float>(), $"pair 3 differs from the teacher's ODE by {diff}");

        // Full DMD with regression on them
        var cfg = Small() with { LambdaReg = 0.25, Steps = 1, GridEvery = 0 };
        var (t, sd2) = TextToImageDistillation.FromFolder(Model, prompts, dir, cfg);
        using (t) using (sd2)
        {
            var losses = t.TrainStep();
            Assert.True(losses.ContainsKey("loss_reg") && double.IsFinite(losses["loss_reg"]));
        }
        // other prompts than the pairs': refused
        var otherPrompts = Path.Combine(TestUtil.TempDir(), "other.txt");
        File.WriteAllLines(otherPrompts, new[] { "a shirt" });
        var e = Assert.Throws<DmdInputException>(() => TextToImageDistillation.FromFolder(Model, otherPrompts, dir, cfg));
        Assert.Contains("other prompts", e.Message);
    }

    /// <summary>
    /// DMD2 on a latent teacher: the GAN head on the fake UNet's bottleneck sees Fashion-MNIST images encoded by the VAE with
    /// captions of their classes, both GAN losses are logged, and a run stopped and resumed ends bit for bit with the head.
    /// </summary>
    [Fact]
    public void Dmd2sGanTrainsOnCaptionedRealLatentsAndResumesBitForBit()
    {
        var teacherDir = TestUtil.TempDir();
        using (var t = new TextToImageTeacherTrainer(TextToImageTeacherTests.Tiny, TextToImageTeacherTests.Squares())) t.Run(teacherDir, "squares");
        var prompts = Path.Combine(TestUtil.TempDir(), "p.txt");
        FashionMnistCaptions.WritePrompts(prompts, 1);
        var cfg = Small() with { GanWeight = 0.01, GanFakeWeight = 0.1, Steps = 3, GridEvery = 0 };

        using (var sd = StableDiffusion.Load(teacherDir))
        {
            var real = CaptionedLatents.FashionMnist(sd);
            Assert.Equal(new[] { 4, 16, 16 }, real.Shape);
            var (x, c) = real.Batch(3, new Generator(1));
            Assert.Equal(new long[] { 3, 4, 16, 16 }, x.shape);
            Assert.Equal(new long[] { 3, 77, sd.Unet.Config.CrossAttentionDim }, c!.shape);
            // each context is the text encoder's for a caption of the image's class (templates drawn with the same generator)
            var images = DataSource.Parse("fashion-mnist").LoadImages(32, 1, xflip: false);
            var g = new Generator(1);
            var (_, y) = images.Batch(3, g);
            var template = Rng.Integers(0, FashionMnistCaptions.Templates.Count, 3, g).data<long>().ToArray();
            var captions = y!.argmax(1).data<long>().ToArray().Select((k, i) => FashionMnistCaptions.Caption((int)k, (int)template[i])).ToArray();
            Assert.True(TestUtil.Same(sd.EncodePrompts(captions), c));
        }

        var dirA = TestUtil.TempDir(); var dirB = TestUtil.TempDir();
        {
            var (a, sd) = TextToImageDistillation.FromFolder(teacherDir, prompts, null, cfg, ganData: "fashion-mnist");
            using var _a = a; using var _sd = sd;
            Assert.NotNull(a.GanHead);
            a.Run(dirA, teacherDir, null, ganData: "fashion-mnist", promptsPath: prompts);
        }
        var header = File.ReadLines(Path.Combine(dirA, "losses.csv")).First();
        foreach (var col in new[] { "loss_gan_g", "loss_gan_d", "gan_logit_real", "gan_logit_fake" }) Assert.Contains(col, header);
        foreach (var stop in new int?[] { 2, null })
        {
            var (b, sd) = TextToImageDistillation.FromFolder(teacherDir, prompts, null, cfg, ganData: "fashion-mnist");
            using var _b = b; using var _sd = sd;
            b.Run(dirB, teacherDir, null, new RunOptions { StopAfter = stop }, ganData: "fashion-mnist", promptsPath: prompts);
        }
        foreach (var file in new[] { "generator.safetensors", "fake.safetensors", "gan_head.safetensors" })
        {
            var ta = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirA), file));
            var tb = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirB), file));
            foreach (var k in ta.Keys) Assert.True(TestUtil.Same(ta[k], tb[k]), $"{file}: {k} differs after resume");
        }
    }

    /// <summary>A captioned image folder: three solid squares of different sizes, metadata.jsonl naming each with its colour.</summary>
    static (string Dir, string[] Files, string[] Captions) CaptionedFolder()
    {
        var dir = TestUtil.TempDir();
        var colours = new[] { (SkiaSharp.SKColors.Red, "a red square", 40), (SkiaSharp.SKColors.Lime, "a green square, bright", 32), (SkiaSharp.SKColors.Blue, "blue", 20) };
        var files = new List<string>();
        var lines = new List<string>();
        foreach (var (colour, caption, size) in colours)
        {
            var name = $"image-{files.Count}.png";
            using var bmp = new SkiaSharp.SKBitmap(size, size + 8);
            bmp.Erase(colour);
            using var img = SkiaSharp.SKImage.FromBitmap(bmp);
            using var data = img.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
            File.WriteAllBytes(Path.Combine(dir, name), data.ToArray());
            files.Add(Path.Combine(dir, name));
            lines.Add(System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string> { ["file_name"] = name, ["text"] = caption }));
        }
        File.WriteAllLines(Path.Combine(dir, CaptionedLatents.MetadataFile), lines);
        return (dir, files.ToArray(), colours.Select(c => c.Item2).ToArray());
    }

    [Fact]
    public void Dmd2sGanReadsACaptionedImageFolder()
    {
        using var scope = NewDisposeScope();
        var (dir, files, captions) = CaptionedFolder();
        using (var sd = StableDiffusion.Load(Model))
        {
            var real = CaptionedLatents.FromFolder(sd, dir);
            Assert.Equal(3, real.Count);
            var (x, c) = real.Batch(6, new Generator(3));
            Assert.Equal(new long[] { 6, 4, 16, 16 }, x.shape);
            // each sample is one listed image (decoded at 32x32, through the VAE's posterior mean, scaled) with its own caption
            var contexts = sd.EncodePrompts(captions);
            var seen = new HashSet<int>();
            using var _ = no_grad();
            for (int i = 0; i < 6; i++)
            {
                int k = Enumerable.Range(0, 3).Single(j => (contexts[j] - c![i]).abs().max().item<float>() < 1e-6);
                seen.Add(k);
                var image = ImageDataset.LoadFile(files[k], 32, 3).unsqueeze(0);
                var latent = sd.Vae.Encode(image).Mean * sd.Vae.ScalingFactor;
                double d = (latent[0] - x[i]).abs().max().item<float>();
                Assert.True(d < 1e-4, $"sample {i}: latent differs from its image's ({captions[k]}) by {d:E2}");
            }
            Assert.True(seen.Count >= 2, "six draws should not all be one image");
        }

        // a short DMD2 run takes its real latents from the folder
        var cfg = Small() with { GanWeight = 0.01, GanFakeWeight = 0.1, Steps = 2, GridEvery = 0 };
        var (trainer, pipeline) = TextToImageDistillation.FromFolder(Model, PromptsFile(), null, cfg, ganData: "captions:" + dir);
        using (trainer) using (pipeline)
        {
            var outDir = TestUtil.TempDir();
            trainer.Run(outDir, Model, null, ganData: "captions:" + dir, promptsPath: PromptsFile());
            var last = File.ReadLines(Path.Combine(outDir, "losses.csv")).Last();
            Assert.StartsWith("2,", last);
        }

        // broken folders are one-line errors naming the problem
        using var sd2 = StableDiffusion.Load(Model);
        var empty = TestUtil.TempDir();
        Assert.Contains("metadata.jsonl", Assert.Throws<DmdInputException>(() => CaptionedLatents.FromFolder(sd2, empty)).Message);
        File.WriteAllText(Path.Combine(empty, CaptionedLatents.MetadataFile), "{\"file_name\": \"gone.png\", \"text\": \"x\"}\n");
        Assert.Contains("gone.png", Assert.Throws<DmdInputException>(() => CaptionedLatents.FromFolder(sd2, empty)).Message);
        File.WriteAllText(Path.Combine(empty, CaptionedLatents.MetadataFile), "{\"file\": 3}\n");
        Assert.Contains("line 1", Assert.Throws<DmdInputException>(() => CaptionedLatents.FromFolder(sd2, empty)).Message);
    }

    /// <summary>
    /// FID against a reference folder (random Inception weights: the real ones cannot be downloaded here): images equal to
    /// the reference score about 0 and noise far more; the command reads the folder and writes the metric.
    /// </summary>
    [Fact]
    public void FidAgainstAReferenceFolder()
    {
        var inceptionFile = Path.Combine(TestUtil.TempDir(), "inception.safetensors");
        torch.manual_seed(11);
        using (var random = new Metrics.FidInceptionV3())
        {
            // default-initialised convolutions shrink the signal layer by layer until every feature is ~0; widening them
            // by sqrt(6) (He initialisation's gain over PyTorch's default) keeps features that tell images apart
            using (no_grad())
                foreach (var (name, p) in random.named_parameters())
                    if (name.EndsWith("conv.weight")) p.mul_(Math.Sqrt(6));
            Checkpoint.SaveModule(random, inceptionFile);
        }
        using var inception = Metrics.FidInceptionV3.Load(inceptionFile);
        var reference = (rand(new long[] { 12, 3, 32, 32 }, generator: new Generator(5)) * 2 - 1);
        var same = Evaluation.RunTextToImageFid("m", "onestep", 1, 1, PromptLines, new[] { 4, 16, 16 }, (p, z, first) => reference[(int)first..(int)(first + p.Count)],
                                                12, 0, reference, inception, "ref", batch: 6);
        var noise = Evaluation.RunTextToImageFid("m", "onestep", 1, 1, PromptLines, new[] { 4, 16, 16 }, (p, z, first) => z.reshape(p.Count, 1, 32, 32).clamp(-1, 1).expand(-1, 3, -1, -1),
                                                 12, 0, reference, inception, "ref", batch: 6);
        // measured: same ~1e-14, noise 58 (weights seeded)
        Assert.True(Math.Abs(same.Metrics["fid"]) < 1e-3, $"FID of the reference against itself: {same.Metrics["fid"]}");
        Assert.True(noise.Metrics["fid"] > 5, $"FID of noise against the reference: {noise.Metrics["fid"]}");
        Assert.Equal(12, noise.Metrics["reference_images"]);

        var folder = TestUtil.TempDir();
        ImageGrid.SaveEach(folder, reference);
        var outJson = Path.Combine(TestUtil.TempDir(), "fid.json");
        var (code, output) = CliTests.Run("--threads", "1", "eval", "--model", Model, "--prompts", PromptsFile(), "--reference", folder, "--fid-weights", inceptionFile,
                                          "--n", "10", "--steps", "2", "--guidance", "2", "--out", outJson);
        Assert.True(code == 0, output);
        var res = Checkpoint.LoadJson<EvalResult>(outJson);
        Assert.True(res.Metrics["fid"] > 0 && double.IsFinite(res.Metrics["fid"]));
        Assert.Equal(2, res.Nfe);
    }

    [Fact]
    public void WrongCombinationsAreOneLineErrors()
    {
        var prompts = PromptsFile();
        var e = Assert.Throws<DmdInputException>(() => TextToImageDistillation.FromFolder(Model, prompts, null, Small() with { GanWeight = 0.003 }));
        Assert.Contains("--gan-data captions:FOLDER", e.Message);
        // the fixture's VAE takes RGB images: Fashion-MNIST's grayscale ones are refused with the shape it needs
        e = Assert.Throws<DmdInputException>(() => TextToImageDistillation.FromFolder(Model, prompts, null, Small() with { GanWeight = 0.003 }, ganData: "fashion-mnist"));
        Assert.Contains("the pipeline's VAE takes [3, 32, 32]", e.Message);
        e = Assert.Throws<DmdInputException>(() => TextToImageDistillation.FromFolder(Model, prompts, null, Small() with { GridLevels = 40 }));
        Assert.Contains("set grid-levels 1000", e.Message);
        // the CLI: a text-to-image teacher without prompts, prompts for an EDM teacher
        var (code, output) = CliTests.Run("distill", "--teacher", Model, "--out", TestUtil.TempDir(), "--lambda-reg", "0");
        Assert.Equal(2, code);
        Assert.Contains("--prompts FILE", output);
        (code, output) = CliTests.Run("pairs", "--teacher", Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-teacher"), "--prompts", prompts, "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("not a text-to-image", output);
    }

    [Fact]
    public void TheCommandsDistilAndSampleATextToImageTeacher()
    {
        var prompts = PromptsFile();
        var pairsDir = Path.Combine(TestUtil.TempDir(), "pairs");
        var (code, output) = CliTests.Run("pairs", "--teacher", Model, "--prompts", prompts, "--count", "4", "--steps", "2", "--batch", "2", "--out", pairsDir);
        Assert.True(code == 0, output);
        var run = TestUtil.TempDir();
        (code, output) = CliTests.Run("--threads", "1", "distill", "--teacher", Model, "--pairs", pairsDir, "--out", run, "--steps", "2", "--batch-size", "2",
                                      "--regression-batch-size", "2", "--fake-updates-per-step", "1", "--grid-every", "2", "--log-every", "1");
        Assert.True(code == 0, output);
        Assert.True(File.Exists(Path.Combine(run, "samples-000002.png")));
        var png = Path.Combine(TestUtil.TempDir(), "one.png");
        (code, output) = CliTests.Run("text2img", "--model", run, "--prompt", "a red bag", "--n", "2", "--out", png);
        Assert.True(code == 0, output);
        Assert.Contains("1 NFE", output);
        Assert.True(File.Exists(png));

        // eval's judge is the Fashion-MNIST classifier: this RGB fixture's images are refused with the shape it needs
        var classPrompts = Path.Combine(TestUtil.TempDir(), "classes.txt");
        File.WriteAllLines(classPrompts, Enumerable.Range(0, 10).Select(i => $"a photo of class {i}"));
        (code, output) = CliTests.Run("eval", "--model", run, "--class-prompts", classPrompts, "--n", "10", "--out", Path.Combine(TestUtil.TempDir(), "e.json"));
        Assert.Equal(2, code);
        Assert.Contains("needs [1, 32, 32]", output);

        // bench: the parts of a text-to-image image and the teacher's and generator's images/s
        var bench = Path.Combine(TestUtil.TempDir(), "bench.json");
        (code, output) = CliTests.Run("--threads", "1", "bench", "--text2img", Model, "--steps", "4", "--repeats", "1", "--out", bench);
        Assert.True(code == 0, output);
        var speed = Checkpoint.LoadJson<TextToImageSpeed>(bench);
        Assert.Equal(32, speed.ImageSize);
        Assert.Equal(speed.TextEncoderS + 4 * speed.UNetGuidedS + speed.VaeDecodeS, speed.TeacherSecondsPerImage, 9);
        Assert.True(speed.SpeedUp > 1);
    }
}
