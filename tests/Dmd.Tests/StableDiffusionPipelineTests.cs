using System.Text.Json.Nodes;
using Dmd.Diffusion;
using Dmd.Pipelines;
using TorchSharp;
using TorchSharp.PyBridge;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Stable Diffusion text-to-image against diffusers v0.27.2's own StableDiffusionPipeline with an EulerDiscreteScheduler
/// (TestData/sd_pipeline, made by make_sd_pipeline.py): the schedule, the eps-to-EDM parametrisation, guidance with the
/// negative prompt as the unconditional branch, the sampler, the decode, and the <c>text2img</c> command.
/// </summary>
public sealed class StableDiffusionPipelineTests
{
    private readonly ITestOutputHelper output;

    public StableDiffusionPipelineTests(ITestOutputHelper output) => this.output = output;

    private static string Data(params string[] parts) => Path.Combine(new[] { AppContext.BaseDirectory, "TestData", "sd_pipeline" }.Concat(parts).ToArray());

    private static string Model => Data("model");

    private static Dictionary<string, Tensor> Io() => Safetensors.LoadStateDict(Data("pipeline_io.safetensors"));

    private static JsonObject Case() => (JsonObject)JsonNode.Parse(File.ReadAllText(Data("pipeline_case.json")))!;

    private static double MaxDiff(Tensor a, Tensor b)
    {
        Assert.Equal(b.shape, a.shape);
        return (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();
    }

    /// <summary>A copy of the fixture folder whose scheduler config gets <paramref name="edit"/>.</summary>
    private static string CopyWithScheduler(Action<JsonObject> edit)
    {
        var dir = Path.Combine(TestUtil.TempDir(), "model");
        foreach (var f in Directory.EnumerateFiles(Model, "*", SearchOption.AllDirectories))
        {
            var to = Path.Combine(dir, Path.GetRelativePath(Model, f));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(f, to);
        }
        var cfgPath = Path.Combine(dir, "scheduler", "scheduler_config.json");
        var cfg = (JsonObject)JsonNode.Parse(File.ReadAllText(cfgPath))!;
        edit(cfg);
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        return dir;
    }

    [Theory]
    [InlineData("published", 4)]
    [InlineData("published", 25)]
    [InlineData("leading", 4)]
    [InlineData("leading", 25)]
    [InlineData("trailing", 4)]
    [InlineData("trailing", 25)]
    public void SamplingSigmasAndTimestepsAreEulerDiscreteSchedulers(string spacing, int steps)
    {
        // SD v1.5's published scheduler config has no timestep_spacing: EulerDiscreteScheduler.from_config reads it as linspace
        using var scope = NewDisposeScope();
        var io = Io();
        var schedule = DiscreteVpSchedule.Load(Path.Combine(Model, "scheduler"));
        Assert.Equal("linspace", schedule.TimestepSpacing);
        if (spacing != "published")
            schedule = new DiscreteVpSchedule(schedule.NumTrainTimesteps, schedule.BetaSchedule, schedule.BetaStart, schedule.BetaEnd, spacing, schedule.StepsOffset);
        var (sigmas, timesteps) = schedule.SamplingSigmas(steps);
        var refSigmas = io[$"sched.{spacing}.{steps}.sigmas"].to(ScalarType.Float64).data<double>().ToArray();
        var refT = io[$"sched.{spacing}.{steps}.timesteps"].to(ScalarType.Float64).data<double>().ToArray();
        Assert.Equal(refT, timesteps);   // exact: the same float32 values
        Assert.Equal(refSigmas.Length, sigmas.Length);
        double ds = refSigmas.Zip(sigmas, (a, b) => Math.Abs(a - b) / Math.Max(a, 1e-30)).Max();
        double init = io[$"sched.{spacing}.{steps}.init_noise_sigma"].item<float>();
        double di = Math.Abs(schedule.InitNoiseSigma(sigmas) - init) / init;
        output.WriteLine($"{spacing} {steps}: timesteps equal, max relative sigma difference {ds:E2}, init_noise_sigma {init} ({di:E2})");
        Assert.True(ds < 1e-6, $"sigmas differ by {ds:E2} (relative)");
        Assert.True(di < 1e-6, $"init_noise_sigma differs by {di:E2}");
        Assert.Equal(0.0, sigmas[^1]);
    }

    [Fact]
    public void AlphasCumprodIsDiffusersAndSigmaToTInvertsTheTrainingSigmas()
    {
        using var scope = NewDisposeScope();
        var schedule = DiscreteVpSchedule.Load(Path.Combine(Model, "scheduler"));
        var reference = Io()["sched.alphas_cumprod"].to(ScalarType.Float64).data<double>().ToArray();
        double d = reference.Zip(schedule.AlphasCumprod, (a, b) => Math.Abs(a - b) / a).Max();
        output.WriteLine($"alphas_cumprod: max relative difference {d:E2}; sigma range [{schedule.SigmaMin:F4}, {schedule.SigmaMax:F3}]");
        Assert.True(d < 1e-6, $"alphas_cumprod differs by {d:E2}");
        Assert.Equal(0.0292, schedule.SigmaMin, 3);
        Assert.Equal(14.61, schedule.SigmaMax, 2);
        foreach (int t in new[] { 0, 1, 37, 500, 998, 999 })
            Assert.Equal(t, schedule.TimestepOf(schedule.TrainSigmas[t]), 9);
        // between two training sigmas: linear in log sigma
        double mid = Math.Sqrt(schedule.TrainSigmas[100] * schedule.TrainSigmas[101]);
        Assert.Equal(100.5, schedule.TimestepOf(mid), 9);
        Assert.Equal(0.0, schedule.TimestepOf(1e-4));
        Assert.Equal(999.0, schedule.TimestepOf(100));
    }

    [Fact]
    public void DenoiserReturnsX0ExactlyWhenEpsReturnsTheNoise()
    {
        // D(x0 + sigma n) = x0 + sigma n - sigma eps = x0 when eps = n: the parametrisation, whatever the input scaling.
        // In float64 (the denoiser computes in x's dtype) it holds to rounding of x0 + sigma n - sigma n.
        using var scope = NewDisposeScope();
        var g = new Generator(5);
        var x0 = randn(new long[] { 3, 4, 8, 8 }, generator: g).to(ScalarType.Float64);
        var n = randn(new long[] { 3, 4, 8, 8 }, generator: g).to(ScalarType.Float64);
        var sigma = tensor(new double[] { 0.03, 1.0, 14.6 });
        var x = x0 + sigma.reshape(3, 1, 1, 1) * n;
        double inputErr = double.NaN;
        var d = new EpsPredictionDenoiser((xin, t, c) =>
        {
            // the network sees diffusers' scale_model_input, x / sqrt(sigma^2 + 1)
            inputErr = (xin - x / (sigma.reshape(3, 1, 1, 1).square() + 1).sqrt()).abs().max().item<double>();
            return n;
        }, DiscreteVpSchedule.StableDiffusion15, 8);
        var est = d.Denoise(x, sigma, zeros(3, 77, 8));
        double err = MaxDiff(est, x0);
        output.WriteLine($"float64: max |D - x0| = {err:E2}, input scaling {inputErr:E2}");
        Assert.True(err < 1e-13, $"max |D - x0| = {err:E2}");
        Assert.True(inputErr < 1e-15, $"scale_model_input differs by {inputErr:E2}");
    }

    [Fact]
    public void TheSamplerCallsTheUNetWithTheSchedulersOwnTimesteps()
    {
        // diffusers indexes its timesteps; inverting the float32 sigmas by log-sigma interpolation would give other
        // (fractional) timesteps for 25 linspace steps, since the sigmas were interpolated linearly in t
        using var scope = NewDisposeScope();
        var schedule = DiscreteVpSchedule.StableDiffusion15;
        var (sigmas, timesteps) = schedule.SamplingSigmas(25);
        var seen = new List<double>();
        EpsPrediction eps = (x, t, c) => { seen.AddRange(t.to(ScalarType.Float64).data<double>().ToArray().Take(1)); return zeros_like(x); };
        var d = new EpsPredictionDenoiser(eps, schedule, 4).PinTimesteps(sigmas, timesteps);
        Samplers.Euler(d, zeros(1, 4, 2, 2), zeros(1, 77, 4), sigmas);
        Assert.Equal(timesteps.Select(t => (double)(float)t), seen);
        double unpinned = sigmas.Take(25).Zip(timesteps, (s, t) => Math.Abs(schedule.TimestepOf((float)s) - t)).Max();
        output.WriteLine($"25 linspace steps: sigma_to_t of the float32 sigmas is off the scheduler's timesteps by up to {unpinned:E2}");
        Assert.True(unpinned > 1e-3);
    }

    [Fact]
    public void GuidanceOneIsTheConditionalBranchAndTheNegativePromptIsTheUnconditionalOne()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(6);
        // a toy eps that depends on the condition: mean of the context per sample
        EpsPrediction eps = (x, t, c) => x * 0.5 + c.mean(new long[] { 1, 2 }).reshape(-1, 1, 1, 1);
        var d = new EpsPredictionDenoiser(eps, DiscreteVpSchedule.StableDiffusion15, 4);
        var x = randn(new long[] { 2, 4, 8, 8 }, generator: g) * 3;
        var sigma = tensor(new float[] { 2.0f, 2.0f });
        var cond = randn(new long[] { 2, 77, 4 }, generator: g);
        var uncond = randn(new long[] { 1, 77, 4 }, generator: g);
        var plain = d.Denoise(x, sigma, cond);
        Assert.Equal(0.0, MaxDiff(new GuidedDenoiser(d, 1.0, uncond).Denoise(x, sigma, cond), plain));
        // w = 3: D_u + 3 (D_c - D_u) with D_u the unconditional context's, not zeros
        var du = d.Denoise(x, sigma, uncond.expand(2, 77, 4));
        var expected = du + 3 * (plain - du);
        var guided = new GuidedDenoiser(d, 3.0, uncond).Denoise(x, sigma, cond);
        Assert.True(MaxDiff(guided, expected) < 1e-5);
        var zerosAsNone = new GuidedDenoiser(d, 3.0).Denoise(x, sigma, cond);
        Assert.True(MaxDiff(zerosAsNone, guided) > 1e-2, "the unconditional context must be used, not zeros");
    }

    [Fact]
    public void PipelineReproducesDiffusersStableDiffusionPipeline()
    {
        using var scope = NewDisposeScope();
        var io = Io();
        var c = Case();
        var prompts = c["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
        using var sd = StableDiffusion.Load(Model);
        Assert.Equal(c["height"]!.GetValue<int>(), sd.DefaultSize);
        var options = new TextToImageOptions
        {
            NegativePrompt = c["negative_prompt"]!.GetValue<string>(), Steps = c["steps"]!.GetValue<int>(),
            Guidance = c["guidance_scale"]!.GetValue<double>(), Seed = c["seed"]!.GetValue<long>(),
        };
        // the per-image seeds draw diffusers' latents: torch.randn(..., generator=Generator().manual_seed(seed + i))
        var latents = sd.InitialLatents(prompts.Count, options.Seed, sd.DefaultSize, sd.DefaultSize);
        Assert.Equal(0.0, MaxDiff(latents, io["io.latents"]));
        double dc = MaxDiff(sd.EncodePrompts(prompts), io["io.prompt_embeds"]);
        double dn = MaxDiff(sd.EncodePrompts(new[] { options.NegativePrompt }), io["io.negative_embeds"]);

        var res = sd.Generate(prompts, options, io["io.latents"]);
        var final = io["io.final_latents"];
        double scale = final.abs().max().item<float>();
        double dl = MaxDiff(res.Latents, final);
        double dd = MaxDiff(sd.DecodeLatents(res.Latents), io["io.decoded"]);
        double di = MaxDiff(res.Images, io["io.decoded"].clamp(-1, 1));
        output.WriteLine($"text contexts {dc:E2} / {dn:E2}; final latents max |ours - diffusers| {dl:E2} (max |latent| {scale:F1}, " +
                         $"relative {dl / scale:E2}); decoded {dd:E2}; clamped images {di:E2}; {res.Nfe} NFE, {res.Seconds:F2} s");
        Assert.Equal(options.Steps, res.Nfe);
        Assert.Equal(new long[] { 2, 3, 32, 32 }, res.Images.shape);
        Assert.True(dc < 2e-5 && dn < 2e-5, $"text contexts differ by {dc:E2} / {dn:E2}");
        Assert.True(dl < 1e-4 * scale, $"final latents differ by {dl:E2} (max |latent| {scale:F1})");
        Assert.True(dd < 1e-4, $"decoded images differ by {dd:E2}");
        Assert.True(di < 1e-4, $"images differ by {di:E2}");
    }

    [Fact]
    public void TwentyFiveStepsWithTheEmptyPromptAsUnconditionalMatchDiffusers()
    {
        // 25 linspace steps have fractional timesteps (999 k / 24): the UNet must see the scheduler's own timesteps.
        // No negative prompt: diffusers' unconditional branch is the empty prompt's context; guidance 7.5 (its default).
        using var scope = NewDisposeScope();
        var io = Io();
        var prompts = Case()["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
        using var sd = StableDiffusion.Load(Model);
        var res = sd.Generate(prompts, new TextToImageOptions { Steps = 25 }, io["io.latents"]);
        var final = io["io.final_latents_25"];
        double scale = final.abs().max().item<float>();
        double dl = MaxDiff(res.Latents, final);
        output.WriteLine($"25 steps, guidance 7.5, empty negative prompt: final latents max |ours - diffusers| {dl:E2} (max |latent| {scale:F1})");
        Assert.True(dl < 1e-4 * scale, $"final latents differ by {dl:E2}");
    }

    [Fact]
    public void LeadingSpacingStartsFromSqrtOfSigmaSquaredPlusOne()
    {
        // timestep_spacing "leading" (PNDM's and DDIM's default): diffusers' init_noise_sigma is sqrt(sigma_0^2 + 1)
        using var scope = NewDisposeScope();
        var io = Io();
        var c = Case();
        var prompts = c["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
        using var sd = StableDiffusion.Load(CopyWithScheduler(cfg => cfg["timestep_spacing"] = "leading"));
        Assert.Equal("leading", sd.Scheduler.TimestepSpacing);
        var options = new TextToImageOptions { NegativePrompt = c["negative_prompt"]!.GetValue<string>(), Steps = 4, Guidance = 3.0 };
        var res = sd.Generate(prompts, options, io["io.latents"]);
        var final = io["io.final_latents_leading"];
        double scale = final.abs().max().item<float>();
        double dl = MaxDiff(res.Latents, final);
        output.WriteLine($"leading: final latents max |ours - diffusers| {dl:E2} (max |latent| {scale:F1})");
        Assert.True(dl < 1e-4 * scale, $"final latents differ by {dl:E2}");
    }

    [Fact]
    public void HeunRunsOnTheSameSigmasWithTwoNMinusOneEvaluations()
    {
        using var scope = NewDisposeScope();
        using var sd = StableDiffusion.Load(Model);
        int calls = 0;
        var res = sd.Generate(new[] { "a fox" }, new TextToImageOptions { Steps = 3, Guidance = 2, Sampler = "heun" }, onEval: (d, t) => { calls = d; Assert.Equal(5, t); });
        Assert.Equal(5, res.Nfe);
        Assert.Equal(5, calls);
        Assert.True(res.Images.isfinite().all().item<bool>());
        Assert.True(res.Images.abs().max().item<float>() <= 1);
    }

    [Fact]
    public void BadFoldersAndConfigsAreOneLineErrors()
    {
        var missing = Path.Combine(TestUtil.TempDir(), "model");
        Directory.CreateDirectory(missing);
        var e = Assert.Throws<DmdInputException>(() => StableDiffusion.Load(missing));
        Assert.Contains("tokenizer/", e.Message);
        var v = CopyWithScheduler(cfg => cfg["prediction_type"] = "v_prediction");
        e = Assert.Throws<DmdInputException>(() => StableDiffusion.Load(v));
        Assert.Contains("prediction_type", e.Message);
        Assert.DoesNotContain("\n", e.Message);
        e = Assert.Throws<DmdInputException>(() => StableDiffusion.Load(CopyWithScheduler(cfg => cfg["beta_schedule"] = "squaredcos_cap_v2")));
        Assert.Contains("beta_schedule", e.Message);
    }

    [Fact]
    public void Text2ImgWritesAPngOfTheRightSizeAndFailsInOneLine()
    {
        var dir = TestUtil.TempDir();
        var png = Path.Combine(dir, "a.png");
        var (code, text) = CliTests.Run("text2img", "--model", Model, "--prompt", "a fox in a field", "--steps", "2", "--guidance", "3", "--out", png);
        Assert.True(code == 0, text);
        using (var bmp = SkiaSharp.SKBitmap.Decode(png))
        {
            Assert.Equal(32, bmp.Width);
            Assert.Equal(32, bmp.Height);
        }
        (code, text) = CliTests.Run("text2img", "--model", Model, "--prompt", "a fox", "--steps", "1", "--height", "16", "--width", "24", "--out", png);
        Assert.True(code == 0, text);
        using (var bmp = SkiaSharp.SKBitmap.Decode(png))
        {
            Assert.Equal(24, bmp.Width);
            Assert.Equal(16, bmp.Height);
        }

        var noUnet = Path.Combine(dir, "nounet");
        Directory.CreateDirectory(noUnet);
        foreach (var sub in new[] { "tokenizer", "text_encoder", "vae", "scheduler" }) Directory.CreateDirectory(Path.Combine(noUnet, sub));
        (code, text) = CliTests.Run("text2img", "--model", noUnet, "--prompt", "a fox", "--out", png);
        Assert.Equal(2, code);
        Assert.Contains("unet/", text);
        Assert.Single(text.Trim().Split('\n'));

        (code, text) = CliTests.Run("text2img", "--model", CopyWithScheduler(cfg => cfg["prediction_type"] = "v_prediction"), "--prompt", "a fox", "--out", png);
        Assert.Equal(2, code);
        Assert.Contains("prediction_type", text);
        Assert.Single(text.Trim().Split('\n'));
    }
}
