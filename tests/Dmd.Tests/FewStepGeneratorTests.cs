using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Pipelines;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// DMD2's few-step generator (section 4.4): the chain on fixed noise levels, backward simulation in training (the
/// generator's own chain, without gradient, to a random level), and the levels travelling with the saved model.
/// </summary>
public class FewStepGeneratorTests
{
    static readonly NetworkSpec Spec = TestUtil.TinyPointSpec;

    static EdmPrecond PerturbedNet(long seed)
    {
        var net = Spec.Build();
        TestUtil.Perturb(net, seed, 0.1);
        return net;
    }

    [Fact]
    public void LevelsAreGeometricFromSigmaMaxToTheLastAndOneStepIsSigmaMaxAlone()
    {
        var four = OneStepGenerator.Levels(80, 1, 4);
        Assert.Equal(new[] { 80.0, 18.566, 4.309, 1.0 }, four.Select(v => Math.Round(v, 3)));
        Assert.Equal(new[] { 40.0 }, OneStepGenerator.Levels(40, 1, 1));
        Assert.Equal(new[] { 80.0, 18.566, 4.309, 1.0 }, new DmdConfig { GeneratorSteps = 4 }.GeneratorSigmas(0.5).Select(v => Math.Round(v, 3)));
        Assert.Throws<DmdInputException>(() => new DmdConfig { GeneratorSteps = 3, GeneratorSigmaMin = 90 }.Validate());
        Assert.Throws<DmdInputException>(() => new OneStepGenerator(Spec.Build(), new[] { 5.0, 5.0 }));
    }

    /// <summary>
    /// "dmd2" levels: after sigma_max, sigma_data sqrt((1 - abar_t) / abar_t) at DMD2's timesteps 999 - k (1000 / K) of SD's
    /// scaled-linear schedule (values from the DDPM formula in double precision, written out here); listed levels as given.
    /// </summary>
    [Fact]
    public void Dmd2LevelsHaveTheSignalToNoiseOfDmd2sTimestepsAndListedLevelsAreChecked()
    {
        Assert.Equal(new[] { 80.0, 2.041, 0.806, 0.347 }, new DmdConfig { GeneratorSteps = 4, GeneratorLevels = "dmd2" }.GeneratorSigmas(0.5).Select(v => Math.Round(v, 3))); // 2.0409, 0.8064, 0.3466
        Assert.Equal(new[] { 80.0, 2.918, 0.932 }, new DmdConfig { GeneratorSteps = 3, GeneratorLevels = "dmd2" }.GeneratorSigmas(1.0).Select(v => Math.Round(v, 3))); // 2.9183, 0.9324
        Assert.Equal(new[] { 80.0 }, new DmdConfig { GeneratorLevels = "dmd2" }.GeneratorSigmas(0.5));
        Assert.Equal(new[] { 80.0, 2, 0.5 }, new DmdConfig { GeneratorSteps = 3, GeneratorLevels = "80, 2,0.5" }.GeneratorSigmas(0.5));
        foreach (var bad in new[] { "80,2", "80,2,x", "40,2,0.5", "80,0.5,2", "80,2,0", "geometric2" })
            Assert.Throws<DmdInputException>(() => new DmdConfig { GeneratorSteps = 3, GeneratorLevels = bad }.Validate());
        new DmdConfig { GeneratorSteps = 3, GeneratorLevels = "dmd2", GeneratorSigmaMin = 90 }.Validate(); // sigma-min is the geometric rule's
        // the trainer's generator and its average run on the named levels, at the teacher's sigma_data
        var teacher = PerturbedNet(4);
        TrainingUtils.Freeze(teacher);
        var cfg = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 4, GeneratorSteps = 4, GeneratorLevels = "dmd2", EmaDecay = 0.9 };
        using var trainer = new DmdTrainer(teacher, Spec, cfg, null);
        Assert.Equal(OneStepGenerator.Dmd2Levels(80, 4, Spec.SigmaData), trainer.Generator.Sigmas);
        Assert.Equal(trainer.Generator.Sigmas, trainer.Ema!.Sigmas);
        Assert.NotEqual(OneStepGenerator.Levels(80, 1, 4), trainer.Generator.Sigmas);
    }

    /// <summary>x = s0 z; x0 = D(x, s_k); x = x0 + s_(k+1) n_k; the last x0 is the sample, computed by hand.</summary>
    [Fact]
    public void GenerateRunsTheChainOnItsLevelsWithTheGivenNoise()
    {
        var net = PerturbedNet(1);
        var levels = new[] { 8.0, 2.0, 0.5 };
        var g = new OneStepGenerator(net, levels);
        using var rng = new Generator(3);
        var z = randn(new long[] { 16, 2 }, generator: rng);
        var y = Rng.OneHotLabels(3, 16, rng);
        var noise = new[] { randn(new long[] { 16, 2 }, generator: rng), randn(new long[] { 16, 2 }, generator: rng) };
        using var _ = no_grad();
        Tensor D(Tensor x, double s) => net.Denoise(x, full(16, s), y);
        var a = D(8 * z, 8);
        var b = D(a + 2 * noise[0], 2);
        var c = D(b + 0.5 * noise[1], 0.5);
        Assert.True(allclose(c, g.Generate(z, y, noise), rtol: 1e-5, atol: 1e-6), "three steps");
        Assert.True(allclose(b, g.Generate(z, y, noise, steps: 2), rtol: 1e-5, atol: 1e-6), "the first two of three steps");
        Assert.True(TestUtil.Same(a, g.Generate(z, y, steps: 1)), "one step needs no noise");
        Assert.True(TestUtil.Same(new OneStepGenerator(net, 8).Generate(z, y), g.Generate(z, y, steps: 1)), "step one is the one-step generator");
        Assert.Throws<ArgumentException>(() => g.Generate(z, y));
        Assert.Throws<DmdInputException>(() => g.Generate(z, y, noise, steps: 4));
    }

    /// <summary>
    /// With a step-noise carry c the re-noising before step k + 1 mixes the noise the step's input carried, (x - x0) / s_k,
    /// into the fresh one: x = x0 + s_(k+1) (c (x - x0) / s_k + sqrt(1 - c^2) n_k), computed by hand; carry 0 is the
    /// plain chain, and a carry outside [0, 1) or on a one-step generator is refused.
    /// </summary>
    [Fact]
    public void AStepNoiseCarryMixesTheInputsOwnNoiseIntoTheReNoising()
    {
        var net = PerturbedNet(2);
        var levels = new[] { 8.0, 2.0, 0.5 };
        const double c = 0.6;
        var g = new OneStepGenerator(net, levels, c);
        using var rng = new Generator(4);
        var z = randn(new long[] { 16, 2 }, generator: rng);
        var y = Rng.OneHotLabels(3, 16, rng);
        var noise = new[] { randn(new long[] { 16, 2 }, generator: rng), randn(new long[] { 16, 2 }, generator: rng) };
        using var _ = no_grad();
        Tensor D(Tensor x, double s) => net.Denoise(x, full(16, s), y);
        double fresh = Math.Sqrt(1 - c * c);
        var x1 = 8 * z;
        var a = D(x1, 8);
        var x2 = a + 2 * (c * (x1 - a) / 8 + fresh * noise[0]);
        var b = D(x2, 2);
        var x3 = b + 0.5 * (c * (x2 - b) / 2 + fresh * noise[1]);
        Assert.True(allclose(x3, g.Input(z, y, 2, noise), rtol: 1e-5, atol: 1e-6), "the third step's input");
        Assert.True(allclose(D(x3, 0.5), g.Generate(z, y, noise), rtol: 1e-5, atol: 1e-6), "three steps");
        var plain = new OneStepGenerator(net, levels);
        Assert.False(allclose(plain.Generate(z, y, noise), g.Generate(z, y, noise), rtol: 1e-3, atol: 1e-4));
        Assert.True(TestUtil.Same(plain.Generate(z, y, noise), g.WithStepNoiseCarry(0).Generate(z, y, noise)));
        Assert.True(TestUtil.Same(g.Generate(z, y, noise), plain.WithStepNoiseCarry(c).Generate(z, y, noise)));
        foreach (var bad in new[] { -0.1, 1.0, double.NaN })
        {
            Assert.Throws<DmdInputException>(() => new OneStepGenerator(net, levels, bad));
            Assert.Throws<DmdInputException>(() => new DmdConfig { GeneratorSteps = 3, StepNoiseCarry = bad }.Validate());
        }
        Assert.Contains("step-noise-carry", Assert.Throws<DmdInputException>(() => new DmdConfig { StepNoiseCarry = 0.5 }.Validate()).Message);
    }

    /// <summary>
    /// `eval --steps k --finish-with TEACHER`: the generator's first k steps, its output re-noised to level k + 1 with the
    /// chain's own noise, then the teacher's Heun. A teacher that is the generator's own network, in one (Euler) step, is
    /// the generator's last step: the whole chain comes out. A teacher file of another shape is refused, and so is k = K.
    /// </summary>
    [Fact]
    public void AGeneratorsFirstStepsFinishedByATeacherContinueItsOwnChain()
    {
        var net = PerturbedNet(5);
        TrainingUtils.Freeze(net);
        var g = new OneStepGenerator(net, new[] { 8.0, 2.0, 0.5 }) { Spec = Spec };
        using var rng = new Generator(7);
        var z = randn(new long[] { 10, 2 }, generator: rng);
        var y = Rng.OneHotLabels(3, 10, rng);
        var full = new ModelDraw("g", net, Spec, "onestep", 3, 1, g).Draw(z, y, batch: 4, seed: 11).X;
        var dir = TestUtil.TempDir();
        var teacherPath = Path.Combine(dir, "teacher.safetensors");
        DenoiserFile.Save(net, Spec, teacherPath);
        var finished = new ModelDraw("g", net, Spec, "onestep", 2, 1, g).FinishedBy(teacherPath, 1, 1, null);
        Assert.Equal(2 + 1, finished.Nfe);
        Assert.True(allclose(full, finished.Draw(z, y, batch: 4, seed: 11).X, rtol: 1e-5, atol: 1e-6));
        var two = new ModelDraw("g", net, Spec, "onestep", 2, 1, g).FinishedBy(teacherPath, 3, 1, null);
        Assert.Equal(2 + 5, two.Nfe);
        Assert.False(allclose(full, two.Draw(z, y, batch: 4, seed: 11).X, rtol: 1e-5, atol: 1e-6)); // a real ODE from level 3 is not one step
        Assert.Throws<DmdInputException>(() => new ModelDraw("g", net, Spec, "onestep", 3, 1, g).FinishedBy(teacherPath, 1, 1, null));
        var otherPath = Path.Combine(dir, "other.safetensors");
        var other = Spec with { LabelDim = 0 };
        DenoiserFile.Save(other.Build(), other, otherPath);
        Assert.Throws<DmdInputException>(() => new ModelDraw("g", net, Spec, "onestep", 1, 1, g).FinishedBy(otherPath, 1, 1, null));
    }

    /// <summary>Records, for each call of the wrapped network, its noise level and whether autograd was on.</summary>
    sealed class RecordingBackbone : EdmBackbone
    {
        private readonly EdmBackbone inner;
        public readonly List<(double Sigma, double Spread, bool Grad, double Max)> Calls = new();
        public RecordingBackbone(EdmBackbone inner) : base(nameof(RecordingBackbone))
        {
            this.inner = inner;
            RegisterComponents();
        }
        public override int LabelDim => inner.LabelDim;
        public override Tensor forward(Tensor x, Tensor cNoise, Tensor? labels)
        {
            var s = (cNoise.to(ScalarType.Float64) * 4).exp();
            Calls.Add((s.mean().item<double>(), (s.max() - s.min()).item<double>(), is_grad_enabled(), s.max().item<double>()));
            return inner.forward(x, cNoise, labels);
        }
    }

    /// <summary>A network builder for the trainer whose networks record their calls, each added to <paramref name="nets"/> in build order.</summary>
    static Func<EdmPrecond> RecordingNetworks(List<RecordingBackbone> nets) => () =>
    {
        var rec = new RecordingBackbone(Spec.Build().Backbone);
        nets.Add(rec);
        return new EdmPrecond(rec, Spec.SigmaData);
    };

    /// <summary>
    /// In every step the generator network is called as DMD2's backward simulation calls it: for the generator update,
    /// its own chain at levels 0..s-1 without gradient and then level s with gradient; for each further fake update a
    /// fresh chain 0..s' entirely without gradient. Every call is at one of the generator's levels, and the trained level
    /// varies from step to step.
    /// </summary>
    [Fact]
    public void BackwardSimulationRunsWithoutGradientAndLandsOnTheGeneratorsLevels()
    {
        var nets = new List<RecordingBackbone>();
        var build = RecordingNetworks(nets);
        var config = new DmdConfig
        {
            Mode = DmdMode.DmOnly, BatchSize = 8, LearningRate = 1e-4, WarmupSteps = 0, FakeUpdatesPerStep = 3, Seed = 11,
            Steps = 20, GeneratorSteps = 4, SigmaMax = 80, GeneratorSigmaMin = 1,
        };
        var teacherRec = new EdmPrecond(new RecordingBackbone(Spec.Build().Backbone), Spec.SigmaData);
        TestUtil.Perturb(teacherRec, 2, 0.1);
        TrainingUtils.Freeze(teacherRec);
        using var trainer = new DmdTrainer(teacherRec, Spec, config, pairs: null, buildNetwork: build);
        Assert.Equal(2, nets.Count); // fake, then generator
        var gen = nets[1];
        var levels = config.GeneratorSigmas(Spec.SigmaData);
        var trained = new HashSet<int>();
        for (int step = 0; step < 20; step++)
        {
            gen.Calls.Clear();
            trainer.TrainStep();
            Assert.All(gen.Calls, c => Assert.True(c.Spread <= 1e-6 * c.Sigma, "one noise level per generator call"));
            var calls = gen.Calls.Select(c => (Level: Array.FindIndex(levels, l => Math.Abs(l - c.Sigma) <= 1e-4 * l), c.Grad)).ToList();
            Assert.All(calls, c => Assert.True(c.Level >= 0, "a generator call off the generator's levels"));
            // the generator update: 0..s-1 without gradient, then s with it
            int s = calls.FindIndex(c => c.Grad);
            Assert.True(s >= 0, "the generator update calls the network with gradient");
            Assert.Equal(Enumerable.Range(0, s + 1), calls.Take(s + 1).Select(c => c.Level));
            Assert.All(calls.Take(s), c => Assert.False(c.Grad));
            trained.Add(calls[s].Level);
            // two fresh batches for fake updates 2 and 3: each a chain 0..s' without gradient
            var rest = calls.Skip(s + 1).ToList();
            Assert.All(rest, c => Assert.False(c.Grad));
            int chains = 0;
            for (int i = 0; i < rest.Count; i++)
            {
                if (rest[i].Level == 0) chains++;
                else Assert.Equal(rest[i - 1].Level + 1, rest[i].Level);
            }
            Assert.Equal(2, chains);
        }
        Assert.True(trained.Count >= 3, $"the trained level should vary over 20 steps: saw {string.Join(",", trained)}");
    }

    /// <summary>
    /// With one fake denoiser per level, each step's DM call and every fake update go to the fake of the level the batch
    /// came from (read off the generator's calls), and only that fake's weights move: a fake no update reached is untouched.
    /// The updates go round the levels from the step's drawn one, so each fake gets its exact share.
    /// </summary>
    [Fact]
    public void FakePerLevelTrainsAndAsksOnlyTheFakeOfTheBatchsLevel()
    {
        var nets = new List<RecordingBackbone>();
        var build = RecordingNetworks(nets);
        var config = new DmdConfig
        {
            Mode = DmdMode.DmOnly, BatchSize = 8, LearningRate = 1e-3, WarmupSteps = 0, FakeUpdatesPerStep = 2, Seed = 5,
            GeneratorSteps = 3, SigmaMax = 20, GeneratorSigmaMin = 0.5, FakePerLevel = true,
        };
        Assert.Throws<DmdInputException>(() => (config with { GeneratorSteps = 1 }).Validate());
        var teacher = new EdmPrecond(new RecordingBackbone(Spec.Build().Backbone), Spec.SigmaData);
        TestUtil.Perturb(teacher, 3, 0.1);
        TrainingUtils.Freeze(teacher);
        using var trainer = new DmdTrainer(teacher, Spec, config, pairs: null, buildNetwork: build);
        Assert.Equal(4, nets.Count); // three fakes, then the generator
        Assert.Equal(3, trainer.Fakes.Count);
        var fakes = nets.Take(3).ToArray();
        var gen = nets[3];
        var levels = config.GeneratorSigmas(Spec.SigmaData);
        var untouchedSeen = false;
        for (int step = 0; step < 12; step++)
        {
            foreach (var n in nets) n.Calls.Clear();
            var before = trainer.Fakes.Select(f => f.parameters().Select(p => p.detach().clone()).ToArray()).ToArray();
            trainer.TrainStep();
            // the generator's calls: its update's chain 0..s (the last with gradient), then one fresh chain per further update
            var calls = gen.Calls.Select(c => Array.FindIndex(levels, l => Math.Abs(l - c.Sigma) <= 1e-4 * l)).ToList();
            int s = gen.Calls.FindIndex(c => c.Grad);
            var updateLevels = new List<int> { s };
            for (int i = s + 1; i < calls.Count; i++)
                if (i + 1 == calls.Count || calls[i + 1] == 0) updateLevels.Add(calls[i]);
            Assert.Equal(2, updateLevels.Count);
            for (int k = 0; k < updateLevels.Count; k++) Assert.Equal((s + k) % 3, updateLevels[k]); // round the levels from the drawn one
            for (int j = 0; j < 3; j++)
            {
                int updates = updateLevels.Count(l => l == j);
                Assert.Equal((s == j ? 1 : 0) + updates, fakes[j].Calls.Count);       // its DM call, then its denoising calls
                Assert.Equal(updates, fakes[j].Calls.Count(c => c.Grad));
                bool moved = trainer.Fakes[j].parameters().Zip(before[j]).Any(t => !TestUtil.Same(t.First, t.Second));
                Assert.Equal(updates > 0, moved);
                untouchedSeen |= updates == 0;
            }
        }
        Assert.True(untouchedSeen, "some step should leave a fake without an update");
    }

    /// <summary>
    /// balanced-levels: every block of K steps trains each of the K levels once (a permutation, not the same one in every
    /// block), with and without a fake per level, and the trainer's update (the generator call with gradient) is at that
    /// level.
    /// </summary>
    [Fact]
    public void BalancedLevelsTrainEachLevelOnceInEveryBlockOfKSteps()
    {
        const int K = 3;
        var orders = new HashSet<string>();
        for (int block = 0; block < 20; block++)
        {
            var order = Enumerable.Range(block * K, K).Select(st => DmdTrainer.BalancedLevel(11, st, K)).ToArray();
            Assert.Equal(new[] { 0, 1, 2 }, order.Order());
            orders.Add(string.Join(",", order));
        }
        Assert.True(orders.Count > 1, "the blocks should not all share one order");
        foreach (bool perLevel in new[] { false, true })
        {
            var config = new DmdConfig
            {
                Mode = DmdMode.DmOnly, BatchSize = 4, LearningRate = 1e-3, WarmupSteps = 0, FakeUpdatesPerStep = 2, Seed = 11,
                GeneratorSteps = K, SigmaMax = 20, GeneratorSigmaMin = 0.5, FakePerLevel = perLevel, BalancedLevels = true,
            };
            Assert.Throws<DmdInputException>(() => (config with { GeneratorSteps = 1, FakePerLevel = false }).Validate());
            var nets = new List<RecordingBackbone>();
            var teacher = new EdmPrecond(new RecordingBackbone(Spec.Build().Backbone), Spec.SigmaData);
            TrainingUtils.Freeze(teacher);
            using var trainer = new DmdTrainer(teacher, Spec, config, pairs: null, buildNetwork: RecordingNetworks(nets));
            var gen = nets[^1];
            var levels = config.GeneratorSigmas(Spec.SigmaData);
            for (int step = 0; step < 2 * K; step++)
            {
                gen.Calls.Clear();
                trainer.TrainStep();
                var update = gen.Calls.Single(c => c.Grad);
                Assert.Equal(DmdTrainer.BalancedLevel(11, step, K), Array.FindIndex(levels, l => Math.Abs(l - update.Sigma) <= 1e-4 * l));
            }
        }
    }

    /// <summary>
    /// dm-level-cap C: the DM term at the output of a later step (input level sigma_k, k &gt; 0) asks the real and fake
    /// scores only at noise levels up to C sigma_k (read off the fake's DM call, the one without gradient); the first
    /// step keeps the whole range, and the grid index bound is the last level at or below the cap.
    /// </summary>
    [Fact]
    public void DmLevelCapLimitsTheDmNoiseOfTheLaterStepsOnly()
    {
        var grid = KarrasSchedule.AscendingGrid(1000, 0.002, 80).data<float>().Select(v => (double)v).ToArray();
        var capped = new DmdConfig { GeneratorSteps = 4, DmLevelCap = 1 };
        var idx = DmdTrainer.DmMaxIndices(grid, capped.GeneratorSigmas(0.5), capped);
        Assert.Equal(980, idx[0]);
        for (int k = 1; k < 4; k++)
        {
            double level = capped.GeneratorSigmas(0.5)[k];
            Assert.True(grid[idx[k]] <= level && grid[idx[k] + 1] > level, $"level {level}: index {idx[k]}");
        }
        Assert.Equal(new[] { 980, 980, 980, 980 }, DmdTrainer.DmMaxIndices(grid, capped.GeneratorSigmas(0.5), capped with { DmLevelCap = 0 }));
        Assert.Throws<DmdInputException>(() => new DmdConfig { DmLevelCap = 1 }.Validate());
        Assert.Throws<DmdInputException>(() => (capped with { DmLevelCap = -1 }).Validate());

        var nets = new List<RecordingBackbone>();
        var config = new DmdConfig
        {
            Mode = DmdMode.DmOnly, BatchSize = 16, LearningRate = 1e-3, WarmupSteps = 0, FakeUpdatesPerStep = 1, Seed = 4,
            GeneratorSteps = 3, SigmaMax = 20, GeneratorSigmaMin = 0.5, FakePerLevel = true, DmLevelCap = 1,
        };
        var teacher = new EdmPrecond(new RecordingBackbone(Spec.Build().Backbone), Spec.SigmaData);
        TestUtil.Perturb(teacher, 3, 0.1);
        TrainingUtils.Freeze(teacher);
        using var trainer = new DmdTrainer(teacher, Spec, config, pairs: null, buildNetwork: RecordingNetworks(nets));
        var levels = config.GeneratorSigmas(Spec.SigmaData);
        var highest = new double[3];
        for (int step = 0; step < 12; step++)
        {
            foreach (var n in nets) n.Calls.Clear();
            trainer.TrainStep();
            for (int j = 0; j < 3; j++)
                foreach (var c in nets[j].Calls.Where(c => !c.Grad)) highest[j] = Math.Max(highest[j], c.Max);
        }
        Assert.True(highest[0] > 2 * levels[1], $"the first step's DM levels reach {highest[0]}");
        for (int j = 1; j < 3; j++)
        {
            Assert.True(highest[j] > 0, $"level {j} was trained");
            Assert.True(highest[j] <= levels[j] * (1 + 1e-5), $"level {j} ({levels[j]}): DM at sigma {highest[j]}");
        }
    }

    /// <summary>Fresh batches cost one generator pass per further fake update; without them every update reuses the step's batch.</summary>
    [Theory]
    [InlineData(true, 3)]
    [InlineData(false, 1)]
    public void FakeUpdatesDrawFreshBatchesOnlyWhenAsked(bool fresh, int generatorCalls)
    {
        var nets = new List<RecordingBackbone>();
        var build = RecordingNetworks(nets);
        var teacher = new EdmPrecond(new RecordingBackbone(Spec.Build().Backbone), Spec.SigmaData);
        TestUtil.Perturb(teacher, 6, 0.1);
        TrainingUtils.Freeze(teacher);
        var cfg = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 8, WarmupSteps = 0, FakeUpdatesPerStep = 3, FakeFreshBatches = fresh, Seed = 1 };
        using var trainer = new DmdTrainer(teacher, Spec, cfg, null, buildNetwork: build);
        trainer.TrainStep();
        Assert.Equal(generatorCalls, nets[1].Calls.Count);
        Assert.Equal(1 + 3, nets[0].Calls.Count); // the fake: its DM call, then one denoising call per update
    }

    /// <summary>
    /// Online regression targets (teacher-regression-steps N): the real score's Heun ODE from the step's own input at its
    /// level. With N = 1 the ODE is one Euler step to 0, i.e. the teacher's denoising of that input, which a generator that
    /// still is the teacher (learning rate ~0) reproduces on every level: loss_reg 0. A target made on another level, from
    /// another input, with more steps or with the real score's guidance is not that.
    /// </summary>
    [Fact]
    public void TeacherRegressionTargetsAreTheRealScoresOdeFromTheStepsOwnInput()
    {
        var teacher = PerturbedNet(4);
        TrainingUtils.Freeze(teacher);
        var cfg = new DmdConfig { LambdaReg = 1, TeacherRegressionSteps = 1, BatchSize = 8, WarmupSteps = 0, LearningRate = 1e-30,
                                  WeightDecay = 0, GeneratorSteps = 4, FakePerLevel = true, Seed = 3 };
        Assert.False(cfg.UsesPairs);
        double Reg(DmdConfig c, int steps)
        {
            using var trainer = new DmdTrainer(teacher, Spec, c, null);
            return Enumerable.Range(0, steps).Max(_ => trainer.TrainStep()["loss_reg"]);
        }
        Assert.True(Reg(cfg, 8) < 1e-10); // eight steps: the levels of the chain, drawn at random, not only the first
        Assert.True(Reg(cfg with { TeacherRegressionSteps = 3 }, 1) > 1e-6);
        Assert.True(Reg(cfg with { GuidanceReal = 2 }, 1) > 1e-6);
        Assert.Throws<DmdInputException>(() => (cfg with { LambdaReg = 0 }).Validate());
        Assert.Throws<DmdInputException>(() => (cfg with { Mode = DmdMode.DmOnly }).Validate());
    }

    [Fact]
    public void AOneStepGeneratorStepIsUnchangedByTheFewStepMachinery()
    {
        // GeneratorSteps 1 draws nothing extra: the same run with and without the (default) setting written out is identical
        var teacher = PerturbedNet(4);
        TrainingUtils.Freeze(teacher);
        var cfg = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 8, WarmupSteps = 0, FakeUpdatesPerStep = 2, Seed = 2, Steps = 3 };
        using var a = new DmdTrainer(teacher, Spec, cfg, null);
        using var b = new DmdTrainer(teacher, Spec, cfg with { GeneratorSteps = 1, GeneratorSigmaMin = 0.3 }, null);
        for (int i = 0; i < 3; i++) { a.TrainStep(); b.TrainStep(); }
        foreach (var (pa, pb) in a.Generator.Net.parameters().Zip(b.Generator.Net.parameters())) Assert.True(TestUtil.Same(pa, pb));
    }

    /// <summary>
    /// A K-step run saves K and its levels (and its step networks); Load and Sample use them; `sample`/`eval` count K NFE;
    /// resume is bit for bit; runs average with `export`.
    /// </summary>
    [Theory]
    [InlineData(false, false, 0.0)]
    [InlineData(true, false, 0.0)]
    [InlineData(false, true, 0.0)]
    [InlineData(true, false, 0.5)]
    public void AFewStepRunSavesItsLevelsSamplesWithThemAndResumesBitForBit(bool fakePerLevel, bool separateStepNetworks, double carry)
    {
        var dir = TestUtil.TempDir();
        try
        {
            var teacherPath = Path.Combine(dir, "teacher.safetensors");
            DenoiserFile.Save(PerturbedNet(5), Spec, teacherPath);
            var cfg = new DmdConfig
            {
                Mode = DmdMode.DmOnly, BatchSize = 8, WarmupSteps = 0, FakeUpdatesPerStep = 2, Seed = 9, Steps = 4,
                GeneratorSteps = 3, SigmaMax = 20, GeneratorSigmaMin = 0.5, CheckpointEvery = 2, LogEvery = 1, FakePerLevel = fakePerLevel,
                SeparateStepNetworks = separateStepNetworks, StepNoiseCarry = carry,
            };
            var straight = Path.Combine(dir, "straight");
            using (var t = new DmdTrainer(DenoiserFile.Load(teacherPath).Net, Spec, cfg, null)) t.Run(straight, teacherPath, null);
            var resumed = Path.Combine(dir, "resumed");
            using (var t = new DmdTrainer(DenoiserFile.Load(teacherPath).Net, Spec, cfg, null)) t.Run(resumed, teacherPath, null, new RunOptions { StopAfter = 2 });
            using (var t = new DmdTrainer(DenoiserFile.Load(teacherPath).Net, Spec, cfg, null)) t.Run(resumed, teacherPath, null);

            Assert.Equal(fakePerLevel, new CheckpointStore(straight).Open()!.Has("fake-step3.safetensors"));
            var g = OneStepGenerator.Load(straight);
            Assert.Equal(3, g.Steps);
            Assert.Equal(cfg.GeneratorSigmas(Spec.SigmaData), g.Sigmas);
            var r = OneStepGenerator.Load(resumed);
            foreach (var (pa, pb) in g.Net.parameters().Zip(r.Net.parameters())) Assert.True(TestUtil.Same(pa, pb), "resumed run differs");
            Assert.Equal(separateStepNetworks ? 3 : 0, g.StepNetworkCount);
            Assert.Equal(carry, g.StepNoiseCarry);
            Assert.Equal(carry, OneStepGenerator.Load(Path.Combine(straight, "checkpoint")).StepNoiseCarry);
            var average = Path.Combine(dir, "average");
            OneStepGenerator.ExportAverage(new[] { straight, resumed }, average);
            var a = OneStepGenerator.Load(average);
            Assert.Equal(g.StepNetworkCount, a.StepNetworkCount);
            Assert.Equal(carry, a.StepNoiseCarry);
            foreach (var (pa, pb) in g.Net.parameters().Zip(a.Net.parameters())) Assert.True(allclose(pa, pb, 1e-6, 1e-7), "the average of one run's twins differs from it");

            var classes = new[] { 0, 2, 1, 1 };
            var z = ImageSampling.SeededNoise(Spec.SampleShape, 7, 4);
            var y = Rng.OneHot(tensor(classes.Select(c => (long)c).ToArray()), 3);
            var noise = OneStepGenerator.SeededStepNoise(Spec.SampleShape, 7, 4, 3);
            using (no_grad())
            {
                Assert.True(TestUtil.Same(g.Generate(z, y, noise), g.Sample(classes, seed: 7)));
                Assert.True(TestUtil.Same(g.Generate(z, y, steps: 1), g.Sample(classes, seed: 7, steps: 1)));
            }
            Assert.Throws<DmdInputException>(() => g.Sample(classes, steps: 4));
            // the noise between steps of image i depends on its seed alone, and differs from its starting noise
            var first = OneStepGenerator.SeededStepNoise(Spec.SampleShape, 8, 1, 3);
            Assert.True(TestUtil.Same(noise[1][1..2], first[1]));
            Assert.False(TestUtil.Same(noise[0][1..2], ImageSampling.SeededNoise(Spec.SampleShape, 8, 1)));

            var m = ModelDraw.Load(straight, null, null, 1);
            Assert.Equal(3, m.Nfe);
            Assert.Equal(2, ModelDraw.Load(straight, null, 2, 1).Nfe);
            Assert.Throws<DmdInputException>(() => ModelDraw.Load(straight, null, 5, 1));
            Assert.Equal(carry, m.Generator!.StepNoiseCarry);
            Assert.Equal(0.3, m.WithStepNoiseCarry(0.3).Generator!.StepNoiseCarry); // `eval`/`sample --step-noise-carry`
            Assert.Same(m, m.WithStepNoiseCarry(null));
            Assert.Throws<DmdInputException>(() => ModelDraw.Load(teacherPath, null, null, 1).WithStepNoiseCarry(0.3));
            if (separateStepNetworks) Assert.Throws<DmdInputException>(() => ModelDraw.Load(straight, "heun", null, 1)); // no denoiser at every level
        }
        finally { Directory.Delete(dir, true); }
    }
}
