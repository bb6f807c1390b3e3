using Dmd.Diffusion;
using Dmd.Distillation;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Several noise draws per generated sample in the DM term (<see cref="DmdConfig.DmNoiseDraws"/>): each sample's gradient is
/// the mean of its draws' DM gradients, the draws taken in order after the generator's batch.
/// </summary>
public class DmNoiseDrawsTests
{
    /// <summary>
    /// The generator's step with D = 3 draws, written out by hand from the trainer's seed (z, labels, then 3B noise levels
    /// and noises, copy d of sample i at row dB + i): its gradient is that of sum_i x_i . mean_d grad_{d,i} / numel(x), i.e.
    /// every sample gets the mean of its three DM gradients, at the scale of one draw's; one draw gives another gradient.
    /// </summary>
    [Fact]
    public void EachSampleGetsTheMeanOfItsDrawsDmGradients()
    {
        const int draws = 3;
        var teacher = DmdGanTests.Teacher(TestUtil.TinyPointSpec);
        var config = new DmdConfig
        {
            Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 8, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
            Seed = 17, Steps = 1, DmNoiseDraws = draws,
        };
        var (trainer, fake0, generator0) = DmdGanTests.PerturbedFake(teacher, config);
        using var _ = trainer;
        var losses = trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        int b = config.BatchSize;
        var z = Rng.Normal(new long[] { b, 2 }, rng);
        var y = Rng.OneHotLabels(DmdGanTests.Classes, b, rng)!;
        var x = generator0.Generate(z, y);
        var sigma = grid.index_select(0, Rng.Integers(config.MinStep, config.MaxStep + 1, draws * b, rng));
        var xs = cat(Enumerable.Repeat(x.detach(), draws).ToArray());
        var ys = cat(Enumerable.Repeat(y, draws).ToArray());
        var xt = xs + sigma.unsqueeze(1) * Rng.NormalLike(xs, rng);
        Tensor each;
        using (no_grad()) each = DmdLoss.DmGradient(xs, teacher.Denoise(xt, sigma, ys), fake0.Denoise(xt, sigma, ys));
        var mean = each.view(draws, b, 2).mean(new long[] { 0 });
        Assert.True((each.view(draws, b, 2)[0] - mean).abs().max().item<float>() > 1e-3 * mean.abs().max().item<float>(),
                    "the draws should give different gradients");
        ((x * mean).sum() / x.numel()).backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(0.5 * each.square().mean().item<float>(), losses["loss_dm"], 5);

        // one draw a sample is another step
        var (diff, size) = DmdGanTests.GeneratorGradientGap(trainer, teacher, config with { DmNoiseDraws = 1 }, fake0);
        Assert.True(diff > 1e-3 * size, $"gradient gap {diff:G3} of {size:G3}");
    }

    [Fact]
    public void BadNoiseDrawsAreRefusedNamingTheOption()
    {
        foreach (var bad in new[] { new DmdConfig { DmNoiseDraws = 0 }, new DmdConfig { DmNoiseDraws = 4, Mode = DmdMode.RegressionOnly } })
            Assert.Contains("dm-noise-draws", Assert.Throws<DmdInputException>(() => bad.Validate()).Message);
        new DmdConfig { DmNoiseDraws = 4 }.Validate();
    }
}
