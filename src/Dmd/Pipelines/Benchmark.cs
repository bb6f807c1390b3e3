using System.Diagnostics;
using Dmd.Data;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>Sampling speed of one model: per-batch latency (median and 90th percentile) and samples/s.</summary>
public sealed record ModelSpeed(string Model, string Sampler, int Nfe, int Batch, double MedianBatchMs, double P90BatchMs, double SamplesPerSecond);

/// <summary>What `dmd bench` measured (written as JSON).</summary>
public sealed record BenchResult(string Machine, int Threads, List<ModelSpeed> Models, double? SpeedUp,
                                 double? DmdIterationMs, int? DmdBatch, long PeakRssMb,
                                 double? TrainImagesPerSecond = null, int? TrainBatch = null, RssTrend? Rss = null,
                                 List<DmdIterationSpeed>? DmdIterations = null, double? ConvPeakGflops = null);

/// <summary>
/// One DMD iteration of a recipe: its time, the work <see cref="Networks.FlopCounter"/> counts in it (GFLOP, forward and
/// backward) and the rate that makes; <paramref name="PeakFraction"/> = that rate / the machine's measured convolution peak.
/// </summary>
public sealed record DmdIterationSpeed(string Recipe, int Batch, double Ms, double Gflop, double AchievedGflops, double? PeakFraction);

/// <summary>
/// What `dmd bench` is asked to measure: one or two models (or the teacher and full-DMD generator of a `toy2d` run
/// folder), and optionally teacher training, DMD iterations and a run log's RSS trend.
/// </summary>
/// <param name="Models">Model files or folders (one or two; none with <paramref name="Run"/> or for an RSS check alone).</param>
/// <param name="Run">A `dmd toy2d` run folder: its teacher (Heun) against its full-DMD generator, and its DMD iteration.</param>
/// <param name="Sampler">Sampler of teachers (heun or euler; generators run their own steps).</param>
/// <param name="Steps">Teacher sampler steps (null: Heun 18).</param>
/// <param name="Batch">Samples per timed batch (null: 64 images or 4096 points).</param>
/// <param name="Repeats">Timed batches per model after a warm-up one.</param>
/// <param name="DmdIterations">With <paramref name="Run"/>: timed DMD iterations.</param>
/// <param name="Train">Teacher training steps to time (0 = none).</param>
/// <param name="TrainBatch">Their batch.</param>
/// <param name="Distill">DMD iterations per recipe to time (0 = none); see <see cref="Benchmark.DmdIterations"/>.</param>
/// <param name="DistillBatch">Their batch.</param>
/// <param name="RssLog">A run's losses.csv whose RSS trend to judge.</param>
/// <param name="RssSteps">Its window FROM:TO in steps.</param>
/// <param name="Out">The JSON file (null: bench.json in the run folder, else runs/bench.json; rss.json beside the log for an RSS check alone).</param>
public sealed record BenchRequest(IReadOnlyList<string> Models, string? Run = null, string? Sampler = null, int? Steps = null, int? Batch = null,
                                  int Repeats = 5, int DmdIterations = 30, int Train = 0, int TrainBatch = 64, int Distill = 0,
                                  int DistillBatch = 16, string? RssLog = null, string? RssSteps = null, string? Out = null)
{
    /// <summary>Only a run log's RSS trend is asked for.</summary>
    public bool RssOnly => RssLog is not null && Models.Count == 0 && Run is null;

    /// <summary>The models timed: the run folder's two, or <see cref="Models"/>.</summary>
    public IReadOnlyList<string> Paths => Run is not null
        ? new[] { Path.Combine(Run, "teacher", "teacher.safetensors"), Path.Combine(Run, "dmd-full", "generator.safetensors") }
        : Models;

    /// <summary>Where the result goes.</summary>
    public string OutPath => Out ?? (RssOnly ? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(RssLog!))!, "rss.json")
                                   : Run is not null ? Path.Combine(Run, "bench.json") : "runs/bench.json");

    /// <summary>The RSS trend of <see cref="RssLog"/> over <see cref="RssSteps"/> (FROM:TO), or null without a log.</summary>
    public RssTrend? Trend()
    {
        if (RssLog is null) return null;
        if (RssSteps is null) return RssTrend.FromLog(RssLog);
        var parts = RssSteps.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[0], out int a) || !int.TryParse(parts[1], out int b))
            throw new DmdInputException($"--rss-steps '{RssSteps}': write FROM:TO, e.g. 3500:5300");
        return RssTrend.FromLog(RssLog, a, b);
    }
}

/// <summary>RSS of a logged run (the rss_mb column of losses.csv): at 10 % and at 100 % of its steps, and the peak.</summary>
public sealed record RssTrend(string Log, int FromStep, int ToStep, double RssAt10PercentMb, double RssAtEndMb, double GrowthPercent, double PeakMb)
{
    /// <summary>One line: the window, RSS at 10 % and at the end, the growth and its verdict (flat under 5 %), the peak.</summary>
    public string Describe() =>
        $"RSS of {Log} (steps {FromStep}-{ToStep}): {RssAt10PercentMb:F0} MB at 10 %, {RssAtEndMb:F0} MB at the end: " +
        $"{GrowthPercent:+0.0;-0.0} % ({(GrowthPercent < 5 ? "flat, under 5 %" : "GROWS by 5 % or more")}); peak {PeakMb:F0} MB";

    /// <summary>Reads a losses.csv; growth = (median RSS of the last 5 % of rows) / (median RSS around 10 %) - 1.</summary>
    public static RssTrend FromLog(string csvPath, int fromStep = 0, int toStep = int.MaxValue)
    {
        if (!File.Exists(csvPath)) throw new DmdInputException($"log not found: {csvPath}");
        var series = CsvLog.Read(csvPath);
        if (!series.TryGetValue("rss_mb", out var rss) || rss.Count < 20)
            throw new DmdInputException($"{csvPath} has no rss_mb column with at least 20 rows (training runs log it)");
        var pts = rss.Where(p => p.Step >= fromStep && p.Step <= toStep).OrderBy(p => p.Step).ToList();
        if (pts.Count < 20) throw new DmdInputException($"{csvPath} has {pts.Count} rss_mb rows between steps {fromStep} and {toStep}; need at least 20");
        int n = pts.Count, w = Math.Max(1, n / 20);
        double Median(IEnumerable<double> v) { var a = v.Order().ToArray(); return a[a.Length / 2]; }
        int at10 = n / 10;
        double early = Median(pts.Skip(Math.Max(0, at10 - w / 2)).Take(w).Select(p => p.Value));
        double late = Median(pts.Skip(n - w).Select(p => p.Value));
        return new RssTrend(csvPath, (int)pts[0].Step, (int)pts[^1].Step, early, late, 100 * (late / early - 1), pts.Max(p => p.Value));
    }
}

/// <summary>
/// The timings `dmd bench` reports: sampling speed (warm-up, then repeats), DMD iterations with three networks resident,
/// teacher training steps. Wall-clock numbers of this machine: compare only runs made side by side.
/// </summary>
public static class Benchmark
{
    /// <summary>Per-batch latency (median, 90th percentile) and samples/s of <paramref name="repeats"/> batches after one warm-up batch.</summary>
    public static ModelSpeed SamplingSpeed(ModelDraw m, int batch, int repeats)
    {
        using var g = new Generator(0);
        var z = Rng.Normal(new long[] { batch }.Concat(m.Spec.SampleShape.Select(s => (long)s)).ToArray(), g);
        var y = Rng.OneHotLabels(m.Spec.LabelDim, batch, g);
        var times = new List<double>();
        for (int i = 0; i <= repeats; i++)
        {
            using var scope = NewDisposeScope();
            var (_, secs) = m.Draw(z, y, batch);
            if (i > 0) times.Add(secs); // the first call is the warm-up
        }
        times.Sort();
        double median = times[times.Count / 2], p90 = times[Math.Min(times.Count - 1, (int)Math.Ceiling(0.9 * times.Count) - 1)];
        return new ModelSpeed(m.Path, m.Sampler, m.Nfe, batch, median * 1000, p90 * 1000, batch / median);
    }

    /// <summary>Milliseconds per <see cref="DmdTrainer.TrainStep"/> over <paramref name="iterations"/> steps after <paramref name="warmup"/> ones.</summary>
    public static double DmdIterationMs(DmdTrainer trainer, int warmup, int iterations)
    {
        for (int i = 0; i < warmup; i++) trainer.TrainStep();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < iterations; i++) trainer.TrainStep();
        return sw.Elapsed.TotalMilliseconds / iterations;
    }

    /// <summary>DMD iteration time of a `dmd toy2d` run folder: its teacher, its full DMD config and its pairs.</summary>
    public static double ToyRunDmdIterationMs(string runDir, ModelDraw teacher, int iterations, out int batch)
    {
        var cfg = Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(runDir, "dmd-full", "config.json")).Config;
        using var trainer = new DmdTrainer(DenoiserFile.Load(teacher.Path).Net, teacher.Spec, cfg with { WarmupSteps = 1 },
                                           RegressionPairs.Load(Path.Combine(runDir, "pairs", "pairs.safetensors")));
        batch = cfg.BatchSize;
        return DmdIterationMs(trainer, 5, iterations);
    }

    /// <summary>`dmd bench --rss-log` alone: the trend of the log, written to <see cref="BenchRequest.OutPath"/>.</summary>
    public static RssTrend RunRssOnly(BenchRequest req)
    {
        var trend = req.Trend()!;
        Checkpoint.SaveJson(trend, req.OutPath);
        return trend;
    }

    /// <summary>Loads the request's one or two models (teachers with its sampler and steps, generators with their own steps),
    /// after checking that the result file can be written.</summary>
    public static List<ModelDraw> LoadModels(BenchRequest req)
    {
        if (req.Paths.Count is < 1 or > 2) throw new DmdInputException("give one or two --model paths, or --run RUN_FOLDER");
        Checkpoint.EnsureWritableFile(req.OutPath, "--out");
        return req.Paths.Select(p => ModelDraw.IsGenerator(p) ? ModelDraw.Load(p, null, null, 1.0)
                                                              : ModelDraw.Load(p, req.Sampler, req.Steps, 1.0)).ToList();
    }

    /// <summary>
    /// Everything a request asks for, on the loaded <paramref name="draws"/> at the current thread count: sampling speed of
    /// each model and their ratio, the run's or the recipes' DMD iterations, teacher training, the RSS trend; writes the
    /// result to <see cref="BenchRequest.OutPath"/>. <paramref name="onMessage"/> hears what is being timed.
    /// </summary>
    public static BenchResult Run(BenchRequest req, IReadOnlyList<ModelDraw> draws, Action<string>? onMessage = null)
    {
        int b = req.Batch ?? (draws[0].Spec.IsImage ? 64 : 4096);
        var speeds = new List<ModelSpeed>();
        foreach (var m in draws)
        {
            onMessage?.Invoke($"timing {m.Path}: {m.SamplerName}, {m.Nfe} NFE, {req.Repeats} batches of {b} after a warm-up one ({Wording.Threads(get_num_threads())})");
            speeds.Add(SamplingSpeed(m, b, req.Repeats));
        }
        double? ratio = speeds.Count == 2 ? speeds[1].SamplesPerSecond / speeds[0].SamplesPerSecond : null;
        double? iterMs = null; int? dmdBatch = null;
        if (req.Run is not null)
        {
            iterMs = ToyRunDmdIterationMs(req.Run, draws[0], req.DmdIterations, out int tb0);
            dmdBatch = tb0;
        }
        List<DmdIterationSpeed>? recipes = null;
        double? peak = null;
        if (req.Distill > 0)
        {
            onMessage?.Invoke($"timing DMD iterations of two recipes, batch {req.DistillBatch}, and the convolution peak");
            dmdBatch = req.DistillBatch;
            peak = ConvPeakGflops();
            recipes = DmdIterations(draws[0], req.DistillBatch, req.Distill, peak);
            iterMs = recipes[0].Ms;
        }
        double? trainRate = null; int? tb = null;
        if (req.Train > 0)
        {
            tb = req.TrainBatch;
            trainRate = TeacherTrainingImagesPerSecond(draws[0], req.TrainBatch, req.Train);
        }
        var res = new BenchResult($"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                                  get_num_threads(), speeds, ratio, iterMs, dmdBatch, Process.GetCurrentProcess().PeakWorkingSet64 >> 20,
                                  trainRate, tb, req.Trend(), recipes, peak);
        Checkpoint.SaveJson(res, req.OutPath);
        return res;
    }

    /// <summary>
    /// The three recipes `bench --distill` times on a teacher with <paramref name="batch"/> generated samples: the paper's DMD
    /// (one fake update on the generator's batch, lambda_reg 0.25 on as many random pairs), DMD2 (5 fake updates on
    /// fresh batches, the GAN head at DMD2's weights on random real samples of the teacher's shape, no pairs) and DMD2's
    /// without the GAN with SiD's loss as the DM term (its generator step backpropagates through both denoisers). Each: median
    /// over <paramref name="iterations"/> after 3 warm-up ones, then one more iteration counted by <see cref="Networks.FlopCounter"/>.
    /// <paramref name="peakGflops"/> (<see cref="ConvPeakGflops"/>) gives each its fraction of the machine's peak.
    /// </summary>
    public static List<DmdIterationSpeed> DmdIterations(ModelDraw teacher, int batch, int iterations, double? peakGflops)
    {
        var shape = new long[] { 4 * batch }.Concat(teacher.Spec.SampleShape.Select(s => (long)s)).ToArray();
        int classes = teacher.Spec.LabelDim;
        using var g = new Generator(1);
        var pairs = new RegressionPairs(randn(shape, generator: g), randn(shape, generator: g).clamp(-1, 1), Rng.OneHotLabels(classes, 4 * batch, g),
                                        new PairInfo("random", 0, 0, 1, 0, 4 * batch));
        var labels = classes > 0 ? randint(0, classes, 4 * batch, generator: g) : null;
        IDataSource real = teacher.Spec.IsImage
            ? new ImageDataset(randint(0, 256, shape, dtype: ScalarType.Byte, generator: g), labels, classes)
            : new PointSet(randn(shape, generator: g), labels, classes);
        var paper = new DmdConfig { BatchSize = batch, RegressionBatchSize = batch, WarmupSteps = 1, FakeUpdatesPerStep = 1 };
        var dmd2 = new DmdConfig { BatchSize = batch, WarmupSteps = 1, LambdaReg = 0, FakeUpdatesPerStep = 5, GanWeight = 3e-3 };
        var sid = dmd2 with { GanWeight = 0, DmLoss = DmLoss.Sid };
        var result = new List<DmdIterationSpeed>();
        foreach (var (name, cfg) in new[] { ("DMD (1 fake update, pairs)", paper), ("DMD2 (5 fake updates, GAN, no pairs)", dmd2),
                                            ("SiD's loss (5 fake updates, no GAN, no pairs)", sid) })
        {
            using var trainer = new DmdTrainer(teacher.Net, teacher.Spec, cfg, cfg.UsesPairs ? pairs : null, realData: cfg.UsesRealData ? real : null);
            for (int i = 0; i < 3; i++) trainer.TrainStep();
            var times = new List<double>();
            for (int i = 0; i < iterations; i++)
            {
                var sw = Stopwatch.StartNew();
                trainer.TrainStep();
                times.Add(sw.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[times.Count / 2];
            long flops;
            using (Networks.FlopCounter.Count()) { trainer.TrainStep(); flops = Networks.FlopCounter.Total; }
            double rate = flops / 1e9 / (ms / 1000);
            result.Add(new DmdIterationSpeed(name, batch, ms, flops / 1e9, rate, peakGflops is double p && p > 0 && flops > 0 ? rate / p : null));
        }
        return result;
    }

    /// <summary>
    /// This machine's convolution peak at the current thread count: GFLOP/s of one large fp32 convolution (batch 16,
    /// 128 -> 128 channels, 3x3, 32x32; 4.8 GFLOP), median of 7 after 2 warm-up runs.
    /// </summary>
    public static double ConvPeakGflops()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(3);
        var x = randn(new long[] { 16, 128, 32, 32 }, generator: g);
        var w = randn(new long[] { 128, 128, 3, 3 }, generator: g);
        double flops = 2.0 * 16 * 128 * 32 * 32 * 128 * 9;
        using var _ = no_grad();
        for (int i = 0; i < 2; i++) nn.functional.conv2d(x, w, padding: new long[] { 1, 1 }).Dispose();
        var times = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            var sw = Stopwatch.StartNew();
            nn.functional.conv2d(x, w, padding: new long[] { 1, 1 }).Dispose();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        return flops / 1e9 / times[times.Count / 2];
    }

    /// <summary>Teacher training images/s (EDM loss, Adam) on synthetic images of the model's shape, after 3 warm-up steps.</summary>
    public static double TeacherTrainingImagesPerSecond(ModelDraw teacher, int batch, int steps)
    {
        using var g = new Generator(2);
        var images = randint(0, 256, new long[] { 4 * batch }.Concat(teacher.Spec.SampleShape.Select(s => (long)s)).ToArray(), dtype: ScalarType.Byte, generator: g);
        var data = new ImageDataset(images, teacher.Spec.LabelDim > 0 ? randint(0, teacher.Spec.LabelDim, 4 * batch, generator: g) : null, teacher.Spec.LabelDim);
        using var trainer = new TeacherTrainer(teacher.Spec, new TeacherConfig { BatchSize = batch }, data);
        for (int i = 0; i < 3; i++) trainer.TrainStep();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++) trainer.TrainStep();
        return steps * batch / sw.Elapsed.TotalSeconds;
    }
}
