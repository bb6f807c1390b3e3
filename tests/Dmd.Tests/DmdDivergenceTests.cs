using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// f-distill's divergences for the DM term (Xu, Nie and Vahdat 2025): the weights h(r) from the GAN head's logits, and a
/// trainer step replayed by hand from its seed, in which each sample's DM gradient is scaled by its weight and the head
/// and the fake denoiser take nothing from the generator's loss.
/// </summary>
public class DmdDivergenceTests(ITestOutputHelper log)
{
    const int Classes = 3;
    static readonly MlpSpec Spec = TestUtil.TinyPointSpec;

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

    static EdmPrecond Teacher()
    {
        torch.manual_seed(21);
        var net = Spec.Build();
        TestUtil.Perturb(net, 22, 0.05);
        net.eval();
        TrainingUtils.Freeze(net);
        return net;
    }

    static PointSet RealPoints(int n = 64)
    {
        using var g = new Generator(7);
        var c = Rng.Integers(0, Classes, n, g);
        var centres = tensor(new float[] { 1, 0, -0.5f, 0.8f, -0.5f, -0.8f }, new long[] { 3, 2 });
        return new PointSet(centres.index_select(0, c) + 0.1f * randn(new long[] { n, 2 }, generator: g), c, Classes);
    }

    static T Copy<T>(T net, T into) where T : nn.Module
    {
        TrainingUtils.CopyWeights(net, into);
        return into;
    }

    static double MaxAbsDiff(nn.Module a, nn.Module b)
    {
        var sb = b.state_dict();
        return a.state_dict().Max(kv => (kv.Value - sb[kv.Key]).abs().max().item<float>());
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
        var teacher = Teacher();
        var real = RealPoints();
        var config = new DmdConfig
        {
            Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GuidanceReal = 1.5, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
            Seed = 11, Steps = 1, GanWeight = 0, GanFakeWeight = 0.7, GanMaxStep = 600, DmDivergence = divergence, FakeLrScale = 1e-9,
        };
        using var trainer = new DmdTrainer(teacher, Spec, config, pairs: null, realData: real);
        Assert.NotNull(trainer.GanHead);
        TestUtil.Perturb(trainer.Fake, 4, 0.02);
        TestUtil.Perturb(trainer.GanHead!, 5, 0.5); // logits that differ between samples, so the weights do
        var fake0 = Copy(trainer.Fake, Spec.Build());
        var head0 = Copy(trainer.GanHead!, new GanClassifier(fake0.FeatureShape!));
        var generator0 = new OneStepGenerator(Copy(trainer.Generator.Net, Spec.Build()), config.SigmaMax);

        var losses = trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var z = Rng.Normal(new long[] { config.BatchSize, 2 }, rng);
        var y = Rng.OneHotLabels(Classes, config.BatchSize, rng)!;
        var x = generator0.Generate(z, y);
        var sigmaDm = grid.index_select(0, Rng.Integers(config.MinStep, config.MaxStep + 1, config.BatchSize, rng));
        var xtDm = x.detach() + sigmaDm.unsqueeze(1) * Rng.NormalLike(x, rng);
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
        var unweighted = new OneStepGenerator(Copy(generator0.Net, Spec.Build()), config.SigmaMax);
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
        var teacher = Teacher();
        var config = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 4, DmDivergence = DmDivergence.JensenShannon };
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, Spec, config, pairs: null));
        Assert.Contains("dm-divergence JensenShannon", e.Message);
        Assert.Contains("--gan-data", e.Message);
        var noDm = Assert.Throws<DmdInputException>(() => (config with { Mode = DmdMode.RegressionOnly }).Validate());
        Assert.Contains("RegressionOnly", noDm.Message);
        Assert.Throws<DmdInputException>(() => (config with { DmDivergence = (DmDivergence)7 }).Validate());
        using var plain = new DmdTrainer(teacher, Spec, config with { DmDivergence = DmDivergence.ReverseKl }, pairs: null, realData: RealPoints());
        Assert.Null(plain.GanHead);
    }
}
