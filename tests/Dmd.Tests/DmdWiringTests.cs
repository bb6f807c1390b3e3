using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// The DMD trainer's wiring, checked against what DESIGN.md section 3 says one step computes: the gradients the
/// trainer leaves on the generator and the fake denoiser are recomputed here from the same random draws, with the
/// guided real score, the fake denoiser's labels and lambda_reg written out by hand; and on analytic denoisers one
/// step moves the generator by the amount the mathematics gives.
/// </summary>
public class DmdWiringTests(ITestOutputHelper log)
{
    const int Classes = 3;
    static readonly MlpSpec PointSpec = TestUtil.TinyPointSpec;

    static DmdConfig WiringConfig(DmdMode mode, double guidance, double lambdaReg) => new()
    {
        Mode = mode, BatchSize = 16, RegressionBatchSize = 8, GuidanceReal = guidance, LambdaReg = lambdaReg,
        GradClip = 1e9, WarmupSteps = 0, FakeUpdatesPerStep = 1, Seed = 11, Steps = 1,
    };

    static EdmPrecond Copy(EdmPrecond net)
    {
        var c = PointSpec.Build();
        TrainingUtils.CopyWeights(net, c);
        return c;
    }

    /// <summary>
    /// One trainer step against the same step written out by hand, replaying the trainer's draws from its seed in
    /// the order DmdTrainer.TrainStep makes them: z, labels, DM noise-level indices, DM noise, regression pair
    /// indices, then per fake update the noise-level indices and the denoising noise.
    /// </summary>
    [Theory]
    [InlineData(DmdMode.Full, 2.5, 0.7)]
    [InlineData(DmdMode.Full, 1.0, 0.25)]
    [InlineData(DmdMode.DmOnly, 3.0, 0.25)]
    [InlineData(DmdMode.RegressionOnly, 2.0, 0.25)]
    [InlineData(DmdMode.DmOnly, 3.0, 0.25, "0.5,5")] // guidance only at sigma in (0.5, 5]: about a third of the grid's levels
    [InlineData(DmdMode.DmOnly, 3.0, 0.25, "0.5,5,0.4")] // and CFG 0.4 at the other levels
    public void OneStepGivesTheGradientsOfGuidedDmPlusLambdaRegressionAndTheFakesLabelledDenoisingLoss(DmdMode mode, double w, double lambdaReg, string? interval = null)
    {
        torch.manual_seed(1);
        var teacher = PointSpec.Build();
        TestUtil.Perturb(teacher, 2, 0.05); // the zero-free start gives every layer a gradient
        TrainingUtils.Freeze(teacher);
        var config = WiringConfig(mode, w, lambdaReg) with { GuidanceRealInterval = interval };
        using var pg = new Generator(3);
        var pairs = new RegressionPairs(randn(new long[] { 40, 2 }, generator: pg), randn(new long[] { 40, 2 }, generator: pg) * 0.5,
                                        Rng.OneHotLabels(Classes, 40, pg), new PairInfo("test", 1, 1, w, 0, 40));
        using var trainer = new DmdTrainer(teacher, PointSpec, config, pairs);
        TestUtil.Perturb(trainer.Fake, 4, 0.02); // a fake that differs from the real denoiser, so the DM term is not zero
        var gen0 = Copy(trainer.Generator.Net);
        var fake0 = Copy(trainer.Fake);
        var generator0 = new OneStepGenerator(gen0, config.SigmaMax);

        trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var z = Rng.Normal(new long[] { config.BatchSize, 2 }, rng);
        var y = Rng.OneHotLabels(Classes, config.BatchSize, rng)!;
        var x = generator0.Generate(z, y);
        var lossG = zeros(1).squeeze();
        if (mode != DmdMode.RegressionOnly)
        {
            var sigma = grid.index_select(0, Rng.Integers(config.MinStep, config.MaxStep + 1, config.BatchSize, rng));
            var xt = x.detach() + sigma.unsqueeze(1) * Rng.NormalLike(x, rng);
            Tensor grad;
            using (no_grad())
            {
                var uncond = teacher.Denoise(xt, sigma, zeros_like(y));
                var cond = teacher.Denoise(xt, sigma, y);
                var pReal = uncond + w * (cond - uncond);
                if (interval is not null)
                {
                    var inside = sigma.gt(0.5f).logical_and(sigma.le(5f));
                    Assert.InRange(inside.sum().item<long>(), 1, config.BatchSize - 1); // both kinds in the batch, so the test can tell
                    var parts = interval.Split(',');
                    var outside = parts.Length == 3 ? uncond + double.Parse(parts[2], System.Globalization.CultureInfo.InvariantCulture) * (cond - uncond) : cond;
                    pReal = where(inside.unsqueeze(1), pReal, outside);
                }
                var pFake = fake0.Denoise(xt, sigma, y); // the fake: labels, never guidance
                grad = DmdLoss.DmGradient(x.detach(), pReal, pFake);
            }
            lossG = lossG + (x * grad).sum() / x.numel(); // d/dx = grad / numel
        }
        if (mode != DmdMode.DmOnly)
        {
            var idx = Rng.Integers(0, pairs.Count, config.RegressionBatchSize, rng);
            var reg = (generator0.Generate(pairs.Z.index_select(0, idx), pairs.Y!.index_select(0, idx)) - pairs.X.index_select(0, idx)).square().mean();
            lossG = lossG + (mode == DmdMode.Full ? lambdaReg : 1.0) * reg;
        }
        lossG.backward();
        TestUtil.AssertSameGradients(gen0, trainer.Generator.Net, "generator");

        if (mode != DmdMode.RegressionOnly)
        {
            var sigmaF = grid.index_select(0, Rng.Integers(0, config.GridLevels, config.BatchSize, rng));
            var lossF = EdmLoss.AtSigma(fake0, x.detach(), sigmaF, y, PointSpec.SigmaData, rng);
            lossF.backward();
            TestUtil.AssertSameGradients(fake0, trainer.Fake, "fake denoiser");
        }
        else Assert.All(trainer.Fake.parameters(), p => Assert.True(p.grad is null || p.grad.abs().max().item<float>() == 0));
    }

    /// <summary>DMD2 trains without pairs: Full with lambda_reg 0 needs none and takes exactly the DmOnly step.</summary>
    [Fact]
    public void LambdaRegZeroNeedsNoPairsAndIsTheDistributionMatchingStep()
    {
        torch.manual_seed(1);
        var teacher = PointSpec.Build();
        TestUtil.Perturb(teacher, 2, 0.05);
        TrainingUtils.Freeze(teacher);
        var config = WiringConfig(DmdMode.Full, 2.0, 0);
        Assert.False(config.UsesPairs);
        using var a = new DmdTrainer(teacher, PointSpec, config, pairs: null);
        using var b = new DmdTrainer(teacher, PointSpec, config with { Mode = DmdMode.DmOnly }, pairs: null);
        var la = a.TrainStep();
        b.TrainStep();
        Assert.False(la.ContainsKey("loss_reg"));
        TestUtil.AssertSameGradients(b.Generator.Net, a.Generator.Net, "lambda_reg 0 vs DmOnly");
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, config with { LambdaReg = 0.25 }, pairs: null));
        Assert.Contains("lambda-reg 0", e.Message);
    }

    /// <summary>
    /// DMD2's two time-scale rule: with K fake updates per generator update, update k &gt; 0 trains on a fresh batch (new z and
    /// labels) drawn from the generator after its update, without gradient through it. The fake's learning rate is made
    /// negligible so the last update's gradient can be recomputed at the fake's starting weights.
    /// </summary>
    [Fact]
    public void FakeUpdatesAfterTheFirstTrainOnFreshBatchesOfTheUpdatedGenerator()
    {
        torch.manual_seed(1);
        var teacher = PointSpec.Build();
        TestUtil.Perturb(teacher, 2, 0.05);
        TrainingUtils.Freeze(teacher);
        var config = WiringConfig(DmdMode.DmOnly, 1.5, 0.25) with { FakeUpdatesPerStep = 2, FakeLrScale = 1e-9 };
        using var trainer = new DmdTrainer(teacher, PointSpec, config, pairs: null);
        var fake0 = Copy(trainer.Fake);
        var generator0 = new OneStepGenerator(Copy(trainer.Generator.Net), config.SigmaMax);

        trainer.TrainStep();

        using var rng = new Generator((ulong)config.Seed);
        var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax);
        var z = Rng.Normal(new long[] { config.BatchSize, 2 }, rng);
        var y = Rng.OneHotLabels(Classes, config.BatchSize, rng)!;
        Rng.Integers(config.MinStep, config.MaxStep + 1, config.BatchSize, rng); // the DM term's noise levels ...
        Rng.NormalLike(z, rng);                                                     // ... and noise
        Rng.Integers(0, config.GridLevels, config.BatchSize, rng);                  // fake update 0: noise levels ...
        Rng.NormalLike(z, rng);                                                     // ... and noise
        var z1 = Rng.Normal(new long[] { config.BatchSize, 2 }, rng);               // fake update 1: a fresh batch
        var y1 = Rng.OneHotLabels(Classes, config.BatchSize, rng)!;
        Tensor x1;
        using (no_grad()) x1 = trainer.Generator.Generate(z1, y1); // the generator after its update
        using (no_grad()) Assert.False(allclose(x1, generator0.Generate(z1, y1), 1e-6, 1e-7), "the generator moved");
        var sigma1 = grid.index_select(0, Rng.Integers(0, config.GridLevels, config.BatchSize, rng));
        EdmLoss.AtSigma(fake0, x1, sigma1, y1, PointSpec.SigmaData, rng).backward();
        TestUtil.AssertSameGradients(fake0, trainer.Fake, "fake denoiser, update 1");
    }

    /// <summary>
    /// EDM's preconditioned form of the exact denoiser of N(mu, std^2) data: F is chosen so that
    /// c_skip x + c_out F = mu + std^2 / (std^2 + sigma^2) (x - mu). With std = 0 it is the denoiser of a point mass at mu
    /// (the output is mu whatever the input), which is also what a generator made of it produces.
    /// Only mu is a parameter (copied between networks); std is a plain setting.
    /// </summary>
    sealed class GaussianBackbone : EdmBackbone
    {
        private readonly TorchSharp.Modules.Parameter mu;
        public double Std { get; set; }
        readonly double sigmaData;

        public GaussianBackbone(double mu, double std, double sigmaData) : base(nameof(GaussianBackbone))
        {
            this.mu = nn.Parameter(tensor(new[] { (float)mu }));
            Std = std;
            this.sigmaData = sigmaData;
            RegisterComponents();
        }

        public override int LabelDim => 0;
        public double Mu => mu.item<float>();

        public void SetMu(double value) { using var _ = no_grad(); mu.fill_(value); }

        public override Tensor forward(Tensor cInX, Tensor cNoise, Tensor? labels)
        {
            var xf = cInX.to(ScalarType.Float64);
            var sigma = (cNoise.to(ScalarType.Float64) * 4).exp().unsqueeze(1);
            double sd2 = sigmaData * sigmaData;
            var v = sigma.square() + sd2;
            var x = xf * v.sqrt();
            var m = mu.to(ScalarType.Float64);
            var target = m + Std * Std / (Std * Std + sigma.square()) * (x - m);
            var cSkip = sd2 / v;
            var cOut = sigma * sigmaData / v.sqrt();
            return ((target - cSkip * x) / cOut).to(ScalarType.Float32);
        }
    }

    static GaussianBackbone Analytic(EdmPrecond net) => (GaussianBackbone)net.Backbone;

    /// <summary>
    /// DMD on analytic denoisers in one dimension. Data N(mu, s^2) with its exact denoiser as the real score; the
    /// generator is a point mass at m (its output is m for every z, so dx/dm = 1); the fake denoiser is the exact
    /// denoiser of that point mass (its optimum). Then p_fake = x and the DM gradient per sample is
    /// (x - p_real) / |x - p_real| = sign((m - mu) sigma / s^2 - n) (times the positive c_skip sigma), whose expectation
    /// for a noise level sigma is erf((m - mu) sigma / (s^2 sqrt 2)); the generator's gradient dL/dm is the batch mean
    /// of those signs (loss_dm = 0.5 mean (x - sg(x - grad))^2), and Adam's first step moves m by exactly the learning
    /// rate against it, toward mu. The fake denoiser at its optimum has zero gradient and stays; moved away, its first
    /// step brings it back toward m by exactly its learning rate.
    /// </summary>
    [Theory]
    [InlineData(0.7, 0.0)]   // fake at its optimum
    [InlineData(-0.4, 0.3)]  // fake displaced by 0.3: only the fake's step has a closed form
    public void OneStepOnAnalyticDenoisersMovesTheGeneratorTowardTheDataMeanByTheExpectedAmount(double m, double fakeOffset)
    {
        const double mu = 0.2, s = 0.5, lr = 1e-3;
        const int batch = 4096;
        var spec = new MlpSpec { Shape = new[] { 1 }, SigmaData = s };
        EdmPrecond Build() => new(new GaussianBackbone(mu, s, s), s);
        var teacher = Build();
        TrainingUtils.Freeze(teacher);
        var config = new DmdConfig
        {
            Mode = DmdMode.DmOnly, BatchSize = batch, LearningRate = lr, WarmupSteps = 4, WeightDecay = 0, GradClip = 0,
            FakeUpdatesPerStep = 1, FakeLrScale = 0.5, Seed = 5, Steps = 1,
        };
        using var trainer = new DmdTrainer(teacher, spec, config, pairs: null, buildNetwork: Build);
        Analytic(trainer.Generator.Net).Std = 0;
        Analytic(trainer.Generator.Net).SetMu(m);
        Analytic(trainer.Fake).Std = 0;
        Analytic(trainer.Fake).SetMu(m + fakeOffset);
        using (no_grad()) Assert.Equal(m, trainer.Generator.Generate(randn(8, 1)).mean().item<float>(), 1e-5);

        trainer.TrainStep();

        double lrNow = TrainingUtils.WarmupLr(lr, 0, config.WarmupSteps);
        if (fakeOffset == 0)
        {
            // the generator's gradient: the batch mean of the signs, against its expectation over the trainer's noise levels
            double gradM = trainer.Generator.Net.parameters().Single().grad!.item<float>();
            var grid = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax).data<float>().ToArray();
            double expected = Enumerable.Range(config.MinStep, config.MaxStep - config.MinStep + 1)
                .Average(i => Erf((m - mu) * grid[i] / (s * s * Math.Sqrt(2))));
            log.WriteLine($"dL/dm = {gradM:F5}, expected {expected:F5}");
            Assert.True(Math.Abs(gradM - expected) < 4 / Math.Sqrt(batch), $"dL/dm = {gradM:F4}, expected {expected:F4} +- {4 / Math.Sqrt(batch):F4}");

            // Adam's first step is lr * g / (|g| + eps): exactly the warmed-up learning rate, toward the data mean
            double mAfter = Analytic(trainer.Generator.Net).Mu;
            Assert.Equal(m - Math.Sign(m - mu) * lrNow, mAfter, 1e-6);
            using (no_grad()) Assert.Equal(mAfter, trainer.Generator.Generate(randn(8, 1)).mean().item<float>(), 1e-5);
        }

        // the fake denoiser fits the generator's output m: 2 (m_fake - m) lambda(sigma) averaged over the batch, so at its
        // optimum its gradient is zero up to rounding (Adam would still take a full step on rounding noise: not checked),
        // and displaced it moves toward m by exactly its learning rate
        double gradFake = trainer.Fake.parameters().Single().grad!.item<float>();
        if (fakeOffset == 0)
        {
            var sigmas = KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax).to(ScalarType.Float64);
            double meanWeight = (1 / sigmas.square() + 1 / (s * s)).mean().item<double>();
            log.WriteLine($"fake gradient at its optimum {gradFake:G3}, mean weight {meanWeight:G3}");
            Assert.True(Math.Abs(gradFake) < 2 * 1e-6 * meanWeight, $"fake gradient at its optimum {gradFake:G3} (an offset of 1e-6 gives ~{2e-6 * meanWeight:G3})");
        }
        else
        {
            Assert.Equal(Math.Sign(fakeOffset), Math.Sign(gradFake));
            Assert.Equal(m + fakeOffset - Math.Sign(fakeOffset) * lrNow * config.FakeLrScale, Analytic(trainer.Fake).Mu, 1e-6);
        }
    }

    /// <summary>Classifier-free guidance written out: two separate calls, uncond + w (cond - uncond).</summary>
    sealed class HandGuided(IDenoiser inner, double w) : IDenoiser
    {
        public int LabelDim => inner.LabelDim;
        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
        {
            var uncond = inner.Denoise(x, sigma, zeros_like(labels!));
            var cond = inner.Denoise(x, sigma, labels);
            return uncond + w * (cond - uncond);
        }
    }

    static EdmPrecond RandomTeacher(bool image)
    {
        torch.manual_seed(21);
        var net = image
            ? new UNetOptions { ModelChannels = 8, NumBlocks = 1, Dropout = 0 }.For(channels: 1, resolution: 8, labelDim: Classes).Build()
            : PointSpec.Build();
        TestUtil.Perturb(net, 22, 0.05);
        net.eval();
        TrainingUtils.Freeze(net);
        return net;
    }

    /// <summary>
    /// Pairs are the guided teacher's Heun output for their own noise, started at their sigma_max (two batches, so the
    /// noise of the second is the generator's continuation), and a one-step "sampler" from sigma_max is exactly the
    /// untrained generator: the regression target and the generator scale z the same way.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PairsAreTheGuidedHeunOutputForTheirNoiseAtTheirSigmaMax(bool image)
    {
        var teacher = RandomTeacher(image);
        var shape = image ? new[] { 1, 8, 8 } : new[] { 2 };
        const double w = 1.8, sigmaMax = 20;
        var pairs = RegressionPairs.Generate(teacher, shape, 6, steps: 3, guidance: w, seed: 4, batchSize: 4, sigmaMax: sigmaMax);
        Assert.Equal(new PairInfo("heun", 3, 5, w, 4, 6, 0, sigmaMax), pairs.Info);
        var expected = Samplers.Heun(new HandGuided(teacher, w), pairs.Z, pairs.Y, 3, sigmaMax: sigmaMax).Samples;
        Assert.True(allclose(pairs.X, expected, 1e-5, 1e-6), $"pairs differ from Heun by {(pairs.X - expected).abs().max().item<float>():G3}");
        Assert.False(allclose(pairs.X, Samplers.Heun(new HandGuided(teacher, w), pairs.Z, pairs.Y, 3).Samples, 1e-3, 1e-4)); // sigma_max matters

        var oneStep = RegressionPairs.Generate(teacher, shape, 6, steps: 1, seed: 4, batchSize: 4, sigmaMax: sigmaMax);
        using (no_grad())
        {
            var generated = new OneStepGenerator(teacher, sigmaMax).Generate(oneStep.Z, oneStep.Y);
            Assert.True(allclose(oneStep.X, generated, 1e-5, 1e-6), $"one-step pairs differ from the generator by {(oneStep.X - generated).abs().max().item<float>():G3}");
        }
    }

    [Fact]
    public void DistillRefusesPairsMadeAtAnotherSigmaMaxOrGuidanceAndOldPairFilesReadAs80()
    {
        var teacher = RandomTeacher(image: false);
        var pairs = RegressionPairs.Generate(teacher, PointSpec.SampleShape, 8, steps: 2, guidance: 1.5, seed: 4, sigmaMax: 40);
        var ok = new DmdConfig { BatchSize = 4, RegressionBatchSize = 4, SigmaMax = 40, GuidanceReal = 1.5 };
        using (new DmdTrainer(teacher, PointSpec, ok, pairs)) { }
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, ok with { SigmaMax = 80 }, pairs));
        Assert.Contains("sigma_max 40", e.Message);
        Assert.Contains("--sigma-max 80", e.Message);
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, ok with { GuidanceReal = 1 }, pairs));
        Assert.Contains("guidance 1.5", e.Message);
        Assert.Contains("--guidance 1", e.Message);
        // pairs are guided at every level: a guidance interval in the real score would regress to another map
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, ok with { GuidanceRealInterval = "0.5,5" }, pairs));
        Assert.Contains("guidance-real-interval", e.Message);
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, ok with { Mode = DmdMode.DmOnly, GuidanceRealInterval = "5,0.5" }, null));
        Assert.Contains("guidance-real-interval '5,0.5'", e.Message);
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(teacher, PointSpec, ok with { Mode = DmdMode.DmOnly, GuidanceReal = 1, GuidanceRealInterval = "0.5,5" }, null));
        Assert.Contains("--guidance-real other than 1", e.Message); // an interval without guidance would be silently ignored
        using (new DmdTrainer(teacher, PointSpec, ok with { Mode = DmdMode.DmOnly, GuidanceReal = 1, GuidanceRealInterval = "0.5,5,0.8" }, null)) { } // guided outside it
        using (new DmdTrainer(teacher, PointSpec, ok with { Mode = DmdMode.DmOnly, GuidanceReal = 1 }, pairs)) { } // no pairs used

        var dir = TestUtil.TempDir();
        var file = Path.Combine(dir, "old.safetensors");
        pairs.Save(file);
        File.WriteAllText(Path.ChangeExtension(file, ".json"), """{"Sampler":"heun","Steps":2,"Nfe":3,"Guidance":1.5,"Seed":4,"Count":8}""");
        Assert.Equal(KarrasSchedule.DefaultSigmaMax, RegressionPairs.Load(file).Info.SigmaMax);
    }

    [Fact]
    public void TheGeneratorFileRecordsItsSigmaMaxAndLoadsWithIt()
    {
        var teacher = RandomTeacher(image: false);
        var config = new DmdConfig { Mode = DmdMode.DmOnly, Steps = 1, BatchSize = 4, SigmaMax = 40, LogEvery = 1 };
        var dir = TestUtil.TempDir();
        using var trainer = new DmdTrainer(teacher, PointSpec, config, pairs: null);
        trainer.Run(dir, "random teacher", null);
        var loaded = OneStepGenerator.Load(dir);
        Assert.Equal(40, loaded.SigmaMax);
        var z = randn(5, 2);
        var y = Rng.OneHot(tensor(new long[] { 0, 1, 2, 0, 1 }), Classes);
        using (no_grad())
        {
            Assert.True(TestUtil.Same(trainer.Output.Generate(z, y), loaded.Generate(z, y)));
            Assert.True(TestUtil.Same(loaded.Net.Denoise(40 * z, full(5, 40f), y), loaded.Generate(z, y)));
        }

        // a generator.json written before sigma_max was recorded (the shipped student's) is read as 80
        var json = Path.Combine(dir, "generator.json");
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!.AsObject();
        Assert.True(node.Remove("SigmaMax"));
        File.WriteAllText(json, node.ToJsonString());
        Assert.Equal(KarrasSchedule.DefaultSigmaMax, OneStepGenerator.Load(dir).SigmaMax);
    }

    /// <summary>
    /// The generator's weight average: after update n (0-based) ema = beta ema + (1 - beta) weights with
    /// beta = min(decay, (1 + n) / (10 + n)), applied after the optimiser step; Output is the average.
    /// </summary>
    [Fact]
    public void TheGeneratorsAverageFollowsItsWeightsWithTheWarmedUpDecay()
    {
        var teacher = RandomTeacher(image: false);
        var config = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 8, EmaDecay = 0.6, LearningRate = 1e-2, WarmupSteps = 0 };
        using var trainer = new DmdTrainer(teacher, PointSpec, config, pairs: null);
        Assert.Same(trainer.Ema, trainer.Output);
        var ema = Copy(trainer.Ema!.Net);
        for (int n = 0; n < 4; n++)
        {
            var before = Copy(trainer.Generator.Net);
            trainer.TrainStep();
            double beta = Math.Min(config.EmaDecay, (1.0 + n) / (10.0 + n));
            var weights = trainer.Generator.Net.state_dict();
            var moved = before.state_dict().Any(kv => !TestUtil.Same(kv.Value, weights[kv.Key]));
            Assert.True(moved, "the generator's weights moved");
            var actual = trainer.Ema.Net.state_dict();
            foreach (var (k, e) in ema.state_dict())
            {
                using (no_grad()) e.mul_(beta).add_(weights[k] * (1 - beta));
                double err = (e - actual[k]).abs().max().item<float>();
                Assert.True(err < 1e-6 * Math.Max(1, e.abs().max().item<float>()), $"update {n}: average of {k} is off by {err:G3} (beta {beta:F3})");
            }
        }
    }

    /// <summary>erf by Abramowitz and Stegun 7.1.26 (|error| &lt; 1.5e-7).</summary>
    static double Erf(double x)
    {
        double t = 1 / (1 + 0.3275911 * Math.Abs(x));
        double y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.Exp(-x * x);
        return Math.Sign(x) * y;
    }
}
