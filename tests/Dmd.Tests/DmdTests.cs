using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

public class DmdTests
{
    static (Tensor X, Tensor Sigma) Batch(long seed)
    {
        using var g = new Generator((ulong)seed);
        var x = randn(new long[] { 64, 2 }, generator: g) * 0.5;
        var sigma = KarrasSchedule.AscendingGrid().index_select(0, randint(20, 981, new long[] { 64 }, generator: g));
        return (x, sigma);
    }

    [Fact]
    public void DmGradientVanishesWhenFakeEqualsReal()
    {
        var real = new GaussianDenoiser(tensor(new double[] { 1.0, 0.5 }), 0.5);
        var (x0, sigma) = Batch(1);
        var x = x0.clone().requires_grad_(true);
        using var g = new Generator(7);
        var loss = DmdLoss.DistributionMatching(x, real, real, sigma, null, g);
        loss.backward();
        Assert.Equal(0f, x.grad!.abs().max().item<float>());
        Assert.Equal(0f, loss.item<float>());
    }

    [Fact]
    public void DmGradientPointsFromFakeTowardReal()
    {
        // generated samples follow the fake distribution N(0, s^2); the real one is shifted by m.
        var m = tensor(new double[] { 1.5, -0.5 });
        var real = new GaussianDenoiser(m, 0.5);
        var fake = new GaussianDenoiser(zeros(2, dtype: ScalarType.Float64), 0.5);
        var (x0, sigma) = Batch(2);
        var x = x0.clone().requires_grad_(true);
        using var g = new Generator(8);
        DmdLoss.DistributionMatching(x, real, fake, sigma, null, g).backward();
        // a gradient-descent step moves every sample along +m, toward the real distribution
        var step = -x.grad!;
        var along = (step * m.to(ScalarType.Float32)).sum(1);
        Assert.True(along.min().item<float>() > 0, $"every sample moves toward the real distribution (min {along.min().item<float>()})");
        // and the component orthogonal to the shift is zero (the two denoisers differ only by the shift)
        var ortho = step[.., 0] * 0.5f + step[.., 1] * 1.5f; // (0.5, 1.5) is orthogonal to (1.5, -0.5)
        Assert.True(ortho.abs().max().item<float>() < 1e-4 * step.abs().max().item<float>(), $"orthogonal part {ortho.abs().max().item<float>()}");
    }

    [Fact]
    public void DmLossGradientIsWeightedDifferenceOverNumel()
    {
        // loss_dm's gradient w.r.t. x must equal (p_fake - p_real) / k / numel with k = mean |x - p_real| (Eq. 7-8)
        var real = new GaussianDenoiser(tensor(new double[] { 1.0, 2.0 }), 0.3);
        var fake = new GaussianDenoiser(tensor(new double[] { -0.5, 0.0 }), 0.8);
        var (x0, sigma) = Batch(3);
        var x = x0.clone().requires_grad_(true);
        using (var g = new Generator(9)) DmdLoss.DistributionMatching(x, real, fake, sigma, null, g).backward();

        using var g2 = new Generator(9);
        var n = randn(x0.shape, generator: g2);
        var xt = x0 + sigma.unsqueeze(1) * n;
        var pReal = real.Denoise(xt, sigma).to(ScalarType.Float32);
        var pFake = fake.Denoise(xt, sigma).to(ScalarType.Float32);
        var k = (x0 - pReal).abs().mean(new long[] { 1 }, keepdim: true);
        var expected = (pFake - pReal) / k / x0.numel();
        Assert.True(allclose(x.grad!, expected, 1e-5, 1e-8));
        Assert.True(allclose(DmdLoss.Weighting(x0, pReal), k));
    }

    [Fact]
    public void DmWeightingIsPerSampleMeanAbsoluteResidualOverAllNonBatchDims()
    {
        var x = arange(24, dtype: ScalarType.Float32).reshape(2, 3, 4);
        var p = zeros_like(x);
        var k = DmdLoss.Weighting(x, p);
        Assert.Equal(new long[] { 2, 1, 1 }, k.shape);
        Assert.Equal(5.5f, k[0, 0, 0].item<float>());   // mean of 0..11
        Assert.Equal(17.5f, k[1, 0, 0].item<float>());  // mean of 12..23
        // a sample with x == p_real gives 0/0: nan_to_num turns it into a finite gradient
        var grad = DmdLoss.DmGradient(zeros(1, 2), zeros(1, 2), ones(1, 2));
        Assert.True(grad.isfinite().all().item<bool>());
    }

    [Fact]
    public void GeneratorStartsAsTheTeachersOneStepPrediction()
    {
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 0, SigmaData = 0.7, Width = 32, Depth = 2 };
        var teacher = spec.Build();
        using var trainer = new DmdTrainer(teacher, spec, new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 8 }, null);
        using var g = new Generator(1);
        var z = randn(new long[] { 16, 2 }, generator: g);
        using var _ = no_grad();
        var expected = teacher.Denoise(z * 80, full(16, 80f));
        Assert.True(TestUtil.Same(trainer.Generator.Generate(z), expected));
    }

    static (EdmPrecond Teacher, NetworkSpec Spec, RegressionPairs Pairs) TinySetup(int labels = 0, double guidance = 1.0)
    {
        torch.manual_seed(5);
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = labels, SigmaData = 0.8, Width = 32, Depth = 2 };
        var teacher = spec.Build();
        var pairs = RegressionPairs.Generate(teacher, spec.SampleShape, 64, steps: 4, guidance: guidance, seed: 2);
        return (teacher, spec, pairs);
    }

    [Fact]
    public void ResumingContinuesTheSameRunBitForBit()
    {
        var (teacher, spec, pairs) = TinySetup();
        var cfg = new DmdConfig { Steps = 10, BatchSize = 16, RegressionBatchSize = 16, WarmupSteps = 4, CheckpointEvery = 100, LearningRate = 1e-3 };
        var dirA = TestUtil.TempDir(); var dirB = TestUtil.TempDir();
        var tPath = Path.Combine(dirA, "t.safetensors");
        DenoiserFile.Save(teacher, spec, tPath);

        using (var a = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, cfg, pairs)) a.Run(dirA, tPath, null);
        using (var b = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, cfg, pairs)) { b.Run(dirB, tPath, null, new RunOptions { StopAfter = 5 }); Assert.Equal(5, b.Step); }
        Assert.Equal(5, TestUtil.CheckpointStep(dirB));
        using (var c = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, cfg, pairs)) c.Run(dirB, tPath, null);

        var ga = Checkpoint.LoadTensors(Path.Combine(dirA, "generator.safetensors"));
        var gb = Checkpoint.LoadTensors(Path.Combine(dirB, "generator.safetensors"));
        var t0 = Checkpoint.LoadTensors(tPath);
        Assert.Equal(ga.Keys.OrderBy(k => k), gb.Keys.OrderBy(k => k));
        foreach (var k in ga.Keys) Assert.True(TestUtil.Same(ga[k], gb[k]), $"{k} differs after resume");
        // and training did change the generator
        Assert.Contains(ga.Keys, k => !TestUtil.Same(ga[k], t0[k]));
        // the loss log has each step once
        var steps = File.ReadAllLines(Path.Combine(dirB, "losses.csv")).Skip(1).Select(l => int.Parse(l.Split(',')[0])).ToList();
        Assert.Equal(steps.Distinct().Count(), steps.Count);
    }

    [Fact]
    public void ConditionalDistillationWithGuidanceRuns()
    {
        var (teacher, spec, pairs) = TinySetup(labels: 3, guidance: 2.0);
        Assert.NotNull(pairs.Y);
        using var trainer = new DmdTrainer(teacher, spec, new DmdConfig { BatchSize = 16, RegressionBatchSize = 16, GuidanceReal = 2.0 }, pairs);
        var before = trainer.Generator.Net.parameters().Select(p => p.clone()).ToList();
        Dictionary<string, double> l = new();
        for (int i = 0; i < 3; i++) l = trainer.TrainStep();
        Assert.All(new[] { "loss_dm", "loss_reg", "loss_fake" }, k => Assert.True(double.IsFinite(l[k]), k));
        Assert.Contains(trainer.Generator.Net.parameters().Zip(before), pq => !TestUtil.Same(pq.First, pq.Second));
    }

    [Fact]
    public void AblationModesUseOnlyTheirLosses()
    {
        var (teacher, spec, pairs) = TinySetup();
        using (var reg = new DmdTrainer(teacher, spec, new DmdConfig { Mode = DmdMode.RegressionOnly, BatchSize = 8, RegressionBatchSize = 8 }, pairs))
        {
            var l = reg.TrainStep();
            Assert.True(l.ContainsKey("loss_reg")); Assert.False(l.ContainsKey("loss_dm")); Assert.False(l.ContainsKey("loss_fake"));
        }
        using (var dm = new DmdTrainer(spec.Build(), spec, new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 8 }, null))
        {
            var l = dm.TrainStep();
            Assert.False(l.ContainsKey("loss_reg")); Assert.True(l.ContainsKey("loss_dm")); Assert.True(l.ContainsKey("loss_fake"));
        }
        Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, spec, new DmdConfig { Mode = DmdMode.Full }, null));
    }
}
