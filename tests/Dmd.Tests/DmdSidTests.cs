using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// SiD's generator loss as the DM term (<c>--dm-loss Sid</c>, docs/design.md section 4): the loss and its gradient against
/// their formulas, the trainer's step replayed from its seed (the gradient reaches the generator through both denoisers,
/// the fake denoiser's weights only through their own loss), the refusals and the command line.
/// </summary>
public class DmdSidTests(ITestOutputHelper log)
{
    static readonly MlpSpec PointSpec = TestUtil.TinyPointSpec;

    /// <summary>D(x) = a x, whatever sigma and labels: a denoiser whose gradient with respect to its input is known.</summary>
    sealed class Scaling(double a) : IDenoiser
    {
        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null) => x * a;
        public int LabelDim => 0;
    }

    /// <summary>A denoiser that answers a fixed prediction: no gradient reaches its input.</summary>
    sealed class Fixed(Tensor prediction) : IDenoiser
    {
        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null) => prediction;
        public int LabelDim => 0;
    }

    /// <summary>
    /// With D_real(x) = a x and D_fake(x) = b x the loss is mean[d ((a x_t - x) - alpha d) / k], d = (a - b) x_t, x_t = x + sigma n
    /// (n the generator's next normal draw), k = mean over a sample of |x - a x_t|; its gradient per value is
    /// [(a - b)((a x_t - x) - alpha d) + d((a - 1) - alpha (a - b))] / (k numel): the second half comes through the two
    /// denoisers, which a loss that detached them would miss. With fixed predictions (no path through the denoisers) the
    /// gradient is DMD's, grad / numel, whatever alpha.
    /// </summary>
    [Fact]
    public void TheLossAndItsGradientAreSidsFormula()
    {
        const double a = 0.7, b = 0.4, alpha = 1.2;
        using var g0 = new Generator(5);
        var x0 = Rng.Normal(new long[] { 4, 3 }, g0);
        var sigma = tensor(new float[] { 0.3f, 1f, 2.5f, 7f });

        var x = x0.clone().requires_grad_(true);
        using (var g = new Generator(9))
        {
            var loss = DmdLoss.ScoreIdentity(x, new Scaling(a), new Scaling(b), sigma, null, g, alpha);
            loss.backward();

            using var gh = new Generator(9);
            var xt = x0 + sigma.unsqueeze(1) * Rng.NormalLike(x0, gh);
            var k = (x0 - a * xt).abs().mean(new long[] { 1 }, keepdim: true);
            var d = (a - b) * xt;
            var inner = (a * xt - x0) - alpha * d;
            Assert.Equal((d * inner / k).mean().item<float>(), loss.item<float>(), 5);
            var expected = ((a - b) * inner + d * ((a - 1) - alpha * (a - b))) / k / x0.numel();
            var through = d * ((a - 1) - alpha * (a - b)) / k / x0.numel();
            double err = (x.grad! - expected).abs().max().item<float>(), size = through.abs().max().item<float>();
            log.WriteLine($"gradient error {err:G3}; the part through the denoisers up to {size:G3}");
            Assert.True(err < 1e-6 + 1e-4 * size, $"the gradient differs from SiD's by {err:G3}");
            Assert.True(size > 1e-3, "the part of the gradient through the denoisers should not vanish in this check");
        }

        using var gf = new Generator(2);
        var pReal = Rng.Normal(new long[] { 4, 3 }, gf);
        var pFake = Rng.Normal(new long[] { 4, 3 }, gf);
        foreach (var al in new[] { 0.0, 1.2 })
        {
            var xf = x0.clone().requires_grad_(true);
            DmdLoss.ScoreIdentity(xf, new Fixed(pReal), new Fixed(pFake), sigma, null, new Generator(1), al).backward();
            var dmd = DmdLoss.DmGradient(x0, pReal, pFake) / x0.numel();
            Assert.True((xf.grad! - dmd).abs().max().item<float>() < 1e-6, $"alpha {al}: with fixed predictions SiD's gradient is DMD's");
        }
    }

    static DmdConfig SidConfig => new()
    {
        Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GuidanceReal = 1.5, GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1,
        Seed = 11, Steps = 1, DmLoss = DmLoss.Sid, SidAlpha = 1.2, FakeLrScale = 1e-9,
    };

    /// <summary>
    /// One step with SiD's loss against the same step by hand from the trainer's seed (z, labels, DM noise levels and noise,
    /// then the fake update's noise levels and noise): the generator's gradient is that of SiD's loss with the guided teacher
    /// (CFG 1.5) and the fake denoiser at G(z) + sigma n, with gradient through both; DMD's loss gives another one. The fake
    /// denoiser's gradient is its denoising loss's alone, the teacher gets none, and the generator's step moves neither.
    /// </summary>
    [Fact]
    public void AStepTakesSidsGradientThroughBothDenoisersAndLeavesTheirWeightsAlone()
    {
        var teacher = DmdGanTests.Teacher(PointSpec);
        var config = SidConfig;
        var prepared = DmdGanTests.PerturbedFake(teacher, config);
        using var trainer = prepared.Trainer;
        var (fake0, generator0) = (prepared.Fake0, prepared.Generator0);

        var losses = trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var (_, y, x, sigmaDm, noiseDm) = DmdGanTests.FirstStepDraws(config, generator0, grid, rng);
        var xt = x + noiseDm; // with gradient, as SiD's loss has it
        foreach (var p in fake0.parameters()) p.requires_grad = false;
        var uncond = teacher.Denoise(xt, sigmaDm, zeros_like(y));
        var pReal = uncond + 1.5 * (teacher.Denoise(xt, sigmaDm, y) - uncond);
        var pFake = fake0.Denoise(xt, sigmaDm, y);
        foreach (var p in fake0.parameters()) p.requires_grad = true;
        Tensor k;
        using (no_grad()) k = (x - pReal).abs().mean(new long[] { 1 }, keepdim: true);
        var d = pReal - pFake;
        var loss = (d * ((pReal - x) - 1.2 * d) / k).mean();
        loss.backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);
        Assert.Equal(loss.item<float>(), losses["loss_dm"], 5);
        Assert.All(fake0.parameters(), p => Assert.True(p.grad is null || p.grad.abs().max().item<float>() == 0, "the hand loss left a gradient on the fake denoiser"));
        Assert.All(teacher.parameters(), p => Assert.Null(p.grad));

        var sigmaF = grid.index_select(0, Rng.Integers(0, config.GridLevels, config.BatchSize, rng));
        var lossFake = EdmLoss.AtSigma(fake0, x.detach(), sigmaF, y, PointSpec.SigmaData, rng);
        lossFake.backward();
        TestUtil.AssertSameGradients(fake0, trainer.Fake, "fake denoiser", requireGradient: true);
        Assert.Equal(lossFake.item<float>(), losses["loss_fake"], 5);
        Assert.All(trainer.Fake.parameters(), p => Assert.True(p.requires_grad));

        double movedFake = DmdGanTests.MaxAbsDiff(trainer.Fake, fake0);
        Assert.True(movedFake < 1e-9, $"the fake denoiser moved by {movedFake:G3}: the generator's step must not update it");

        // DMD's loss on the same draws gives the generator another gradient
        var (diff, size) = DmdGanTests.GeneratorGradientGap(trainer, teacher, config with { DmLoss = DmLoss.Dmd }, fake0);
        log.WriteLine($"SiD against DMD: gradients differ by {diff:G3} of {size:G3}");
        Assert.True(diff > 1e-2 * size, $"SiD's and DMD's gradients differ by only {diff:G3} of {size:G3}");
    }

    /// <summary>
    /// SiD's loss does not take f-distill's weights (they weight DMD's gradient), its alpha must be a number, and an alpha
    /// other than the default without SiD's loss is refused rather than ignored.
    /// </summary>
    [Fact]
    public void SidRefusesAnFDivergenceAndAnAlphaItWouldNotUse()
    {
        var e = Assert.Throws<DmdInputException>(() => (SidConfig with { DmDivergence = DmDivergence.JensenShannon }).Validate());
        Assert.Contains("dm-loss Sid", e.Message);
        Assert.Contains("sid-alpha", Assert.Throws<DmdInputException>(() => (SidConfig with { SidAlpha = double.NaN }).Validate()).Message);
        Assert.Throws<DmdInputException>(() => (SidConfig with { DmLoss = (DmLoss)5 }).Validate());
        var unused = Assert.Throws<DmdInputException>(() => (SidConfig with { DmLoss = DmLoss.Dmd, SidAlpha = 1 }).Validate());
        Assert.Contains("--dm-loss Sid", unused.Message);
        (SidConfig with { DmLoss = DmLoss.Dmd }).Validate();
        SidConfig.Validate();
    }

    /// <summary>`dmd distill --dm-loss Sid --sid-alpha 1` runs on a tiny point teacher and records both settings in its config.json.</summary>
    [Fact]
    public void DistillTakesSidFromTheCommandLine()
    {
        var work = TestUtil.TempDir();
        var teacher = Path.Combine(work, "teacher");
        var (code, output) = CliTests.Run("train-teacher", "--data", "ring8", "--train-points", "500", "--width", "16", "--depth", "1",
                                          "--steps", "3", "--batch-size", "16", "--out", teacher);
        Assert.True(code == 0, output);
        var run = Path.Combine(work, "sid");
        (code, output) = CliTests.Run("distill", "--teacher", teacher, "--lambda-reg", "0", "--dm-loss", "Sid", "--sid-alpha", "1",
                                      "--steps", "3", "--batch-size", "16", "--log-every", "1", "--out", run);
        Assert.True(code == 0, output);
        var info = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(run, "config.json")))!;
        Assert.Equal("Sid", info["Config"]!["DmLoss"]!.ToString());
        Assert.Equal(1.0, info["Config"]!["SidAlpha"]!.GetValue<double>());
        Assert.Equal(4, File.ReadAllLines(Path.Combine(run, "losses.csv")).Length);
    }
}
