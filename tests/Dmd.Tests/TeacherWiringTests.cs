using System.Collections;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using TorchSharp.PyBridge;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// The teacher's EDM loss and trainer against what DESIGN.md section 2 says: ln sigma ~ N(P_mean, P_std^2) and the
/// weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, observed through a denoiser that records its inputs; the
/// exact denoiser of Gaussian data minimises the loss and its expected loss is the analytic 1 per element; a run
/// stopped and resumed ends bit for bit where an uninterrupted one does; and the EMA halves its distance to the raw
/// weights every <see cref="TeacherConfig.EmaHalfLifeSteps"/> steps.
/// </summary>
public class TeacherWiringTests(ITestOutputHelper log)
{
    /// <summary>A denoiser that records the inputs it is called with and answers through a given function.</summary>
    sealed class Recorder(Func<Tensor, Tensor, Tensor> answer) : IDenoiser
    {
        public readonly List<Tensor> Sigmas = new(), Inputs = new();
        public int LabelDim => 0;

        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
        {
            Sigmas.Add(sigma.detach().clone());
            Inputs.Add(x.detach().clone());
            return answer(x, sigma);
        }
    }

    /// <summary>The exact denoiser of N(mu, s^2 I) with its shrinkage s^2 / (s^2 + sigma^2) scaled by k.</summary>
    sealed class ScaledShrinkage(Tensor mu, double s, double k) : IDenoiser
    {
        public int LabelDim => 0;

        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
        {
            var s2 = DenoiserExtensions.Broadcast(sigma, x).to(x.dtype).square();
            return mu.to(x.dtype) + k * s * s / (s * s + s2) * (x - mu.to(x.dtype));
        }
    }

    [Fact]
    public void TheLossDrawsLogNormalSigmasAddsSigmaTimesUnitNoiseAndWeightsByEdmsLambda()
    {
        const int n = 100_000;
        const double sd = 0.5;
        using var g = new Generator(21);
        var x0 = randn(new long[] { n, 3 }, generator: g) * 0.8 + 0.3;
        var error = tensor(new float[] { 0.1f, -0.2f, 0.3f }); // the denoiser is off by this, whatever the noise
        var rec = new Recorder((_, _) => x0 + error);
        var loss = EdmLoss.Compute(rec, x0, null, sd, new Generator(22)).item<float>();

        Assert.Single(rec.Sigmas);
        var sigma = rec.Sigmas[0];
        Assert.Equal(new long[] { n }, sigma.shape); // one noise level per sample
        var lnSigma = sigma.to(ScalarType.Float64).log();
        double mean = lnSigma.mean().item<double>(), std = lnSigma.std().item<double>();
        // the noise added is sigma times standard normal noise
        var z = ((rec.Inputs[0] - x0) / sigma.unsqueeze(1)).to(ScalarType.Float64);
        double zMean = z.mean().item<double>(), zStd = z.std().item<double>();
        // loss = mean over samples and elements of lambda(sigma_i) error_j^2, lambda = 1/sigma^2 + 1/sd^2
        var s = sigma.to(ScalarType.Float64);
        double expected = ((s.square() + sd * sd) / (s * sd).square()).mean().item<double>() * (0.01 + 0.04 + 0.09) / 3;
        log.WriteLine($"ln sigma: mean {mean:F5} (P_mean -1.2), std {std:F5} (P_std 1.2); noise/sigma: mean {zMean:F5}, std {zStd:F5}; " +
                      $"loss {loss:G7} vs {expected:G7} (rel {loss / expected - 1:E2})");

        // standard errors at n = 1e5: 0.0038 for the mean, 0.0027 for the std; 0.0010 / 0.0007 for the noise's
        Assert.InRange(mean, EdmLoss.PMean - 0.02, EdmLoss.PMean + 0.02);
        Assert.InRange(std, EdmLoss.PStd - 0.02, EdmLoss.PStd + 0.02);
        Assert.InRange(zMean, -0.01, 0.01);
        Assert.InRange(zStd, 0.99, 1.01);
        Assert.InRange(loss / expected, 1 - 1e-4, 1 + 1e-4);
    }

    [Fact]
    public void TheExactDenoiserOfGaussianDataMinimisesTheLossAtItsAnalyticValueOfOne()
    {
        const int n = 50_000;
        const double s = 0.7; // sigma_data = the data's std
        var mu = tensor(new float[] { 0.3f, -0.5f, 1.0f, 0.2f });
        using var g = new Generator(31);
        var x0 = mu + s * randn(new long[] { n, 4 }, generator: g);
        // every denoiser sees the same noise levels and the same noise
        double Loss(IDenoiser d) => EdmLoss.Compute(d, x0, null, s, new Generator(32)).to(ScalarType.Float64).item<double>();

        double ideal = Loss(new GaussianDenoiser(mu, s));
        var others = new (string Name, IDenoiser D)[]
        {
            ("mean + 0.1", new GaussianDenoiser(mu + 0.1f, s)),
            ("mean - 0.1", new GaussianDenoiser(mu - 0.1f, s)),
            ("shrinkage x 0.9", new ScaledShrinkage(mu, s, 0.9)),
            ("shrinkage x 1.1", new ScaledShrinkage(mu, s, 1.1)),
            ("data std x 0.9", new GaussianDenoiser(mu, 0.9 * s)),
            ("data std x 1.1", new GaussianDenoiser(mu, 1.1 * s)),
        };
        var losses = others.Select(o => (o.Name, Loss: Loss(o.D))).ToList();
        log.WriteLine($"ideal {ideal:F5}; " + string.Join("; ", losses.Select(o => $"{o.Name} {o.Loss:F5} (+{o.Loss - ideal:F5})")));

        foreach (var (name, l) in losses) Assert.True(l > ideal, $"{name}: loss {l} is not above the exact denoiser's {ideal}");
        // lambda(sigma) times the posterior variance s^2 sigma^2 / (s^2 + sigma^2) is 1 at every sigma; a squared standard
        // normal per element, so the Monte-Carlo standard error is sqrt(2 / (4 n)) = 0.0032
        Assert.InRange(ideal, 0.98, 1.02);
    }

    static readonly MlpSpec RingSpec = new() { Shape = new[] { 2 }, LabelDim = 8, SigmaData = 1.0, Width = 32, Depth = 2 };

    static readonly TeacherConfig ResumeConfig = new()
    {
        Steps = 12, BatchSize = 32, LearningRate = 1e-2, LrRampupSteps = 4, EmaHalfLifeSteps = 3, LabelDropout = 0.3,
        Seed = 3, CheckpointEvery = 100, LogEvery = 1,
    };

    static PointSet Ring() => PointDistributions.Sample("ring8", 500, seed: 4);

    /// <summary>Every tensor and value of a pickled optimizer state (optimizer.pt), by path.</summary>
    static Dictionary<string, object> OptimizerState(string path)
    {
        using var f = File.OpenRead(path);
        var result = new Dictionary<string, object>();
        void Walk(string prefix, object? o)
        {
            switch (o)
            {
                case Hashtable h:
                    foreach (DictionaryEntry e in h) Walk($"{prefix}/{e.Key}", e.Value);
                    break;
                case IList l when o is not string:
                    for (int i = 0; i < l.Count; i++) Walk($"{prefix}[{i}]", l[i]);
                    break;
                default:
                    result[prefix] = o ?? "null";
                    break;
            }
        }
        Walk("", PyTorchUnpickler.UnpickleStateDict(f));
        return result;
    }

    static Dictionary<string, object> RunState(string dir)
    {
        var ck = TestUtil.CheckpointFolder(dir);
        var d = new Dictionary<string, object>();
        foreach (var (k, v) in Checkpoint.LoadTensors(Path.Combine(ck, "net.safetensors"))) d["net." + k] = v;
        foreach (var (k, v) in Checkpoint.LoadTensors(Path.Combine(ck, "ema.safetensors"))) d["ema." + k] = v;
        foreach (var (k, v) in Checkpoint.LoadTensors(Path.Combine(dir, "teacher.safetensors"))) d["teacher." + k] = v;
        foreach (var (k, v) in OptimizerState(Path.Combine(ck, "optimizer.pt"))) d["adam" + k] = v;
        return d;
    }

    [Fact]
    public void ATeacherRunStoppedAndResumedEndsBitForBitWhereAnUninterruptedOneDoes()
    {
        var data = Ring();
        var whole = TestUtil.TempDir();
        using (var a = new TeacherTrainer(RingSpec, ResumeConfig, data)) Assert.True(a.Run(whole, "ring8"));

        var split = TestUtil.TempDir();
        using (var b = new TeacherTrainer(RingSpec, ResumeConfig, data)) b.Run(split, "ring8", new RunOptions { StopAfter = 5 });
        Assert.Equal(5, TestUtil.CheckpointStep(split));
        Assert.False(File.Exists(Path.Combine(split, "teacher.safetensors")));
        var messages = new List<string>();
        using (var c = new TeacherTrainer(RingSpec, ResumeConfig, data)) Assert.True(c.Run(split, "ring8", new RunOptions { OnMessage = messages.Add }));
        Assert.Contains(messages, m => m.StartsWith("resuming from step 5"));

        var expected = RunState(whole);
        var got = RunState(split);
        Assert.Equal(expected.Keys.Order(), got.Keys.Order());
        Assert.Contains(expected.Keys, k => k.Contains("exp_avg_sq"));
        int tensors = 0;
        foreach (var (k, e) in expected)
        {
            if (e is Tensor t) { tensors++; Assert.True(TestUtil.Same(t, (Tensor)got[k]), $"{k} differs after the resume"); }
            else Assert.True(Equals(e, got[k]), $"{k}: {e} before, {got[k]} after the resume");
        }
        log.WriteLine($"{tensors} tensors and {expected.Count - tensors} other values bit-identical; keys: {string.Join(" ", expected.Keys.Where(k => k.StartsWith("adam")).Take(8))}");
        // the trainer's teacher is its EMA
        foreach (var k in expected.Keys.Where(k => k.StartsWith("ema.")))
            Assert.True(TestUtil.Same((Tensor)got[k], (Tensor)got["teacher." + k[4..]]), $"teacher.safetensors is not the EMA at {k}");
        Assert.Contains(expected.Keys, k => k.StartsWith("net.") && !TestUtil.Same((Tensor)expected[k], (Tensor)expected["ema." + k[4..]]));

        // the log holds each step once, with the values of the uninterrupted run (rss_mb aside)
        string[] Rows(string dir)
        {
            var lines = File.ReadAllLines(Path.Combine(dir, "losses.csv"));
            int lossCol = Array.IndexOf(lines[0].Split(','), "loss");
            Assert.True(lossCol > 0, "losses.csv has no loss column");
            return lines.Skip(1).Select(l => l.Split(',')).Select(c => c[0] + "," + c[lossCol]).ToArray();
        }
        var rowsWhole = Rows(whole);
        var rowsSplit = Rows(split);
        Assert.Equal(Enumerable.Range(1, 12).Select(i => i.ToString()), rowsSplit.Select(r => r.Split(',')[0]));
        Assert.Equal(rowsWhole, rowsSplit);
    }

    [Fact]
    public void TheEmaHalvesItsDistanceToTheRawWeightsEveryHalfLife()
    {
        // A jump of 1 in every raw weight (the EMA set one below them) with a learning rate so small that the raw
        // weights stay put: after n steps the EMA is 0.5^(n/H) below them, 0.5 after exactly H steps.
        const int h = 8;
        var data = Ring();
        using var t = new TeacherTrainer(RingSpec, ResumeConfig with { LearningRate = 1e-9, LrRampupSteps = 0, EmaHalfLifeSteps = h, Steps = 100 }, data);
        using (no_grad())
        {
            var net = t.Net.state_dict();
            foreach (var (k, e) in t.Ema.state_dict()) if (e.is_floating_point()) e.copy_(net[k] - 1);
        }
        var gaps = new List<double>();
        for (int step = 1; step <= h + 1; step++)
        {
            t.TrainStep();
            Assert.False(t.LastStepSkipped);
            var net = t.Net.state_dict();
            var gap = t.Ema.state_dict().Where(kv => kv.Value.is_floating_point())
                .Select(kv => (kv.Key, Gap: (net[kv.Key] - kv.Value).to(ScalarType.Float64))).ToList();
            double lo = gap.Min(x => x.Gap.min().item<double>()), hi = gap.Max(x => x.Gap.max().item<double>());
            gaps.Add((lo + hi) / 2);
            double want = Math.Pow(0.5, step / (double)h);
            Assert.True(Math.Abs(lo - want) < 1e-5 && Math.Abs(hi - want) < 1e-5, $"after {step} steps the EMA is {lo}..{hi} below the raw weights, not {want}");
        }
        log.WriteLine("EMA gap after 1..9 steps (half-life 8): " + string.Join(" ", gaps.Select(x => x.ToString("F6"))));
        Assert.InRange(gaps[h - 1], 0.5 - 1e-5, 0.5 + 1e-5);
    }

    [Fact]
    public void TheEmaFollowsTheWeightsAfterEachOptimiserStepWithTheConfiguredHalfLife()
    {
        // a real learning rate: after each step ema = ema + (1 - beta) (net - ema) with the weights the step produced,
        // beta = 0.5^(1 / half-life) per step whatever the batch size
        const double h = 2.5;
        double beta = Math.Pow(0.5, 1 / h);
        var data = Ring();
        using var t = new TeacherTrainer(RingSpec, ResumeConfig with { EmaHalfLifeSteps = h, BatchSize = 48 }, data);
        Dictionary<string, Tensor> Snapshot(nn.Module m) => m.state_dict().Where(kv => kv.Value.is_floating_point())
            .ToDictionary(kv => kv.Key, kv => kv.Value.detach().to(ScalarType.Float64).clone());
        var ema = Snapshot(t.Ema);
        Assert.All(ema, kv => Assert.True(TestUtil.Same(kv.Value, Snapshot(t.Net)[kv.Key]), "the EMA starts as a copy of the weights"));
        double worst = 0, moved = 0;
        for (int step = 1; step <= 6; step++)
        {
            var before = Snapshot(t.Net);
            t.TrainStep();
            var net = Snapshot(t.Net);
            var got = Snapshot(t.Ema);
            foreach (var k in ema.Keys.ToList())
            {
                ema[k] = ema[k] + (1 - beta) * (net[k] - ema[k]);
                worst = Math.Max(worst, (got[k] - ema[k]).abs().max().item<double>());
                moved = Math.Max(moved, (net[k] - before[k]).abs().max().item<double>());
            }
        }
        log.WriteLine($"largest EMA deviation from the recursion over 6 steps: {worst:E2}; largest weight change per step: {moved:E2}");
        Assert.True(moved > 1e-3, "the weights hardly moved, so the check below would not see which weights the EMA follows");
        Assert.True(worst < 1e-6, $"the EMA is {worst} away from ema + (1 - 0.5^(1/H)) (weights after the step - ema)");
    }
}
