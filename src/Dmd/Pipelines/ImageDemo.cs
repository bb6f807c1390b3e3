using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Metrics;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>The demo's settings: the shipped teacher, a time budget, and the DMD recipe for a short run.</summary>
public sealed record ImageDemoConfig
{
    /// <summary>the teacher: a teacher.safetensors or a folder holding one</summary>
    public string Teacher { get; init; } = "models/fashion-mnist-teacher";
    /// <summary>the whole demo, pairs to report</summary>
    public double BudgetMinutes { get; init; } = 10;
    /// <summary>regression pairs = the teacher's 35-NFE samples for the metrics</summary>
    public int PairCount { get; init; } = 640;
    /// <summary>Heun steps (35 NFE)</summary>
    public int PairSteps { get; init; } = 18;
    /// <summary>teacher samples per batch while making the pairs</summary>
    public int PairBatch { get; init; } = 64;
    /// <summary>The DMD recipe. Its GuidanceReal (default 1: none, as the paper's ImageNet runs; see the student's card)
    /// and SigmaMax also make the regression pairs and the teacher's samples, so the two targets agree.</summary>
    public DmdConfig Dmd { get; init; } = new()
    {
        Steps = 1_000_000, BatchSize = 16, RegressionBatchSize = 16, WarmupSteps = 50, LearningRate = 5e-5, FakeUpdatesPerStep = 5,
        FakeFreshBatches = false, // the rule of the shipped student's DMD stage; DMD2's fresh batches did no better continuing it (README)
        GridEvery = 100, CheckpointEvery = 100, LogEvery = 10, EmaDecay = 0.999,
    };
}

/// <summary>One row of the demo's table.</summary>
public sealed record ImageModelResult(string Model, int Nfe, double? FdFmnist, double? ClassAccuracy, double[]? PerClassAccuracy, double ImagesPerSecond);

/// <summary>What the demo measured (written as results.json beside report.md).</summary>
public sealed record ImageDemoResults(List<ImageModelResult> Rows, int Samples, int DmdSteps, double DmdSeconds, double PairSeconds,
                                      double TotalSeconds, double SpeedUp, string RegressionLoss, double Guidance, long PeakRssMb);

/// <summary>
/// The main job on images: regression pairs from the teacher (35-NFE Heun), DMD for the time left in the budget,
/// then teacher (35 NFE), teacher in one step and the DMD student (1 NFE) measured on the same number of samples
/// with the same labels: FD-FMNIST against the shipped test statistics, per-class accuracy by the shipped
/// classifier, images/s; and report.md with the pictures. Everything lands in one folder and resumes.
/// </summary>
public sealed class ImageDemo
{
    /// <summary>The demo's settings.</summary>
    public ImageDemoConfig Config { get; }
    /// <summary>
    /// Progress of a stage: (stage name, done, total, losses or null); "pairs" counts pairs, "dmd (seconds of its budget)"
    /// counts seconds.
    /// </summary>
    public Action<string, int, int, IReadOnlyDictionary<string, double>?>? OnProgress { get; set; }
    /// <summary>Status lines (stage summaries, resumes, skipped steps).</summary>
    public Action<string>? OnMessage { get; set; }

    /// <summary>Sets up the demo; nothing runs until <see cref="Run"/>.</summary>
    public ImageDemo(ImageDemoConfig config) => Config = config;

    /// <summary>CFG of the real score, the pairs and the teacher's samples: one setting, the DMD recipe's.</summary>
    double Guidance => Config.Dmd.GuidanceReal;

    /// <summary>Seconds kept for the measurements and the report after distillation.</summary>
    static double ReserveSeconds(double budget) => Math.Min(40, 0.1 * budget);

    /// <summary>
    /// Runs the whole demo into <paramref name="outDir"/> (<c>pairs/</c>, <c>dmd/</c>, <c>results.json</c>, <c>report.md</c>),
    /// resuming what an earlier run there left, and returns what it measured. FD-FMNIST and class accuracy need a
    /// Fashion-MNIST teacher ((1, 32, 32), 10 classes) and the shipped classifier; other teachers get pictures and speed only.
    /// </summary>
    public ImageDemoResults Run(string outDir)
    {
        var clock = Stopwatch.StartNew();
        double budget = Config.BudgetMinutes * 60;
        var (teacher, spec) = DenoiserFile.Load(Config.Teacher);
        bool fmnist = spec.SampleShape.SequenceEqual(new[] { 1, 32, 32 }) && spec.LabelDim == FmnistClassifier.NumClasses;
        using var judge = fmnist ? FdFmnist.Load() : null; // before any long work: a missing classifier fails now
        if (!fmnist) OnMessage?.Invoke($"teacher makes [{string.Join(",", spec.SampleShape)}] images with {spec.LabelDim} classes: no Fashion-MNIST metrics, pictures and speed only");
        Directory.CreateDirectory(outDir);

        // 1. regression pairs (also the teacher's samples for the metrics)
        var pairClock = Stopwatch.StartNew();
        var pairs = RegressionPairs.Generate(teacher, spec.SampleShape, Config.PairCount, Config.PairSteps, Guidance, seed: 3,
                                             batchSize: Config.PairBatch, onBatch: (d, n) => OnProgress?.Invoke("pairs", d, n, null),
                                             shardDir: Path.Combine(outDir, "pairs"), sigmaMax: Config.Dmd.SigmaMax);
        double pairSeconds = pairClock.Elapsed.TotalSeconds;
        TrainingUtils.ReleaseFreedMemory();

        // 2. DMD until the budget, less the reserve, is spent
        var dmdDir = Path.Combine(outDir, "dmd");
        var cfg = Config.Dmd;
        // DMD2's GAN (when on) learns from the teacher's own training data, as its run folder names it
        var ganData = cfg.UsesRealData ? DmdTrainer.TeacherData(Config.Teacher) : null;
        using var trainer = new DmdTrainer(teacher, spec, cfg, pairs, realData: ganData is null ? null : DmdTrainer.LoadRealData(ganData, spec));
        // DMD runs until the deadline (the budget less the reserve for the measurements); its share is what the pairs left
        double deadline = budget - ReserveSeconds(budget);
        double dmdBudget = Math.Ceiling(Math.Max(0, deadline - clock.Elapsed.TotalSeconds));
        OnMessage?.Invoke($"pairs: {pairs.Count} in {pairSeconds:F0} s; distilling for {dmdBudget:F0} s " +
                          $"(batch {cfg.BatchSize} + {cfg.RegressionBatchSize} pairs, regression loss {trainer.RegressionLoss})");
        var dmdClock = Stopwatch.StartNew();
        trainer.Run(dmdDir, Config.Teacher, Path.Combine(outDir, "pairs"), new RunOptions
        {
            OnStep = (s, n, l) => OnProgress?.Invoke("dmd (seconds of its budget)", (int)Math.Min(dmdClock.Elapsed.TotalSeconds, dmdBudget), (int)Math.Max(1, dmdBudget),
                                                     new Dictionary<string, double>(l) { ["step"] = s }),
            OnMessage = OnMessage,
            // at least one DMD step, so the report always has a student, however slow the machine
            Stop = () => trainer.Step > 0 && clock.Elapsed.TotalSeconds > deadline,
        }, ganData);
        double dmdSeconds = dmdClock.Elapsed.TotalSeconds;

        // 3. measurements: same labels for all rows; the teacher's samples are the pairs' x_ref
        int n = (int)pairs.Count;
        var y = pairs.Y;
        var z = ImageSampling.SeededNoise(spec.SampleShape, 1_000_000, n); // noise no pair used
        var rows = new List<ImageModelResult>();
        double teacherRate = TeacherRate(teacher, z, y);
        var teacherName = $"teacher (Heun {Config.PairSteps} steps{(Guidance != 1 ? $", CFG {Guidance.ToString(CultureInfo.InvariantCulture)}" : "")})";
        rows.Add(Measure(teacherName, pairs.Info.Nfe, pairs.X, y, judge, teacherRate));
        var initial = new OneStepGenerator(teacher, Config.Dmd.SigmaMax);
        rows.Add(Measure("teacher, 1 step", 1, Draw(initial, z, y, out _), y, judge, double.NaN));
        var student = Draw(trainer.Output, z, y, out double studentRate);
        rows.Add(Measure("DMD student", trainer.Output.Steps, student, y, judge, studentRate));
        double speedUp = studentRate / teacherRate;

        var res = new ImageDemoResults(rows, n, trainer.Step, dmdSeconds, pairSeconds, clock.Elapsed.TotalSeconds, speedUp, trainer.RegressionLoss,
                                       Guidance, Process.GetCurrentProcess().PeakWorkingSet64 >> 20);
        Checkpoint.SaveJson(res, Path.Combine(outDir, "results.json"));
        WriteReport(outDir, res, spec, cfg, judge?.RealPerClassAccuracy());
        TrainingUtils.ReleaseFreedMemory();
        return res;
    }

    /// <summary>The teacher's 35-NFE Heun images/s on one batch of 64 (the batch the student is timed with).</summary>
    double TeacherRate(IDenoiser teacher, Tensor z, Tensor? y)
    {
        int b = (int)Math.Min(64, z.shape[0]);
        using var scope = NewDisposeScope();
        var sw = Stopwatch.StartNew();
        using (no_grad()) ImageSampling.Generate(teacher, z[..b], y?[..b], "heun", Config.PairSteps, Guidance, batch: b);
        return b / sw.Elapsed.TotalSeconds;
    }

    static Tensor Draw(OneStepGenerator g, Tensor z, Tensor? y, out double imagesPerSecond)
    {
        var sw = Stopwatch.StartNew();
        var x = g.GenerateInBatches(z, y, batch: 64, stepNoise: OneStepGenerator.SeededStepNoise(z.shape.Skip(1).Select(d => (int)d).ToArray(), 1_000_000, (int)z.shape[0], g.Steps));
        imagesPerSecond = z.shape[0] / sw.Elapsed.TotalSeconds;
        return x;
    }

    static ImageModelResult Measure(string name, int nfe, Tensor x, Tensor? y, FdFmnist? judge, double rate)
    {
        if (judge is null) return new ImageModelResult(name, nfe, null, null, null, rate);
        var acc = y is null ? null : judge.ClassAccuracy(x, y);
        return new ImageModelResult(name, nfe, judge.Distance(x), acc?.Overall, acc?.PerClass, rate);
    }

    static string F(double? v, string fmt) => v is double d && double.IsFinite(d) ? d.ToString(fmt, CultureInfo.InvariantCulture) : "-";

    void WriteReport(string outDir, ImageDemoResults r, NetworkSpec spec, DmdConfig cfg, double[]? realPerClass)
    {
        var grids = Directory.GetFiles(Path.Combine(outDir, "dmd"), "samples-*.png").Select(Path.GetFileName).Order().ToList();
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine("# DMD demo: one-step Fashion-MNIST generator from a 35-NFE teacher").AppendLine();
        sb.AppendLine(string.Create(inv, $"Teacher `{Config.Teacher}` ({spec}). {r.Samples} regression pairs ({Config.PairSteps}-step Heun) in {r.PairSeconds:F0} s; ")
          + string.Create(inv, $"DMD for {r.DmdSteps} steps in {r.DmdSeconds:F0} s (batch {cfg.BatchSize} + {cfg.RegressionBatchSize} pairs, lr {cfg.LearningRate}, regression loss {r.RegressionLoss}, ")
          + string.Create(inv, $"{cfg.FakeUpdatesPerStep} fake update(s) per step, real-score CFG {r.Guidance}); whole demo {r.TotalSeconds / 60:F1} min on {Wording.Threads(torch.get_num_threads())}, ")
          + string.Create(inv, $"peak RSS {r.PeakRssMb} MB (teacher, fake denoiser and generator resident).")).AppendLine();
        sb.AppendLine("| model | NFE | FD-FMNIST (lower is better) | class accuracy | images/s |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var row in r.Rows)
            sb.AppendLine($"| {row.Model} | {row.Nfe} | {F(row.FdFmnist, "F2")} | {(row.ClassAccuracy is double a ? (100 * a).ToString("F1", inv) + " %" : "-")} | {F(row.ImagesPerSecond, "F1")} |");
        sb.AppendLine();
        sb.AppendLine(string.Create(inv, $"**Speed-up of the student over the {Config.PairSteps * 2 - 1}-NFE teacher: {r.SpeedUp:F0}x** (images/s, same machine, batch 64")
          + (r.Guidance != 1 ? "; with CFG each teacher NFE is two network passes, conditional and unconditional, as in EDM/DMD practice). " : "). "));
        sb.AppendLine(string.Create(inv, $"FD-FMNIST: Frechet distance of the shipped classifier's 128-d features to the Fashion-MNIST test split, here on {r.Samples} samples per model ")
          + "(biased upward at this sample size; compare rows with each other). Class accuracy: how often the shipped classifier (92.0 % on real test images) finds the class asked for.").AppendLine();
        if (r.Rows.Count > 0 && r.Rows[^1].PerClassAccuracy is double[] pc)
        {
            var names = FashionMnist.ClassNames;
            sb.AppendLine("| class | " + string.Join(" | ", names) + " |");
            sb.AppendLine("|---|" + string.Concat(Enumerable.Repeat("---|", names.Count)));
            foreach (var row in r.Rows.Where(x => x.PerClassAccuracy is not null))
                sb.AppendLine($"| {row.Model} | " + string.Join(" | ", row.PerClassAccuracy!.Select(v => double.IsNaN(v) ? "-" : (100 * v).ToString("F0", inv))) + " |");
            if (realPerClass is double[] real) // what the judge itself scores on real test images, per class
                sb.AppendLine("| real test images (the judge's own accuracy) | " + string.Join(" | ", real.Select(v => (100 * v).ToString("F0", inv))) + " |");
            sb.AppendLine();
        }
        sb.AppendLine("## Teacher (left, 35 NFE) and student (right, 1 NFE) from the same noise, one row per class").AppendLine();
        if (grids.Count > 0)
        {
            sb.AppendLine($"Before distillation (the student is the teacher's one-step prediction): ![start](dmd/{grids[0]})").AppendLine();
            sb.AppendLine($"After {r.DmdSteps} DMD steps: ![end](dmd/{grids[^1]})").AppendLine();
        }
        if (File.Exists(Path.Combine(outDir, "dmd", "losses.png")))
            sb.AppendLine("## Losses").AppendLine().AppendLine("![losses](dmd/losses.png)").AppendLine();
        sb.AppendLine("Reproduce: `./dmd demo` (budget: `--budget-minutes`); the run resumes if its folder exists. " +
                      "Files: `pairs/` (shards), `dmd/` (checkpoint, generator.safetensors, losses.csv, grids), `results.json`.");
        File.WriteAllText(Path.Combine(outDir, "report.md"), sb.ToString());
    }
}
