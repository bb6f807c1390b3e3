using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// DMD2's GAN head on the fake denoiser (docs/design.md section 4, "GAN"): where its features come from, the losses,
/// the trainer's wiring replayed from its seed, f-distill's divergences for the DM term (weights from the head's logits),
/// that a run without it is the run of before, resume, refusals and the command line.
/// </summary>
public class DmdGanTests(ITestOutputHelper log)
{
    internal const int Classes = 3;
    static readonly MlpSpec PointSpec = TestUtil.TinyPointSpec;
    static NetworkSpec ImageSpec(string kind = "ddpmpp") =>
        new UNetOptions { Arch = kind, ModelChannels = 8, NumBlocks = 1, Dropout = 0 }.For(channels: 1, resolution: 8, labelDim: Classes);

    /// <summary>A frozen teacher with every layer perturbed away from zero, so that every layer has a gradient.</summary>
    internal static EdmPrecond Teacher(NetworkSpec spec)
    {
        torch.manual_seed(21);
        var net = spec.Build();
        TestUtil.Perturb(net, 22, 0.05); // every layer non-zero, so every layer has a gradient
        net.eval();
        TrainingUtils.Freeze(net);
        return net;
    }

    /// <summary>Labelled points around three centres: the GAN's real data for the point teacher.</summary>
    internal static PointSet RealPoints(int n = 64)
    {
        using var g = new Generator(7);
        var c = Rng.Integers(0, Classes, n, g);
        var centres = tensor(new float[] { 1, 0, -0.5f, 0.8f, -0.5f, -0.8f }, new long[] { 3, 2 });
        return new PointSet(centres.index_select(0, c) + 0.1f * randn(new long[] { n, 2 }, generator: g), c, Classes);
    }

    internal static T Copy<T>(T net, T into) where T : nn.Module
    {
        TrainingUtils.CopyWeights(net, into);
        return into;
    }

    internal static double MaxAbsDiff(nn.Module a, nn.Module b)
    {
        var sb = b.state_dict();
        return a.state_dict().Max(kv => (kv.Value - sb[kv.Key]).abs().max().item<float>());
    }

    // ---- features ----

    /// <summary>
    /// U-Nets: the features are exactly the bottleneck (encoder output) of F at the preconditioned input c_in x, c_noise =
    /// ln(sigma)/4, with the labels; not the bottleneck of the raw x.
    /// </summary>
    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("adm")]
    public void UNetFeaturesAreTheBottleneckAtThePreconditionedInput(string kind)
    {
        var spec = ImageSpec(kind);
        var net = Teacher(spec);
        var unet = (EdmUNet)net.Backbone;
        using var g = new Generator(3);
        var x = randn(new long[] { 4, 1, 8, 8 }, generator: g);
        var sigma = tensor(new float[] { 0.01f, 0.5f, 3f, 60f });
        var y = Rng.OneHotLabels(Classes, 4, g)!;
        using var _ = no_grad();
        var features = net.Features(x, sigma, y);

        Assert.Equal(new long[] { unet.BottleneckChannels, unet.BottleneckResolution, unet.BottleneckResolution }, net.FeatureShape);
        Assert.Equal(new long[] { 4 }.Concat(net.FeatureShape!), features.shape);
        var cIn = (sigma.to(ScalarType.Float64).square() + 0.25).rsqrt().to(ScalarType.Float32).view(4, 1, 1, 1);
        var cNoise = (sigma.to(ScalarType.Float64).log() / 4).to(ScalarType.Float32);
        var expected = unet.Bottleneck(cIn * x, cNoise, y);
        double err = (features - expected).abs().max().item<float>(), scale = expected.abs().max().item<float>();
        log.WriteLine($"{kind}: features {string.Join("x", features.shape)}, max |difference| {err:G3} of {scale:G3}");
        Assert.True(err <= 1e-5 * scale, $"features differ from the bottleneck at c_in x by {err:G3}");
        Assert.False(allclose(features, unet.Bottleneck(x, cNoise, y), 1e-3, 1e-3), "the raw x gives other features");
        Assert.False(allclose(features, net.Features(x, sigma, zeros_like(y)), 1e-3, 1e-3), "the labels enter the features");
    }

    /// <summary>
    /// MLP: the features are its last hidden layer, the (B, width) tensor its output layer reads: the denoiser's output is
    /// c_skip x + c_out (W features + b) with W, b the output layer's weights.
    /// </summary>
    [Fact]
    public void MlpFeaturesAreTheLastHiddenLayerTheOutputLayerReads()
    {
        var net = Teacher(PointSpec);
        using var g = new Generator(3);
        var x = randn(new long[] { 6, 2 }, generator: g);
        var sigma = tensor(new float[] { 0.005f, 0.1f, 0.5f, 2f, 10f, 70f });
        var y = Rng.OneHotLabels(Classes, 6, g);
        using var _ = no_grad();
        var features = net.Features(x, sigma, y);
        Assert.Equal(new long[] { PointSpec.Width }, net.FeatureShape);
        Assert.Equal(new long[] { 6, PointSpec.Width }, features.shape);

        var w = net.state_dict();
        var f = nn.functional.linear(features, w["model.output.weight"], w["model.output.bias"]);
        var s = sigma.to(ScalarType.Float64).unsqueeze(1);
        const double sd = 0.5;
        var expected = (sd * sd / (s.square() + sd * sd) * x + s * sd / (s.square() + sd * sd).sqrt() * f).to(ScalarType.Float32);
        var actual = net.Denoise(x, sigma, y);
        double err = (actual - expected).abs().max().item<float>();
        Assert.True(err <= 1e-5 * Math.Max(1, actual.abs().max().item<float>()), $"D differs from c_skip x + c_out output(features) by {err:G3}");
        Assert.True(features.min().item<float>() >= -0.2785f, "features are SiLU outputs (>= -0.2785)"); // min of x sigmoid(x)
    }

    // ---- head and losses ----

    /// <summary>
    /// DMD2's head on its 8x8 bottleneck: conv 4x4 stride 2, GroupNorm, SiLU, conv 4x4 stride 4, GroupNorm, SiLU, conv 1x1 to
    /// one channel, named cls_pred_branch.N; smaller maps skip the halving, vectors get the same head as an MLP; one logit per sample.
    /// </summary>
    [Fact]
    public void TheHeadIsDmd2sClassifierBranchAndGivesOneLogitPerSample()
    {
        var head = new GanClassifier(new long[] { 16, 8, 8 });
        var shapes = head.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        Assert.Equal(new[] { "cls_pred_branch.0.bias", "cls_pred_branch.0.weight", "cls_pred_branch.1.bias", "cls_pred_branch.1.weight",
                             "cls_pred_branch.3.bias", "cls_pred_branch.3.weight", "cls_pred_branch.4.bias", "cls_pred_branch.4.weight",
                             "cls_pred_branch.6.bias", "cls_pred_branch.6.weight" }, shapes.Keys.Order());
        Assert.Equal(new long[] { 16, 16, 4, 4 }, shapes["cls_pred_branch.0.weight"]);
        Assert.Equal(new long[] { 16, 16, 4, 4 }, shapes["cls_pred_branch.3.weight"]);
        Assert.Equal(new long[] { 1, 16, 1, 1 }, shapes["cls_pred_branch.6.weight"]);
        using var _ = no_grad();
        Assert.Equal(new long[] { 5 }, head.forward(randn(5, 16, 8, 8)).shape);
        foreach (var shape in new[] { new long[] { 8, 4, 4 }, new long[] { 8, 16, 16 }, new long[] { 8, 7, 7 }, new long[] { 32 } })
            Assert.Equal(new long[] { 3 }, new GanClassifier(shape).forward(randn(new long[] { 3 }.Concat(shape).ToArray())).shape);
        var small = new GanClassifier(new long[] { 8, 4, 4 }).state_dict(); // 4x4: no halving, conv 4x4 stride 4, GN, SiLU, conv 1x1
        Assert.Equal(6, small.Count);
        Assert.Equal(new long[] { 8, 8, 4, 4 }, small["cls_pred_branch.0.weight"].shape);
        var vector = new GanClassifier(new long[] { 32 }).state_dict();     // MLP: Linear, GN, SiLU, Linear
        Assert.Equal(new long[] { 32, 32 }, vector["cls_pred_branch.0.weight"].shape);
        Assert.Equal(new long[] { 1, 32 }, vector["cls_pred_branch.3.weight"].shape);
    }

    /// <summary>The GAN losses against log(1 + e^t) by hand: generator softplus(-fake), classifier softplus(-real) + softplus(fake).</summary>
    [Fact]
    public void TheGanLossesAreSoftplusOfTheLogitsWithRealAndFakeOnTheirSides()
    {
        static double Sp(double t) => Math.Log(1 + Math.Exp(t));
        var real = tensor(new float[] { 2f, -1f, 0.3f });
        var fake = tensor(new float[] { 0.5f, -3f, 4f });
        double d = new[] { Sp(-2) + Sp(0.5), Sp(1) + Sp(-3), Sp(-0.3) + Sp(4) }.Average();
        double gen = new[] { Sp(-0.5), Sp(3), Sp(-4) }.Average();
        Assert.Equal(d, DmdLoss.GanDiscriminator(real, fake).item<float>(), 5);
        Assert.Equal(gen, DmdLoss.GanGenerator(fake).item<float>(), 5);
        Assert.NotEqual(d, DmdLoss.GanDiscriminator(fake, real).item<float>(), 3); // the sides matter
    }

    // ---- the trainer's wiring ----

    static DmdConfig GanConfig => new()
    {
        Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GuidanceReal = 1.5, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
        Seed = 11, Steps = 1, GanWeight = 0.5, GanFakeWeight = 0.7, GanMaxStep = 600,
    };

    /// <summary>
    /// A point trainer with a fake denoiser that differs from the real one (and with <paramref name="headScale"/> &gt; 0 a
    /// perturbed head), and copies of its fake denoiser, head and generator as they are before its first step.
    /// </summary>
    static (DmdTrainer Trainer, EdmPrecond Fake0, GanClassifier Head0, OneStepGenerator Generator0) Prepared(
        EdmPrecond teacher, DmdConfig config, PointSet real, double headScale = 0)
    {
        var trainer = new DmdTrainer(teacher, PointSpec, config, pairs: null, realData: real);
        TestUtil.Perturb(trainer.Fake, 4, 0.02);
        if (headScale > 0) TestUtil.Perturb(trainer.GanHead!, 5, headScale);
        var fake0 = Copy(trainer.Fake, PointSpec.Build());
        return (trainer, fake0, Copy(trainer.GanHead!, new GanClassifier(fake0.FeatureShape!)),
                new OneStepGenerator(Copy(trainer.Generator.Net, PointSpec.Build()), config.SigmaMax));
    }

    /// <summary>
    /// A point trainer on <paramref name="teacher"/> whose fake denoiser is perturbed away from the teacher, with copies of
    /// that fake denoiser and of the generator as they are before the first step (for replaying it by hand).
    /// </summary>
    internal static (DmdTrainer Trainer, EdmPrecond Fake0, OneStepGenerator Generator0) PerturbedFake(EdmPrecond teacher, DmdConfig config,
                                                                                                     PointSet? realData = null)
    {
        var trainer = new DmdTrainer(teacher, PointSpec, config, pairs: null, realData: realData);
        TestUtil.Perturb(trainer.Fake, 4, 0.02); // a fake denoiser that differs from the teacher
        return (trainer, Copy(trainer.Fake, PointSpec.Build()),
                new OneStepGenerator(Copy(trainer.Generator.Net, PointSpec.Build()), config.SigmaMax));
    }

    /// <summary>
    /// How far the generator's gradient of <paramref name="trainer"/>'s first step lies from that of the same step under
    /// <paramref name="other"/> (a new trainer on <paramref name="teacher"/>, fake denoiser <paramref name="fake0"/>): the
    /// largest difference and the gradient's largest value, to show that a setting changes the step.
    /// </summary>
    internal static (double Diff, double Size) GeneratorGradientGap(DmdTrainer trainer, EdmPrecond teacher, DmdConfig other, EdmPrecond fake0)
    {
        using var otherTrainer = new DmdTrainer(teacher, PointSpec, other, pairs: null);
        TrainingUtils.CopyWeights(fake0, otherTrainer.Fake);
        otherTrainer.TrainStep();
        var g = trainer.Generator.Net.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!);
        return (otherTrainer.Generator.Net.named_parameters().Max(p => (p.parameter.grad! - g[p.name]).abs().max().item<float>()),
                g.Values.Max(t => t.abs().max().item<float>()));
    }

    /// <summary>
    /// The draws a one-step point trainer's first step starts with, replayed from <paramref name="rng"/> (seeded as the
    /// trainer): z, the labels, the generator's output for them (with gradient), the DM term's noise levels on
    /// <paramref name="grid"/> and its noise sigma n.
    /// </summary>
    /// With <see cref="DmdConfig.FeatureEnergyGroup"/> the labels are one class per group, each repeated for its group.
    internal static (Tensor Z, Tensor Y, Tensor X, Tensor SigmaDm, Tensor NoiseDm) FirstStepDraws(DmdConfig config, OneStepGenerator generator0,
                                                                                               Tensor grid, Generator rng)
    {
        var z = Rng.Normal(new long[] { config.BatchSize, 2 }, rng);
        int group = config.FeatureEnergyBatch > 0 ? 0 : config.FeatureEnergyGroup; // grouped labels only when the term reads this batch
        var y = group > 0 ? Rng.OneHot(Rng.Integers(0, Classes, config.BatchSize / group, rng).repeat_interleave(group), Classes)
                          : Rng.OneHotLabels(Classes, config.BatchSize, rng)!;
        var x = generator0.Generate(z, y);
        var sigma = grid.index_select(0, Rng.Integers(config.MinStep, config.MaxStep + 1, config.BatchSize, rng));
        return (z, y, x, sigma, sigma.unsqueeze(1) * Rng.NormalLike(x, rng));
    }

    /// <summary>
    /// One step with the GAN against the same step written out by hand from the trainer's seed, draws in order: z, labels, DM
    /// noise levels and noise, GAN noise levels (indices in [0, GanMaxStep)) and noise for the generated batch; then for the
    /// fake update its noise levels and noise, the real batch, real GAN noise levels and noise, fake GAN noise levels and noise.
    /// Generator: grad of loss_dm + GanWeight mean softplus(-D(features of the fake denoiser at G(z) + sigma n)), through the
    /// fake denoiser into G. Fake denoiser and head: grad of its denoising loss + GanFakeWeight mean [softplus(-D(real)) +
    /// softplus(D(fake))], with nothing left over from the generator's loss. With a negligible fake learning rate, the fake
    /// denoiser and the head stay where they were: the generator's step moved neither.
    /// </summary>
    [Fact]
    public void OneStepGivesTheGanGradientsThroughTheFakeDenoiserAndTheClassifierLossToFakeAndHead()
    {
        var teacher = Teacher(PointSpec);
        var real = RealPoints();
        var config = GanConfig with { FakeLrScale = 1e-9 };
        var (trainer, fake0, head0, generator0) = Prepared(teacher, config, real);
        using var _ = trainer;

        var losses = trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        Tensor Logits(Tensor x, Tensor? y, int maxStep)
        {
            var sigma = grid.index_select(0, Rng.Integers(0, maxStep, x.shape[0], rng));
            var xt = x + sigma.unsqueeze(1) * Rng.NormalLike(x, rng);
            return head0.forward(fake0.Features(xt, sigma, y));
        }
        void Trainable(bool on) { foreach (var p in fake0.parameters().Concat(head0.parameters())) p.requires_grad = on; }

        var (z, y, x, sigmaDm, noiseDm) = FirstStepDraws(config, generator0, grid, rng);
        var xtDm = x.detach() + noiseDm;
        Tensor grad;
        using (no_grad())
        {
            var uncond = teacher.Denoise(xtDm, sigmaDm, zeros_like(y));
            var pReal = uncond + 1.5 * (teacher.Denoise(xtDm, sigmaDm, y) - uncond);
            grad = DmdLoss.DmGradient(x.detach(), pReal, fake0.Denoise(xtDm, sigmaDm, y));
        }
        Trainable(false);
        var logitsG = Logits(x, y, config.GanMaxStep);
        var ganG = (1 + (-logitsG).exp()).log().mean(); // softplus(-D), by hand
        ((x * grad).sum() / x.numel() + config.GanWeight * ganG).backward();
        Trainable(true);
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(ganG.item<float>(), losses["loss_gan_g"], 5);

        var sigmaF = grid.index_select(0, Rng.Integers(0, config.GridLevels, config.BatchSize, rng));
        var lossFake = EdmLoss.AtSigma(fake0, x.detach(), sigmaF, y, PointSpec.SigmaData, rng);
        var (xr, yr) = real.Batch(config.BatchSize, rng);
        var logitsReal = Logits(xr, yr, config.GanMaxStep);
        var logitsFake = Logits(x.detach(), y, config.GanMaxStep);
        var lossD = ((1 + (-logitsReal).exp()).log() + (1 + logitsFake.exp()).log()).mean();
        (lossFake + config.GanFakeWeight * lossD).backward();
        TestUtil.AssertSameGradients(fake0, trainer.Fake, "fake denoiser", requireGradient: true);
        TestUtil.AssertSameGradients(head0, trainer.GanHead!, "GAN head", requireGradient: true);
        Assert.Equal(lossD.item<float>(), losses["loss_gan_d"], 5);
        Assert.Equal(lossFake.item<float>(), losses["loss_fake"], 5);
        Assert.Equal(logitsReal.mean().item<float>(), losses["gan_logit_real"], 5);
        Assert.Equal(logitsFake.mean().item<float>(), losses["gan_logit_fake"], 5);

        // the fake denoiser and the head moved only by their own (negligible) step; the generator by its own
        double movedFake = MaxAbsDiff(trainer.Fake, fake0), movedHead = MaxAbsDiff(trainer.GanHead!, head0);
        double movedGen = MaxAbsDiff(trainer.Generator.Net, generator0.Net);
        log.WriteLine($"moved: generator {movedGen:G3}, fake {movedFake:G3}, head {movedHead:G3}");
        Assert.True(movedGen > 1e-5, $"the generator moved by {movedGen:G3}");
        Assert.True(movedFake < 1e-9 && movedHead < 1e-9, $"fake moved {movedFake:G3}, head {movedHead:G3}: the generator's step must not update them");
        Assert.All(trainer.Fake.parameters().Concat(trainer.GanHead!.parameters()), p => Assert.True(p.requires_grad));
    }

    /// <summary>
    /// The head's learning rate is the fake denoiser's times GanHeadLrScale: with the fake's made negligible and the head's
    /// scale undoing that, one AdamW step moves the head's largest weight by the base lr (Adam's first step is lr g / (|g| +
    /// eps)) and the fake denoiser not at all.
    /// </summary>
    [Fact]
    public void TheGanHeadLearnsAtItsOwnScaleOfTheFakeDenoisersRate()
    {
        var teacher = Teacher(PointSpec);
        var config = GanConfig with { FakeLrScale = 1e-9, GanHeadLrScale = 1e9 };
        var (trainer, fake0, head0, _) = Prepared(teacher, config, RealPoints());
        using var _ = trainer;
        trainer.TrainStep();
        double movedFake = MaxAbsDiff(trainer.Fake, fake0), movedHead = MaxAbsDiff(trainer.GanHead!, head0);
        log.WriteLine($"moved: fake {movedFake:G3}, head {movedHead:G3} (lr {config.LearningRate:G3})");
        Assert.True(movedFake < 1e-9, $"fake moved {movedFake:G3}");
        Assert.InRange(movedHead, 0.98 * config.LearningRate, 1.02 * config.LearningRate);
        Assert.Throws<DmdInputException>(() => (config with { GanHeadLrScale = 0 }).Validate());
    }

    /// <summary>The GAN term changes the generator's gradient: the same step without it (GanWeight 0) gives another one.</summary>
    [Fact]
    public void TheGanTermChangesTheGeneratorsGradient()
    {
        var teacher = Teacher(PointSpec);
        using var on = new DmdTrainer(teacher, PointSpec, GanConfig with { GanWeight = 2 }, pairs: null, realData: RealPoints());
        using var off = new DmdTrainer(teacher, PointSpec, GanConfig with { GanWeight = 0 }, pairs: null);
        on.TrainStep();
        off.TrainStep();
        var gOff = off.Generator.Net.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!);
        double diff = on.Generator.Net.named_parameters().Max(p => (p.parameter.grad! - gOff[p.name]).abs().max().item<float>());
        double size = on.Generator.Net.parameters().Max(p => p.grad!.abs().max().item<float>());
        log.WriteLine($"gradient with GAN - without: {diff:G3} (largest {size:G3})");
        Assert.True(diff > 1e-2 * size, $"the GAN term moved the generator's gradient by only {diff:G3} of {size:G3}");
    }

    /// <summary>The U-Net teacher: a step trains the head on the bottleneck and moves generator, fake denoiser and head.</summary>
    [Fact]
    public void AnImageStepTrainsTheHeadOnTheBottleneck()
    {
        var spec = ImageSpec();
        var teacher = Teacher(spec);
        using var g = new Generator(5);
        var images = new ImageDataset(randint(0, 256, new long[] { 12, 1, 8, 8 }, dtype: ScalarType.Byte, generator: g), Rng.Integers(0, Classes, 12, g), Classes);
        var config = GanConfig with { BatchSize = 4, LearningRate = 1e-3 };
        using var trainer = new DmdTrainer(teacher, spec, config, pairs: null, realData: images);
        Assert.Equal(((EdmUNet)trainer.Fake.Backbone).FeatureShape, trainer.GanHead!.FeatureShape);
        var head0 = Copy(trainer.GanHead, new GanClassifier(trainer.GanHead.FeatureShape));
        var fake0 = Copy(trainer.Fake, spec.Build());
        var losses = trainer.TrainStep();
        Assert.All(new[] { "loss_gan_g", "loss_gan_d", "gan_logit_real", "gan_logit_fake" }, k => Assert.True(double.IsFinite(losses[k]), k));
        Assert.True(MaxAbsDiff(trainer.GanHead, head0) > 1e-4 && MaxAbsDiff(trainer.Fake, fake0) > 1e-4);
    }

    // ---- f-divergence DM term (f-distill, Xu, Nie and Vahdat 2025): weights h(r) from the head's logits ----

    /// <summary>r = exp(logit); h = 1 (reverse KL), r / (1 + r) (Jensen-Shannon), r (forward KL); each divided by its batch mean.</summary>
    [Fact]
    public void TheWeightsAreHOfTheDensityRatioOverTheirBatchMean()
    {
        double[] l = { -2, 0, 0.5, 3 };
        var logits = tensor(l.Select(v => (float)v).ToArray());
        double[] Normalised(double[] h) => h.Select(v => v / h.Average()).ToArray();
        var expected = new Dictionary<DmDivergence, double[]>
        {
            [DmDivergence.ReverseKl] = new double[] { 1, 1, 1, 1 },
            [DmDivergence.JensenShannon] = Normalised(l.Select(v => Math.Exp(v) / (1 + Math.Exp(v))).ToArray()),
            [DmDivergence.ForwardKl] = Normalised(l.Select(Math.Exp).ToArray()),
        };
        foreach (var (divergence, e) in expected)
        {
            var w = DmdLoss.DivergenceWeights(logits, divergence).data<float>().ToArray();
            log.WriteLine($"{divergence}: {string.Join(" ", w.Select(v => v.ToString("F4")))}");
            for (int i = 0; i < l.Length; i++) Assert.Equal(e[i], w[i], 5);
        }
        // forward KL's exp(logit) of a confident head stays finite: one sample takes the whole batch's weight
        var confident = DmdLoss.DivergenceWeights(tensor(new float[] { 200, 0, -5, 1 }), DmDivergence.ForwardKl).data<float>().ToArray();
        Assert.Equal(4, confident[0], 4);
        Assert.All(confident.Skip(1), v => Assert.True(v >= 0 && v < 1e-6));
    }

    /// <summary>
    /// One step at gan-weight 0 with an f-divergence against the same step by hand, draws in order: z, labels, DM noise
    /// levels and noise (no GAN term for the generator, so no GAN draws there); the generator's gradient is that of
    /// mean(x * grad * h) with grad DMD's and h the divergence's weights of the head on the fake denoiser's features at
    /// the DM term's noised samples, not the unweighted one. The head trains (the fake update's classifier loss) though
    /// the generator has no GAN loss, and the generator's step moves neither the head nor the fake denoiser.
    /// </summary>
    [Theory]
    [InlineData(DmDivergence.JensenShannon)]
    [InlineData(DmDivergence.ForwardKl)]
    public void AStepWeightsEachSamplesDmGradientByTheHeadsDensityRatio(DmDivergence divergence)
    {
        var teacher = Teacher(PointSpec);
        var real = RealPoints();
        var config = GanConfig with { GanWeight = 0, DmDivergence = divergence, FakeLrScale = 1e-9 };
        var (trainer, fake0, head0, generator0) = Prepared(teacher, config, real, headScale: 0.5); // logits that differ between samples, so the weights do
        using var _ = trainer;

        var losses = trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var (z, y, x, sigmaDm, noiseDm) = FirstStepDraws(config, generator0, grid, rng);
        var xtDm = x.detach() + noiseDm;
        Tensor grad, h;
        using (no_grad())
        {
            var uncond = teacher.Denoise(xtDm, sigmaDm, zeros_like(y));
            var pReal = uncond + 1.5 * (teacher.Denoise(xtDm, sigmaDm, y) - uncond);
            grad = DmdLoss.DmGradient(x.detach(), pReal, fake0.Denoise(xtDm, sigmaDm, y));
            var r = head0.forward(fake0.Features(xtDm, sigmaDm, y)).to(ScalarType.Float64).exp();
            h = divergence == DmDivergence.JensenShannon ? r / (1 + r) : r;
            h = (h / h.mean()).to(ScalarType.Float32);
        }
        log.WriteLine($"{divergence}: weights {h.min().item<float>():F3} to {h.max().item<float>():F3}");
        Assert.True((h.max() - h.min()).item<float>() > 0.05, "the head's logits should differ between samples");
        ((x * grad * h.unsqueeze(1)).sum() / x.numel()).backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(h.max().item<float>(), losses["dm_weight_max"], 4);
        Assert.False(losses.ContainsKey("loss_gan_g"));

        // the unweighted gradient is another one: the weights reach the generator
        var unweighted = new OneStepGenerator(Copy(generator0.Net, PointSpec.Build()), config.SigmaMax);
        var xu = unweighted.Generate(z, y);
        ((xu * grad).sum() / xu.numel()).backward();
        var gW = trainer.Generator.Net.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!);
        double diff = unweighted.Net.named_parameters().Max(p => (p.parameter.grad! - gW[p.name]).abs().max().item<float>());
        double size = unweighted.Net.parameters().Max(p => p.grad!.abs().max().item<float>());
        Assert.True(diff > 1e-2 * size, $"weighted and unweighted gradients differ by only {diff:G3} of {size:G3}");

        // the head and the fake denoiser: their classifier and denoising losses' gradients, nothing from the generator's
        double movedFake = MaxAbsDiff(trainer.Fake, fake0), movedHead = MaxAbsDiff(trainer.GanHead!, head0);
        Assert.True(movedFake < 1e-9 && movedHead < 1e-9, $"fake moved {movedFake:G3}, head {movedHead:G3}: the generator's step must not update them");
        Assert.True(trainer.GanHead!.parameters().All(p => p.grad is not null && p.grad.abs().max().item<float>() > 0), "the head trains at gan-weight 0");
    }

    /// <summary>An f-divergence needs the head's real data and a DM term; reverse KL at gan-weight 0 builds no head.</summary>
    [Fact]
    public void AnFDivergenceNeedsRealDataAndADmTerm()
    {
        var teacher = Teacher(PointSpec);
        var config = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 4, DmDivergence = DmDivergence.JensenShannon };
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, config, pairs: null));
        Assert.Contains("dm-divergence JensenShannon", e.Message);
        Assert.Contains("--gan-data", e.Message);
        var noDm = Assert.Throws<DmdInputException>(() => (config with { Mode = DmdMode.RegressionOnly }).Validate());
        Assert.Contains("RegressionOnly", noDm.Message);
        Assert.Throws<DmdInputException>(() => (config with { DmDivergence = (DmDivergence)7 }).Validate());
        using var plain = new DmdTrainer(teacher, PointSpec, config with { DmDivergence = DmDivergence.ReverseKl }, pairs: null, realData: RealPoints());
        Assert.Null(plain.GanHead);
    }

    // ---- GAN off: the run of before ----

    /// <summary>Projections of a module's weight changes on fixed random directions: a small fingerprint of a run's result.</summary>
    static Dictionary<string, double[]> Fingerprint(string prefix, nn.Module after, nn.Module before)
    {
        var b = before.state_dict();
        var result = new Dictionary<string, double[]>();
        foreach (var (k, v) in after.state_dict())
        {
            var delta = (v.to(ScalarType.Float64) - b[k].to(ScalarType.Float64)).flatten();
            var u = tensor(TestUtil.Uniform(prefix + k, delta.numel())) - 0.5;
            result[prefix + k] = new[] { (delta * u).sum().item<double>(), (delta * u).abs().sum().item<double>() };
        }
        return result;
    }

    static (DmdTrainer Trainer, EdmPrecond Teacher) FixtureRun(bool image)
    {
        var spec = image ? ImageSpec() : PointSpec;
        var teacher = Teacher(spec);
        var pairs = RegressionPairs.Generate(teacher, spec.SampleShape, 16, steps: 2, guidance: 1.5, seed: 4, batchSize: 8);
        var cfg = new DmdConfig { Steps = 3, BatchSize = 8, RegressionBatchSize = 4, GuidanceReal = 1.5, FakeUpdatesPerStep = 2, EmaDecay = 0.9, WarmupSteps = 2, Seed = 3 };
        var trainer = new DmdTrainer(teacher, spec, cfg, pairs);
        for (int i = 0; i < 3; i++) trainer.TrainStep();
        return (trainer, teacher);
    }

    static string FixturePath(bool source) => Path.Combine(source ? Path.Combine(TestUtil.RepoRoot, "tests", "Dmd.Tests") : AppContext.BaseDirectory,
                                                          "TestData", "dmd_gan_off", "fingerprints.json");

    /// <summary>
    /// With the GAN off (the default), three steps of Full DMD (pairs, guidance, two fake updates on fresh batches, EMA) on a
    /// point and an image teacher give the weights the trainer gave before the GAN was added: fingerprints (projections of
    /// the weight changes on fixed directions) stored from the trainer of commit ed74892, to 1e-2 of their scale: another
    /// CPU's kernels round differently, and through three Adam steps that moved the image run's projections by up to 4.4e-4
    /// of their scale on a second machine (1e-4 failed there), while a changed draw order moves them by their whole size.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WithoutTheGanAStepIsTheStepOfBefore(bool image)
    {
        var (trainer, teacher) = FixtureRun(image);
        using var _ = trainer;
        var fp = Fingerprint("g.", trainer.Generator.Net, teacher).Concat(Fingerprint("f.", trainer.Fake, teacher))
                 .Concat(Fingerprint("e.", trainer.Ema!.Net, teacher)).ToDictionary();
        string key = image ? "image" : "points";
        if (Environment.GetEnvironmentVariable("DMD_WRITE_FIXTURES") == "1")
        {
            var all = File.Exists(FixturePath(true)) ? Checkpoint.LoadJson<Dictionary<string, Dictionary<string, double[]>>>(FixturePath(true)) : new();
            all[key] = fp;
            Checkpoint.SaveJson(all, FixturePath(true));
            return;
        }
        var expected = Checkpoint.LoadJson<Dictionary<string, Dictionary<string, double[]>>>(FixturePath(false))[key];
        Assert.Equal(expected.Keys.Order(), fp.Keys.Order());
        int moved = 0;
        foreach (var (k, e) in expected)
        {
            double err = Math.Abs(fp[k][0] - e[0]);
            Assert.True(err <= 1e-2 * e[1] + 1e-12, $"{k}: projection {fp[k][0]:G6}, stored {e[0]:G6} (scale {e[1]:G3})");
            if (e[1] > 0) moved++;
        }
        Assert.True(moved > expected.Count / 2, "most tensors moved in the stored run");
    }

    /// <summary>
    /// GanWeight 0 with every other GAN setting changed and real data given is bit for bit the run without them: no head, no
    /// draws from the data, no other loss columns.
    /// </summary>
    [Fact]
    public void GanWeightZeroIgnoresTheOtherGanSettingsAndTheRealDataBitForBit()
    {
        var cfg = new DmdConfig { Mode = DmdMode.DmOnly, Steps = 3, BatchSize = 8, FakeUpdatesPerStep = 2, WarmupSteps = 2, Seed = 3 };
        var teacher = Teacher(PointSpec);
        using var a = new DmdTrainer(teacher, PointSpec, cfg, pairs: null);
        using var b = new DmdTrainer(teacher, PointSpec, cfg with { GanFakeWeight = 0.5, GanMaxStep = 10 }, pairs: null, realData: RealPoints());
        Assert.Null(b.GanHead);
        for (int i = 0; i < 3; i++) Assert.Equal(a.TrainStep().Keys.Order(), b.TrainStep().Keys.Order());
        foreach (var (x, y) in new[] { ((nn.Module)a.Generator.Net, (nn.Module)b.Generator.Net), (a.Fake, b.Fake) })
        {
            var sb = y.state_dict();
            foreach (var (k, t) in x.state_dict()) Assert.True(TestUtil.Same(t, sb[k]), k);
        }
    }

    // ---- resume ----

    static string SaveTeacher()
    {
        var path = Path.Combine(TestUtil.TempDir(), "teacher.safetensors");
        DenoiserFile.Save(Teacher(PointSpec), PointSpec, path);
        return path;
    }

    static readonly DmdConfig RunConfig = GanConfig with { Steps = 4, CheckpointEvery = 2, FakeUpdatesPerStep = 2, WarmupSteps = 2, LearningRate = 1e-3, LogEvery = 1, GradClip = 10 };

    static Dictionary<string, Tensor> CheckpointTensors(string runDir)
    {
        var folder = TestUtil.CheckpointFolder(runDir);
        return Directory.GetFiles(folder, "*.safetensors")
            .SelectMany(f => Checkpoint.LoadTensors(f).Select(kv => (Path.GetFileName(f) + ":" + kv.Key, kv.Value))).ToDictionary();
    }

    /// <summary>A GAN run stopped at step 2 and resumed gives the uninterrupted run's weights, head included, and its losses.</summary>
    [Fact]
    public void AGanRunResumesBitForBit()
    {
        var tPath = SaveTeacher();
        var reference = TestUtil.TempDir();
        using (var a = new DmdTrainer(DenoiserFile.Load(tPath).Net, PointSpec, RunConfig, null, realData: RealPoints())) a.Run(reference, tPath, null, ganData: "test points");
        var dir = TestUtil.TempDir();
        using (var b = new DmdTrainer(DenoiserFile.Load(tPath).Net, PointSpec, RunConfig, null, realData: RealPoints()))
            b.Run(dir, tPath, null, new RunOptions { StopAfter = 2 }, ganData: "test points");
        Assert.Equal(2, TestUtil.CheckpointStep(dir));
        Assert.True(File.Exists(Path.Combine(TestUtil.CheckpointFolder(dir), "optim_gan_head.pt")));
        using (var c = new DmdTrainer(DenoiserFile.Load(tPath).Net, PointSpec, RunConfig, null, realData: RealPoints())) c.Run(dir, tPath, null, ganData: "test points");

        var expected = CheckpointTensors(reference);
        var got = CheckpointTensors(dir);
        Assert.Contains(expected.Keys, k => k.StartsWith("gan_head.safetensors:cls_pred_branch"));
        Assert.Equal(expected.Keys.Order(), got.Keys.Order());
        foreach (var (k, t) in expected) Assert.True(TestUtil.Same(t, got[k]), $"{k} differs from the uninterrupted run");
        var header = File.ReadLines(Path.Combine(dir, "losses.csv")).First().Split(',');
        Assert.Contains("loss_gan_g", header);
        Assert.Contains("loss_gan_d", header);
        Assert.Equal(File.ReadAllLines(Path.Combine(reference, "losses.csv")).Select(l => string.Join(",", l.Split(',').SkipLast(1))),
                     File.ReadAllLines(Path.Combine(dir, "losses.csv")).Select(l => string.Join(",", l.Split(',').SkipLast(1)))); // rss_mb aside
        Assert.Equal("test points", System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!["GanData"]!.GetValue<string>());
    }

    /// <summary>
    /// A run saved before the GAN settings existed (its config.json lacks them) continues unchanged without --allow-changes;
    /// switching the GAN on is a change to allow, after which the head starts fresh from a checkpoint that has none.
    /// </summary>
    [Fact]
    public void AnOlderRunResumesAsItWasAndStartsAFreshHeadWhenTheGanIsSwitchedOn()
    {
        var tPath = SaveTeacher();
        var dir = TestUtil.TempDir();
        var off = RunConfig with { GanWeight = 0, GanFakeWeight = new DmdConfig().GanFakeWeight, GanMaxStep = new DmdConfig().GanMaxStep };
        using (var a = new DmdTrainer(DenoiserFile.Load(tPath).Net, PointSpec, off, null)) a.Run(dir, tPath, null, new RunOptions { StopAfter = 2 });
        var configPath = Path.Combine(dir, "config.json");
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        foreach (var k in new[] { "GanWeight", "GanFakeWeight", "GanMaxStep" }) Assert.True(node["Config"]!.AsObject().Remove(k));
        Assert.True(node.Remove("GanData"));
        File.WriteAllText(configPath, node.ToJsonString());
        using (var b = new DmdTrainer(DenoiserFile.Load(tPath).Net, PointSpec, off with { Steps = 3 }, null)) b.Run(dir, tPath, null);
        Assert.Equal(3, TestUtil.CheckpointStep(dir));

        using (var c = new DmdTrainer(DenoiserFile.Load(tPath).Net, PointSpec, RunConfig, null, realData: RealPoints()))
        {
            var e = Assert.Throws<DmdInputException>(() => c.Run(dir, tPath, null, ganData: "test points"));
            Assert.Contains("GanWeight 0 -> 0.5", e.Message);
            c.Run(dir, tPath, null, new RunOptions { AllowChanges = true }, ganData: "test points");
            Assert.Equal(4, c.Step);
        }
        Assert.True(File.Exists(Path.Combine(TestUtil.CheckpointFolder(dir), "gan_head.safetensors")));
    }

    // ---- refusals ----

    /// <summary>GAN without real data, with RegressionOnly, with data of another shape or without the teacher's classes: one-line errors naming the fix.</summary>
    [Fact]
    public void TheGanIsRefusedWithoutFittingRealData()
    {
        var teacher = Teacher(PointSpec);
        void Refused(DmdConfig cfg, IDataSource? data, string expected)
        {
            var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, cfg, pairs: null, realData: data));
            Assert.Contains(expected, e.Message);
            Assert.DoesNotContain("\n", e.Message);
        }
        Refused(GanConfig, null, "--gan-data");
        Refused(GanConfig with { Mode = DmdMode.RegressionOnly }, RealPoints(), "mode Full or DmOnly");
        Refused(GanConfig with { GanMaxStep = 1001 }, RealPoints(), "grid-levels 1000");
        Refused(GanConfig, new PointSet(randn(10, 3), tensor(new long[10]), Classes), "[3] but the teacher makes [2]");
        Refused(GanConfig, RealPoints().WithoutLabels(), "no labels");
        Refused(GanConfig with { GanWeight = -1 }, RealPoints(), "gan-weight -1");
        Assert.Contains("image", Assert.Throws<DmdInputException>(() => DmdTrainer.LoadRealData("ring8", ImageSpec())).Message);
    }

    // ---- command line ----

    /// <summary>
    /// `dmd distill --gan-weight 0.003 --gan-data ring8` on a tiny point teacher runs and logs the GAN's columns; without
    /// --gan-data it takes the teacher run's own data; a teacher without a run folder and no --gan-data is refused.
    /// The runs sit in a folder named with brackets, which the console's markup once took for a style after the training.
    /// </summary>
    [Fact]
    public void DistillWithGanDataRunsAndLogsTheGanLosses()
    {
        var work = Path.Combine(TestUtil.TempDir(), "[w]");
        var teacher = Path.Combine(work, "teacher");
        var (code, output) = CliTests.Run("train-teacher", "--data", "ring8", "--train-points", "500", "--width", "16", "--depth", "1",
                                          "--steps", "3", "--batch-size", "16", "--out", teacher);
        Assert.True(code == 0, output);
        var run = Path.Combine(work, "dmd");
        string[] common = { "distill", "--teacher", teacher, "--lambda-reg", "0", "--gan-weight", "0.003", "--steps", "3", "--batch-size", "16", "--log-every", "1" };
        (code, output) = CliTests.Run(common.Concat(new[] { "--gan-data", "ring8", "--out", run }).ToArray());
        Assert.True(code == 0, output);
        var header = File.ReadLines(Path.Combine(run, "losses.csv")).First().Split(',');
        Assert.Contains("loss_gan_g", header);
        Assert.Contains("loss_gan_d", header);
        Assert.Equal(4, File.ReadAllLines(Path.Combine(run, "losses.csv")).Length);
        var info = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(run, "config.json")))!;
        Assert.Equal("ring8", info["GanData"]!.GetValue<string>());
        Assert.Equal(0.003, info["Config"]!["GanWeight"]!.GetValue<double>());

        (code, output) = CliTests.Run(common.Concat(new[] { "--out", Path.Combine(work, "dmd-default") }).ToArray());
        Assert.True(code == 0, output);
        Assert.Contains("GAN data: ring8 (the teacher's training data)", output);

        var bare = EvalAndBenchCliTests.TinyModel(TestUtil.TempDir(), "teacher.safetensors");
        (code, output) = CliTests.Run("distill", "--teacher", bare, "--lambda-reg", "0", "--gan-weight", "0.003", "--out", Path.Combine(work, "bare"));
        Assert.Equal(2, code);
        Assert.Contains("--gan-data", output);
    }
}
