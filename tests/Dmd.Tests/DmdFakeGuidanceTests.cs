using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Guidance in the fake score (<c>--guidance-fake</c>, SiD-LSG's kappa_2 and few-step SiD's Anti-CFG) and condition dropout
/// in the fake denoiser's training (<c>--fake-label-dropout</c>): the trainer's step replayed from its seed, the fixed point
/// that equal guidance of both scores has at the start, the dropout itself, the refusals and the command line.
/// </summary>
public class DmdFakeGuidanceTests(ITestOutputHelper log)
{
    static readonly MlpSpec PointSpec = TestUtil.TinyPointSpec;

    static DmdConfig GuidedConfig => new()
    {
        Mode = DmdMode.Full, LambdaReg = 0, BatchSize = 16, GuidanceReal = 1.5, GuidanceFake = 1.3, FakeLabelDropout = 0.5,
        GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1, Seed = 11, Steps = 1, FakeLrScale = 1e-9,
    };

    /// <summary>
    /// One step against the same step by hand from the trainer's seed (z, labels, DM noise levels and noise; then the fake
    /// update's noise levels, its dropout draw and noise): the generator's gradient is DMD's with the teacher guided at 1.5
    /// and the fake denoiser guided at 1.3 against its own unconditional output (zero label rows); the fake denoiser's is its
    /// denoising loss's with the drawn samples' labels replaced by zero rows. Without guidance-fake the generator's gradient differs.
    /// </summary>
    [Fact]
    public void AStepReadsTheGuidedFakeScoreAndTrainsOnDroppedLabels()
    {
        var teacher = DmdGanTests.Teacher(PointSpec);
        var config = GuidedConfig;
        var prepared = DmdGanTests.PerturbedFake(teacher, config); // perturbed in both branches
        using var trainer = prepared.Trainer;
        var (fake0, generator0) = (prepared.Fake0, prepared.Generator0);

        var losses = trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var (_, y, x, sigmaDm, noiseDm) = DmdGanTests.FirstStepDraws(config, generator0, grid, rng);
        Tensor grad;
        using (no_grad())
        {
            var xt = x.detach() + noiseDm;
            var uncond = teacher.Denoise(xt, sigmaDm, zeros_like(y));
            var pReal = uncond + 1.5 * (teacher.Denoise(xt, sigmaDm, y) - uncond);
            var fakeUncond = fake0.Denoise(xt, sigmaDm, zeros_like(y));
            var pFake = fakeUncond + 1.3 * (fake0.Denoise(xt, sigmaDm, y) - fakeUncond);
            grad = DmdLoss.DmGradient(x.detach(), pReal, pFake);
        }
        ((x * grad).sum() / x.numel()).backward();
        TestUtil.AssertSameGradients(generator0.Net, trainer.Generator.Net, "generator", requireGradient: true);

        var sigmaF = grid.index_select(0, Rng.Integers(0, config.GridLevels, config.BatchSize, rng));
        var dropped = Rng.Uniform(new long[] { config.BatchSize }, rng).lt(0.5);
        long nDropped = dropped.sum().item<long>();
        log.WriteLine($"{nDropped} of {config.BatchSize} labels dropped");
        Assert.InRange(nDropped, 1, config.BatchSize - 1); // the replay covers both kinds of sample
        var yF = where(dropped.unsqueeze(1), zeros_like(y), y);
        var lossFake = EdmLoss.AtSigma(fake0, x.detach(), sigmaF, yF, PointSpec.SigmaData, rng);
        lossFake.backward();
        TestUtil.AssertSameGradients(fake0, trainer.Fake, "fake denoiser", requireGradient: true);
        Assert.Equal(lossFake.item<float>(), losses["loss_fake"], 5);

        // the plain fake score (guidance-fake 1) on the same draws gives the generator another gradient
        var (diff, size) = DmdGanTests.GeneratorGradientGap(trainer, teacher, config with { GuidanceFake = 1 }, fake0);
        log.WriteLine($"guided against plain fake score: gradients differ by {diff:G3} of {size:G3}");
        Assert.True(diff > 1e-2 * size, $"guidance-fake changed the generator's gradient by only {diff:G3} of {size:G3}");
    }

    /// <summary>
    /// At the start the fake denoiser is the teacher, so with the same guidance in both scores (inside a guidance interval
    /// too) the DM term vanishes: the fake score is guided exactly as the real one, with its own unconditional branch. With
    /// guidance in the real score alone it does not vanish, for DMD's loss and SiD's.
    /// </summary>
    [Theory]
    [InlineData(DmLoss.Dmd, null)]
    [InlineData(DmLoss.Dmd, "0.5,5")]
    [InlineData(DmLoss.Sid, null)]
    public void EqualGuidanceOfBothScoresCancelsAtTheStart(DmLoss dmLoss, string? interval)
    {
        var teacher = DmdGanTests.Teacher(PointSpec);
        var config = GuidedConfig with { GuidanceReal = 2, GuidanceFake = 2, GuidanceRealInterval = interval, DmLoss = dmLoss };
        using var same = new DmdTrainer(teacher, PointSpec, config, pairs: null);
        double dm = same.TrainStep()["loss_dm"];
        using var realOnly = new DmdTrainer(teacher, PointSpec, config with { GuidanceFake = 1 }, pairs: null);
        double dmRealOnly = realOnly.TrainStep()["loss_dm"];
        log.WriteLine($"{dmLoss}, interval {interval ?? "none"}: loss_dm {dm:G3} with both guided, {dmRealOnly:G3} with the real score alone");
        Assert.True(Math.Abs(dm) < 1e-7, $"loss_dm {dm:G3}: equal guidance of equal scores must cancel");
        Assert.True(Math.Abs(dmRealOnly) > 1e-5, $"loss_dm {dmRealOnly:G3}: guidance of the real score alone must not cancel");
    }

    /// <summary>
    /// Dropout replaces whole conditions by the unconditional one and leaves the others as they were: zero label rows, or
    /// the unconditional prompt context; about p of them over many draws; none at p 0.
    /// </summary>
    [Fact]
    public void DroppedConditionsAreTheUnconditionalOnes()
    {
        using var g = new Generator(3);
        var classes = Conditions.Classes(10);
        var y = classes.Draw(4000, g)!;
        var d = classes.Dropped(y, 0.25, g);
        var zero = d.abs().sum(1).eq(0);
        var kept = zero.logical_not();
        double share = zero.to_type(ScalarType.Float64).mean().item<double>();
        log.WriteLine($"dropped share {share:F4} at p 0.25");
        Assert.InRange(share, 0.2, 0.3); // binomial(4000, 0.25): sd 0.007
        Assert.True((d - y).abs().sum(1).masked_select(kept).eq(0).all().item<bool>(), "the kept labels changed");
        Assert.True((classes.Dropped(y, 0, g) - y).abs().max().item<float>() == 0, "p 0 dropped a label");

        var contexts = Rng.Normal(new long[] { 3, 5, 4 }, g);
        var unconditional = Rng.Normal(new long[] { 1, 5, 4 }, g);
        var prompts = new PromptConditions(new[] { "a", "b", "c" }, contexts, unconditional);
        var c = prompts.Draw(400, g)!;
        var dc = prompts.Dropped(c, 0.5, g);
        var isUncond = (dc - unconditional).abs().amax(new long[] { 1, 2 }).eq(0);
        var same = (dc - c).abs().amax(new long[] { 1, 2 }).eq(0);
        Assert.True(isUncond.logical_or(same).all().item<bool>(), "a dropped prompt context must be the unconditional one, a kept one itself");
        Assert.InRange(isUncond.to_type(ScalarType.Float64).mean().item<double>(), 0.35, 0.65);
    }

    /// <summary>
    /// guidance-fake needs condition dropout (else its unconditional branch never sees the generator's samples), and the
    /// dropout needs a fake denoiser to train and a condition to drop; each refusal names the option.
    /// </summary>
    [Fact]
    public void RefusesFakeGuidanceItCannotTrainFor()
    {
        var e = Assert.Throws<DmdInputException>(() => (GuidedConfig with { FakeLabelDropout = 0 }).Validate());
        Assert.Contains("--fake-label-dropout", e.Message);
        Assert.Contains("guidance-fake", Assert.Throws<DmdInputException>(() => (GuidedConfig with { GuidanceFake = double.NaN }).Validate()).Message);
        Assert.Contains("fake-label-dropout", Assert.Throws<DmdInputException>(() => (GuidedConfig with { FakeLabelDropout = 1 }).Validate()).Message);
        Assert.Contains("fake-label-dropout", Assert.Throws<DmdInputException>(() => (GuidedConfig with { FakeLabelDropout = -0.1 }).Validate()).Message);
        var regression = GuidedConfig with { Mode = DmdMode.RegressionOnly, GuidanceFake = 1 };
        Assert.Contains("RegressionOnly", Assert.Throws<DmdInputException>(() => regression.Validate()).Message);
        (GuidedConfig with { GuidanceFake = -0.5 }).Validate(); // Anti-CFG: negative scales are allowed
        (GuidedConfig with { GuidanceFake = 1 }).Validate(); // dropout alone is allowed

        var unconditional = PointSpec with { LabelDim = 0 };
        torch.manual_seed(1);
        var teacher = unconditional.Build();
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, unconditional, GuidedConfig with { GuidanceReal = 1, GuidanceFake = 1 }, pairs: null));
        Assert.Contains("unconditional", e.Message);
    }

    /// <summary>`dmd distill --guidance-fake 1.5 --fake-label-dropout 0.1` runs on a tiny class-conditional point teacher and records both in its config.json.</summary>
    [Fact]
    public void DistillTakesFakeGuidanceFromTheCommandLine()
    {
        var work = TestUtil.TempDir();
        var teacher = Path.Combine(work, "teacher.safetensors");
        DenoiserFile.Save(DmdGanTests.Teacher(PointSpec), PointSpec, teacher);
        var run = Path.Combine(work, "lsg");
        var (code, output) = CliTests.Run("distill", "--teacher", teacher, "--lambda-reg", "0", "--guidance-real", "1.5", "--guidance-fake", "1.5",
                                          "--fake-label-dropout", "0.1", "--steps", "3", "--batch-size", "16", "--log-every", "1", "--out", run);
        Assert.True(code == 0, output);
        var info = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(run, "config.json")))!;
        Assert.Equal(1.5, info["Config"]!["GuidanceFake"]!.GetValue<double>());
        Assert.Equal(0.1, info["Config"]!["FakeLabelDropout"]!.GetValue<double>());
        Assert.Equal(4, File.ReadAllLines(Path.Combine(run, "losses.csv")).Length);
    }
}
