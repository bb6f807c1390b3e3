using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// The feature energy term (not in DMD or DMD2, <see cref="DmdConfig.FeatureEnergyWeight"/>): the estimator, its wiring
/// into the generator's step (through the frozen teacher's features, on a real batch drawn after the DM term's draws),
/// and the U-Nets' features at every level that <see cref="MultiLevelGanClassifier"/> reads.
/// </summary>
public class FeatureEnergyTests
{
    /// <summary>The estimator is the energy distance written out pair by pair, divided by the second set's mean distance.</summary>
    [Fact]
    public void FeatureEnergyIsTheEnergyDistanceOverTheRealSetsMeanDistance()
    {
        using var g = new Generator(3);
        var a = Rng.Normal(new long[] { 5, 4 }, g);
        var b = Rng.Normal(new long[] { 6, 4 }, g) + 0.7;
        double D(Tensor u, int i, Tensor v, int j) => (u[i] - v[j]).square().sum().sqrt().item<float>();
        double cross = 0, aa = 0, bb = 0;
        for (int i = 0; i < 5; i++) for (int j = 0; j < 6; j++) cross += D(a, i, b, j) / 30;
        for (int i = 0; i < 5; i++) for (int j = 0; j < 5; j++) if (i != j) aa += D(a, i, a, j) / 20;
        for (int i = 0; i < 6; i++) for (int j = 0; j < 6; j++) if (i != j) bb += D(b, i, b, j) / 30;
        Assert.Equal((2 * cross - aa - bb) / bb, DmdLoss.FeatureEnergy(a, b).item<float>(), 4);
        Assert.Throws<DmdInputException>(() => DmdLoss.FeatureEnergy(a[..1], b));
    }

    /// <summary>
    /// Unbiased: over many pairs of batches of 8 from one distribution it averages 0 (within 4 standard errors), from two
    /// distributions one standard deviation apart clearly more; and it is smaller for a batch that covers the real one
    /// than for a batch of the same points collapsed onto one of them.
    /// </summary>
    [Fact]
    public void FeatureEnergyIsZeroOnAverageForTheSameDistributionAndPositiveOtherwise()
    {
        using var g = new Generator(5);
        var same = new List<double>();
        var shifted = new List<double>();
        for (int k = 0; k < 400; k++)
        {
            var r = Rng.Normal(new long[] { 8, 3 }, g);
            same.Add(DmdLoss.FeatureEnergy(Rng.Normal(new long[] { 8, 3 }, g), r).item<float>());
            shifted.Add(DmdLoss.FeatureEnergy(Rng.Normal(new long[] { 8, 3 }, g) + 1, r).item<float>());
        }
        double mean = same.Average(), se = Math.Sqrt(same.Select(v => (v - mean) * (v - mean)).Sum() / (same.Count - 1) / same.Count);
        Assert.True(Math.Abs(mean) < 4 * se, $"same distribution: mean {mean:G3}, standard error {se:G3}");
        Assert.True(shifted.Average() > mean + 10 * se, $"shifted: {shifted.Average():G3} against {mean:G3} (se {se:G3})");

        var real = Rng.Normal(new long[] { 8, 3 }, g);
        var covering = Rng.Normal(new long[] { 8, 3 }, g);
        var collapsed = covering[..1].expand(8, 3);
        Assert.True(DmdLoss.FeatureEnergy(covering, real).item<float>() < DmdLoss.FeatureEnergy(collapsed, real).item<float>());
    }

    /// <summary>
    /// The generator's step with the term: its gradient is that of loss_dm + weight x the term, the term written out by hand
    /// from the trainer's seed with its draws in order after the DM term's (the real batch, one noise level index in
    /// [0, gan-max-step), the real batch's noise, the generated batch's noise) and the teacher's features; the teacher takes
    /// no gradient, and the logged loss_energy is the term's value.
    /// </summary>
    [Fact]
    public void TheGeneratorGetsTheFeatureEnergyGradientThroughTheTeachersFeatures()
    {
        var teacher = DmdGanTests.Teacher(TestUtil.TinyPointSpec);
        var real = DmdGanTests.RealPoints();
        var config = new DmdConfig
        {
            Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
            Seed = 11, Steps = 1, FeatureEnergyWeight = 0.8, GanMaxStep = 600,
        };
        var (trainer, fake0, generator0, losses, rng, grid, z, y, x, grad) = StepAndReplayDm(teacher, real, config);
        using var _ = trainer;
        using var __ = rng;
        Assert.Null(trainer.GanHead);
        var (xr, yr) = real.Batch(config.BatchSize, rng);
        var sigma = grid.index_select(0, Rng.Integers(0, config.GanMaxStep, 1, rng)).expand(config.BatchSize);
        var xrt = xr + sigma.unsqueeze(1) * Rng.NormalLike(xr, rng);
        var xt = x + sigma.unsqueeze(1) * Rng.NormalLike(x, rng);
        var energy = DmdLoss.FeatureEnergy(teacher.Features(xt, sigma, y).flatten(1), teacher.Features(xrt, sigma, yr).flatten(1).detach());
        ((x * grad).sum() / x.numel() + config.FeatureEnergyWeight * energy).backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(energy.item<float>(), losses["loss_energy"], 5);
        Assert.All(teacher.parameters(), p => Assert.Null(p.grad));

        // the term matters: without it the generator's gradient is another
        var (diff, size) = DmdGanTests.GeneratorGradientGap(trainer, teacher, config with { FeatureEnergyWeight = 0 }, fake0);
        Assert.True(diff > 1e-3 * size, $"gradient gap {diff:G3} of {size:G3}");
    }

    /// <summary>
    /// One generator-and-fake step of a trainer with a perturbed fake denoiser, then the step's draws replayed from its seed
    /// up to the DM term's gradient (z, labels, x = G(z), the DM noise): what comes after is the energy term's own draws.
    /// </summary>
    static (DmdTrainer Trainer, EdmPrecond Fake0, OneStepGenerator Generator0, Dictionary<string, double> Losses, Generator Rng,
            Tensor Grid, Tensor Z, Tensor Y, Tensor X, Tensor DmGradient) StepAndReplayDm(EdmPrecond teacher, Dmd.Data.PointSet real, DmdConfig config)
    {
        var (trainer, fake0, generator0) = DmdGanTests.PerturbedFake(teacher, config, real);
        var losses = trainer.TrainStep();
        var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var (z, y, x, sigmaDm, noiseDm) = DmdGanTests.FirstStepDraws(config, generator0, grid, rng);
        var xtDm = x.detach() + noiseDm;
        Tensor grad;
        using (no_grad()) grad = DmdLoss.DmGradient(x.detach(), teacher.Denoise(xtDm, sigmaDm, y), fake0.Denoise(xtDm, sigmaDm, y));
        return (trainer, fake0, generator0, losses, rng, grid, z, y, x, grad);
    }

    /// <summary>Given groups of sets, the estimator is the mean over the groups of each pair's value.</summary>
    [Fact]
    public void GroupedFeatureEnergyIsTheMeanOverTheGroups()
    {
        using var g = new Generator(4);
        var a = Rng.Normal(new long[] { 3, 4, 5 }, g);
        var b = Rng.Normal(new long[] { 3, 6, 5 }, g) * 2;
        double each = Enumerable.Range(0, 3).Average(i => DmdLoss.FeatureEnergy(a[i], b[i]).item<float>());
        Assert.Equal(each, DmdLoss.FeatureEnergy(a, b).item<float>(), 5);
        Assert.Throws<ArgumentException>(() => DmdLoss.FeatureEnergy(a, b[..2]));
        Assert.Throws<ArgumentException>(() => DmdLoss.FeatureEnergy(a, b[0]));
    }

    /// <summary>
    /// A class-matched batch has exactly the classes asked for, each sample a member of its class, several different ones
    /// per class over many draws (not always the first), the same for the same seed; unlabelled data and a class without
    /// samples refuse.
    /// </summary>
    [Fact]
    public void ClassMatchedBatchesHaveTheClassesAskedFor()
    {
        var points = DmdGanTests.RealPoints(64);
        var byClass = Enumerable.Range(0, 3).Select(c => points.Points.index_select(0, nonzero(points.ClassIndex!.eq(c)).squeeze(1))).ToArray();
        var wanted = tensor(new long[] { 2, 2, 0, 1, 1, 1, 0, 2 });
        using var g = new Generator(9);
        var seen = new HashSet<string>();
        for (int k = 0; k < 20; k++)
        {
            var (x, y) = points.BatchOfClasses(wanted, g);
            Assert.Equal(wanted, y!.argmax(1));
            for (int i = 0; i < 8; i++)
            {
                int c = (int)wanted[i].item<long>();
                Assert.Equal(0, (byClass[c] - x[i]).abs().sum(1).min().item<float>());
                seen.Add($"{c}:{x[i, 0].item<float>()}");
            }
        }
        Assert.True(seen.Count > 20, $"{seen.Count} different samples in 160 draws of 3 classes");
        using (var g1 = new Generator(5)) using (var g2 = new Generator(5))
            Assert.Equal(points.BatchOfClasses(wanted, g1).X, points.BatchOfClasses(wanted, g2).X);

        var images = new Dmd.Data.ImageDataset(randint(0, 256, new long[] { 6, 1, 2, 2 }, dtype: ScalarType.Byte), tensor(new long[] { 0, 1, 0, 1, 0, 1 }), 3);
        var (xi, yi) = images.BatchOfClasses(tensor(new long[] { 1, 0, 1 }), g);
        Assert.Equal(tensor(new long[] { 1, 0, 1 }), yi!.argmax(1));
        Assert.Throws<DmdInputException>(() => images.BatchOfClasses(tensor(new long[] { 2 }), g));
        Assert.Throws<DmdInputException>(() => images.WithoutLabels().BatchOfClasses(tensor(new long[] { 0 }), g));
        Assert.Throws<DmdInputException>(() => points.WithoutLabels().BatchOfClasses(tensor(new long[] { 0 }), g));
    }

    /// <summary>
    /// Grouped (feature-energy-group 4): the step's labels come in runs of 4 equal classes, the real batch has the same
    /// classes, and the generator's gradient is that of loss_dm + weight x the mean over groups of each group's term,
    /// written out by hand from the trainer's seed as in the ungrouped test; with feature-energy-unconditional the
    /// teacher's features of both batches are taken at its unconditional input (zero labels).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GroupedFeatureEnergyComparesEachGroupWithRealSamplesOfItsClass(bool unconditional)
    {
        var teacher = DmdGanTests.Teacher(TestUtil.TinyPointSpec);
        var real = DmdGanTests.RealPoints();
        var config = new DmdConfig
        {
            Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
            Seed = 12, Steps = 1, FeatureEnergyWeight = 0.8, FeatureEnergyGroup = 4, FeatureEnergyUnconditional = unconditional, GanMaxStep = 600,
        };
        var (trainer, _, generator0, losses, rng, grid, _, y, x, grad) = StepAndReplayDm(teacher, real, config);
        using var _t = trainer;
        using var _r = rng;
        var classes = y.argmax(1);
        Assert.True(classes.view(4, 4).eq(classes.view(4, 4)[.., ..1]).all().item<bool>());
        var (xr, yr) = real.BatchOfClasses(classes, rng);
        Assert.Equal(classes, yr!.argmax(1));
        var sigma = grid.index_select(0, Rng.Integers(0, config.GanMaxStep, 1, rng)).expand(config.BatchSize);
        var xrt = xr + sigma.unsqueeze(1) * Rng.NormalLike(xr, rng);
        var xt = x + sigma.unsqueeze(1) * Rng.NormalLike(x, rng);
        var fGen = teacher.Features(xt, sigma, unconditional ? zeros_like(y) : y).flatten(1);
        var fReal = teacher.Features(xrt, sigma, unconditional ? zeros_like(yr) : yr).flatten(1).detach();
        var energy = Enumerable.Range(0, 4).Select(i => DmdLoss.FeatureEnergy(fGen[(4 * i)..(4 * i + 4)], fReal[(4 * i)..(4 * i + 4)])).Aggregate((u, v) => u + v) / 4;
        ((x * grad).sum() / x.numel() + config.FeatureEnergyWeight * energy).backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(energy.item<float>(), losses["loss_energy"], 5);
    }

    /// <summary>
    /// A batch of its own (feature-energy-batch 8 beside a step batch of 16): after the DM term's draws the term draws 8 new
    /// z and labels (in runs of 4 equal classes when grouped), generates them with gradient, and compares them with 8 real
    /// samples; the generator's gradient is that of loss_dm on the step's batch + weight x the term on the new one.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(4)]
    public void ASeparateEnergyBatchIsDrawnAfreshAndGeneratedWithGradient(int group)
    {
        var teacher = DmdGanTests.Teacher(TestUtil.TinyPointSpec);
        var real = DmdGanTests.RealPoints();
        var config = new DmdConfig
        {
            Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
            Seed = 13, Steps = 1, FeatureEnergyWeight = 0.8, FeatureEnergyGroup = group, FeatureEnergyBatch = 8, GanMaxStep = 600,
        };
        var (trainer, fake0, generator0, losses, rng, grid, z, y, x, grad) = StepAndReplayDm(teacher, real, config);
        using var _ = trainer;
        using var __ = rng;
        const int n = 8;
        var zE = Rng.Normal(new long[] { n, 2 }, rng);
        Assert.False(zE.allclose(z[..n]));
        var yE = group > 0 ? Rng.OneHot(Rng.Integers(0, DmdGanTests.Classes, n / group, rng).repeat_interleave(group), DmdGanTests.Classes)
                           : Rng.OneHotLabels(DmdGanTests.Classes, n, rng)!;
        var xE = generator0.Generate(zE, yE);
        var (xr, yr) = group > 0 ? real.BatchOfClasses(yE.argmax(1), rng) : real.Batch(n, rng);
        var sigma = grid.index_select(0, Rng.Integers(0, config.GanMaxStep, 1, rng)).expand(n);
        var xrt = xr + sigma.unsqueeze(1) * Rng.NormalLike(xr, rng);
        var xt = xE + sigma.unsqueeze(1) * Rng.NormalLike(xE, rng);
        var fGen = teacher.Features(xt, sigma, yE).flatten(1);
        var fReal = teacher.Features(xrt, sigma, yr).flatten(1).detach();
        var energy = group > 0 ? DmdLoss.FeatureEnergy(fGen.view(n / group, group, -1), fReal.view(n / group, group, -1))
                               : DmdLoss.FeatureEnergy(fGen, fReal);
        ((x * grad).sum() / x.numel() + config.FeatureEnergyWeight * energy).backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(energy.item<float>(), losses["loss_energy"], 5);
    }

    /// <summary>A batch of its own refuses without the term, below 2, and (grouped) when not a multiple of the group.</summary>
    [Fact]
    public void ASeparateEnergyBatchNeedsTheTermAndWholeGroups()
    {
        foreach (var bad in new[]
        {
            new DmdConfig { FeatureEnergyWeight = 0, FeatureEnergyBatch = 64 },
            new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyBatch = 1 },
            new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyBatch = -4 },
            new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyBatch = 30, FeatureEnergyGroup = 4, BatchSize = 16 },
        })
            Assert.Contains("feature-energy-batch", Assert.Throws<DmdInputException>(() => bad.Validate()).Message);
        // the group divides the energy batch, not the step's
        new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyBatch = 64, FeatureEnergyGroup = 8, BatchSize = 12 }.Validate();
    }

    /// <summary>Refusals: a negative weight, and no real data.</summary>
    [Fact]
    public void TheFeatureEnergyTermNeedsRealDataAndANonNegativeWeight()
    {
        Assert.Throws<DmdInputException>(() => new DmdConfig { FeatureEnergyWeight = -1 }.Validate());
        var teacher = DmdGanTests.Teacher(TestUtil.TinyPointSpec);
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, TestUtil.TinyPointSpec,
            new DmdConfig { LambdaReg = 0, FeatureEnergyWeight = 0.1 }, pairs: null));
        Assert.Contains("feature-energy-weight", e.Message);
    }

    /// <summary>
    /// Grouping refuses a group of 1, a group without the term, a batch that is not a multiple of it, and a teacher without
    /// classes; unconditional features refuse without the term and without classes.
    /// </summary>
    [Fact]
    public void GroupingNeedsTheTermABatchOfWholeGroupsAndClasses()
    {
        foreach (var bad in new[]
        {
            new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyGroup = 1, BatchSize = 16 },
            new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyGroup = -2, BatchSize = 16 },
            new DmdConfig { FeatureEnergyWeight = 0, FeatureEnergyGroup = 4, BatchSize = 16 },
            new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyGroup = 3, BatchSize = 16 },
        })
            Assert.Contains("feature-energy-group", Assert.Throws<DmdInputException>(() => bad.Validate()).Message);
        Assert.Contains("feature-energy-unconditional", Assert.Throws<DmdInputException>(() => new DmdConfig { FeatureEnergyUnconditional = true }.Validate()).Message);
        new DmdConfig { FeatureEnergyWeight = 1, FeatureEnergyGroup = 4, BatchSize = 16 }.Validate();

        var spec = TestUtil.TinyPointSpec with { LabelDim = 0 };
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(DmdGanTests.Teacher(spec), spec,
            new DmdConfig { LambdaReg = 0, BatchSize = 16, FeatureEnergyWeight = 1, FeatureEnergyGroup = 4 }, pairs: null,
            realData: DmdGanTests.RealPoints().WithoutLabels()));
        Assert.Contains("unconditional", e.Message);
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(DmdGanTests.Teacher(spec), spec,
            new DmdConfig { LambdaReg = 0, BatchSize = 16, FeatureEnergyWeight = 1, FeatureEnergyUnconditional = true }, pairs: null,
            realData: DmdGanTests.RealPoints().WithoutLabels()));
        Assert.Contains("feature-energy-unconditional", e.Message);
    }

    /// <summary>
    /// The U-Nets' features at every level: for each architecture, the encoder's levels from the input's resolution down,
    /// the last of them the bottleneck itself, then the decoder's back up; shapes as <see cref="EdmUNet.LevelFeatureShapes"/>
    /// says; and a <see cref="MultiLevelGanClassifier"/> on them gives one logit per sample, the sum of its heads'.
    /// </summary>
    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("adm")]
    public void LevelFeaturesGoDownTheEncoderToTheBottleneckAndUpTheDecoder(string kind)
    {
        var spec = new UNetOptions { Arch = kind, ModelChannels = 8, NumBlocks = 1, Dropout = 0 }.For(channels: 1, resolution: 16, labelDim: 3);
        var net = DmdGanTests.Teacher(spec);
        var unet = (EdmUNet)net.Backbone;
        using var g = new Generator(2);
        var x = Rng.Normal(new long[] { 4, 1, 16, 16 }, g);
        var sigma = tensor(new float[] { 0.1f, 1f, 3f, 20f });
        var y = Rng.OneHotLabels(3, 4, g)!;
        var levels = net.LevelFeatures(x, sigma, y);
        var shapes = unet.LevelFeatureShapes();
        Assert.Equal(shapes.Length, levels.Length);
        for (int i = 0; i < levels.Length; i++) Assert.Equal(new long[] { 4 }.Concat(shapes[i]), levels[i].shape);
        var sides = shapes.Select(s => s[1]).ToArray();
        int bottom = sides.Length / 2 - 1;
        Assert.Equal(16, sides[0]);
        Assert.Equal(16, sides[^1]);
        Assert.Equal(unet.BottleneckResolution, sides[bottom]);
        Assert.True(sides[..(bottom + 1)].Zip(sides[1..(bottom + 1)]).All(p => p.First > p.Second), string.Join(",", sides));
        Assert.Equal(0, (levels[bottom] - net.Features(x, sigma, y)).abs().max().item<float>(), 6);

        var head = new MultiLevelGanClassifier(shapes);
        var logits = head.forward(levels);
        Assert.Equal(new long[] { 4 }, logits.shape);
        var sum = head.HeadLogits(levels).Aggregate((p, q) => p + q);
        Assert.Equal(0, (logits - sum).abs().max().item<float>(), 5);
    }
}
