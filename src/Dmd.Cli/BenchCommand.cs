using System.CommandLine;
using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;
using Dmd.Networks;

namespace Dmd.Cli;

/// <summary>Sampling speed of one model: per-batch latency (median and 90th percentile) and samples/s.</summary>
public sealed record ModelSpeed(string Model, string Sampler, int Nfe, int Batch, double MedianBatchMs, double P90BatchMs, double SamplesPerSecond);

/// <summary>What `dmd bench` measured (written as JSON).</summary>
public sealed record BenchResult(string Machine, int Threads, List<ModelSpeed> Models, double? SpeedUp,
                                 double? DmdIterationMs, int? DmdBatch, long PeakRssMb,
                                 double? TrainImagesPerSecond = null, int? TrainBatch = null, RssTrend? Rss = null);

/// <summary>RSS of a logged run (the rss_mb column of losses.csv): at 10 % and at 100 % of its steps, and the peak.</summary>
public sealed record RssTrend(string Log, int FromStep, int ToStep, double RssAt10PercentMb, double RssAtEndMb, double GrowthPercent, double PeakMb)
{
    /// <summary>Reads a losses.csv; growth = (median RSS of the last 5 % of rows) / (median RSS around 10 %) - 1.</summary>
    public static RssTrend FromLog(string csvPath, int fromStep = 0, int toStep = int.MaxValue)
    {
        if (!File.Exists(csvPath)) throw new DmdInputException($"log not found: {csvPath}");
        var series = Dmd.IO.CsvLog.Read(csvPath);
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

/// <summary>`dmd bench`: sampling speed of one or two models (and their ratio), and DMD iteration time for a run.</summary>
internal static class BenchCommand
{
    public static Command Build()
    {
        var cmd = new Command("bench", "Measure sampling speed (samples/s, per-batch latency; warm-up, then repeats) of one or two models and " +
                                       "their ratio; with --run, the teacher (Heun) vs the DMD generator of a toy2d run and the DMD iteration time.");
        var models = new Option<string[]>("--model") { Description = "model file or folder; give it twice to compare two models", AllowMultipleArgumentsPerToken = false };
        var run = new Option<string?>("--run") { Description = "folder of a `dmd toy2d` run: benches teacher/ (Heun) against dmd-full/ (1 step)" };
        var sampler = new Option<string?>("--sampler") { Description = "sampler for teachers: heun or euler (generators always one step)" };
        var steps = new Option<int>("--steps") { Description = "teacher steps (heun 18 = 35 NFE)", DefaultValueFactory = _ => 18 };
        var batch = new Option<int?>("--batch") { Description = "samples per batch (default 4096 for points, 64 for images)" };
        var repeats = new Option<int>("--repeats") { Description = "timed batches per model, after one warm-up batch", DefaultValueFactory = _ => 5 };
        var iters = new Option<int>("--dmd-iterations") { Description = "with --run: timed DMD iterations (after 5 warm-up ones)", DefaultValueFactory = _ => 30 };
        var train = new Option<int>("--train") { Description = "with one teacher --model: also time this many teacher training steps (EDM loss, Adam; synthetic images of its shape) after 3 warm-up ones", DefaultValueFactory = _ => 0 };
        var trainBatch = new Option<int>("--train-batch") { Description = "batch of --train", DefaultValueFactory = _ => 64 };
        var distill = new Option<int>("--distill") { Description = "with one teacher --model: also time this many DMD iterations (three networks resident; batch --distill-batch + as many pairs) after 3 warm-up ones", DefaultValueFactory = _ => 0 };
        var distillBatch = new Option<int>("--distill-batch") { Description = "generated images (and as many pairs) per DMD iteration of --distill", DefaultValueFactory = _ => 16 };
        var rssLog = new Option<string?>("--rss-log") { Description = "a run's losses.csv: report its RSS at 10 % and 100 % of the run (growth must stay under 5 %)" };
        var rssSteps = new Option<string?>("--rss-steps") { Description = "with --rss-log: the window FROM:TO in steps (e.g. one 30-minute stretch)" };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file (default: bench.json in --run, else runs/bench.json)" };
        foreach (var o in new Option[] { models, run, sampler, steps, batch, repeats, iters, train, trainBatch, distill, distillBatch, rssLog, rssSteps, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, steps, batch, repeats, iters, trainBatch, distillBatch);
            if (r.GetValue(rssLog) is string logPath && (r.GetValue(models)?.Length ?? 0) == 0 && r.GetValue(run) is null)
            {
                var trend = Trend(logPath, r.GetValue(rssSteps));
                AnsiConsole.MarkupLine(Markup.Escape(RssLine(trend)));
                Checkpoint.SaveJson(trend, r.GetValue(outOpt) ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(logPath))!, "rss.json"));
                return trend.GrowthPercent < 5 ? 0 : 1;
            }
            var dir = r.GetValue(run);
            var paths = dir is not null
                ? new[] { Path.Combine(dir, "teacher", "teacher.safetensors"), Path.Combine(dir, "dmd-full", "generator.safetensors") }
                : r.GetValue(models) ?? Array.Empty<string>();
            if (paths.Length is < 1 or > 2) throw new DmdInputException("give one or two --model paths, or --run RUN_FOLDER");
            var outPath = r.GetValue(outOpt) ?? (dir is not null ? Path.Combine(dir, "bench.json") : "runs/bench.json");
            Checkpoint.EnsureWritableFile(outPath, "--out");
            var draws = paths.Select(p => ModelDraw.Load(p, r.GetValue(sampler), r.GetValue(steps), 1.0)).ToList();
            Threads.Apply(r, smallModel: !draws[0].Spec.IsImage);
            int b = r.GetValue(batch) ?? (draws[0].Spec.IsImage ? 64 : 4096), n = r.GetValue(repeats);

            var speeds = new List<ModelSpeed>();
            foreach (var m in draws)
            {
                Console.WriteLine($"timing {m.Path}: {m.Sampler}, {m.Nfe} NFE, {n} batches of {b} after a warm-up one ({torch.get_num_threads()} threads)");
                using var g = new torch.Generator(0);
                var z = Rng.Normal(new long[] { b }.Concat(m.Spec.SampleShape.Select(s => (long)s)).ToArray(), g);
                var y = Rng.OneHotLabels(m.Spec.LabelDim, b, g);
                var times = new List<double>();
                for (int i = 0; i <= n; i++)
                {
                    using var scope = NewDisposeScope();
                    var (_, secs) = m.Draw(z, y, b);
                    if (i > 0) times.Add(secs); // the first call is the warm-up
                }
                times.Sort();
                double median = times[times.Count / 2], p90 = times[Math.Min(times.Count - 1, (int)Math.Ceiling(0.9 * times.Count) - 1)];
                speeds.Add(new ModelSpeed(m.Path, m.Sampler, m.Nfe, b, median * 1000, p90 * 1000, b / median));
            }
            double? ratio = speeds.Count == 2 ? speeds[1].SamplesPerSecond / speeds[0].SamplesPerSecond : null;

            double? iterMs = null; int? dmdBatch = null;
            if (dir is not null)
            {
                var cfg = Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(dir, "dmd-full", "config.json")).Config;
                using var trainer = new DmdTrainer(DenoiserFile.Load(paths[0]).Net, draws[0].Spec, cfg with { WarmupSteps = 1 },
                                                   RegressionPairs.Load(Path.Combine(dir, "pairs", "pairs.safetensors")));
                for (int i = 0; i < 5; i++) trainer.TrainStep();
                int it = r.GetValue(iters);
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < it; i++) trainer.TrainStep();
                iterMs = sw.Elapsed.TotalMilliseconds / it;
                dmdBatch = cfg.BatchSize;
            }

            if (r.GetValue(distill) is int dIters and > 0)
            {
                var m = draws[0];
                int db = r.GetValue(distillBatch);
                var shape = new long[] { 4 * db }.Concat(m.Spec.SampleShape.Select(s => (long)s)).ToArray();
                var pairs = new RegressionPairs(randn(shape), randn(shape).clamp(-1, 1), Rng.OneHotLabels(m.Spec.LabelDim, 4 * db, new torch.Generator(1)),
                                                new PairInfo("random", 0, 0, 1, 0, 4 * db));
                using var trainer = new DmdTrainer(m.Net, m.Spec, new DmdConfig { BatchSize = db, RegressionBatchSize = db, WarmupSteps = 1 }, pairs);
                for (int i = 0; i < 3; i++) trainer.TrainStep();
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < dIters; i++) trainer.TrainStep();
                iterMs = sw.Elapsed.TotalMilliseconds / dIters;
                dmdBatch = db;
            }
            double? trainRate = null; int? tb = null;
            if (r.GetValue(train) is int tSteps and > 0)
            {
                var m = draws[0];
                tb = r.GetValue(trainBatch);
                using var g = new torch.Generator(2);
                var images = randint(0, 256, new long[] { 4 * tb.Value }.Concat(m.Spec.SampleShape.Select(s => (long)s)).ToArray(), dtype: ScalarType.Byte, generator: g);
                var data = new Dmd.Data.ImageDataset(images, m.Spec.LabelDim > 0 ? randint(0, m.Spec.LabelDim, 4 * tb.Value, generator: g) : null, m.Spec.LabelDim);
                using var trainer = new Dmd.Training.TeacherTrainer(m.Spec, new Dmd.Training.TeacherConfig { BatchSize = tb.Value }, data);
                for (int i = 0; i < 3; i++) trainer.TrainStep();
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < tSteps; i++) trainer.TrainStep();
                trainRate = tSteps * tb.Value / sw.Elapsed.TotalSeconds;
            }
            var rss = r.GetValue(rssLog) is string lp ? Trend(lp, r.GetValue(rssSteps)) : null;

            var res = new BenchResult($"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                                      torch.get_num_threads(), speeds, ratio, iterMs, dmdBatch, Process.GetCurrentProcess().PeakWorkingSet64 >> 20,
                                      trainRate, tb, rss);
            var t = new Table().AddColumns("model", "NFE", "batch ms (median / p90)", "samples/s");
            foreach (var s in speeds)
                t.AddRow(Markup.Escape(Path.GetFileName(s.Model)), s.Nfe.ToString(), $"{s.MedianBatchMs:F1} / {s.P90BatchMs:F1}", $"{s.SamplesPerSecond:N0}");
            AnsiConsole.Write(t);
            if (ratio is double q) AnsiConsole.MarkupLine($"speed ratio (second / first): [bold]{q:F1}x[/]");
            if (iterMs is double ms) AnsiConsole.MarkupLine($"DMD iteration: {ms:F1} ms (batch {dmdBatch}{(dir is null ? $" + {dmdBatch} pairs, three networks resident" : "")})");
            if (trainRate is double tr) AnsiConsole.MarkupLine($"teacher training: {tr:F1} images/s (batch {tb})");
            if (rss is not null) AnsiConsole.MarkupLine(Markup.Escape(RssLine(rss)));
            AnsiConsole.MarkupLine($"peak RSS {res.PeakRssMb} MB, {res.Threads} thread(s)");
            Checkpoint.SaveJson(res, outPath);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
            return 0;
        });
        return cmd;
    }

    static RssTrend Trend(string log, string? window)
    {
        if (window is null) return RssTrend.FromLog(log);
        var parts = window.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[0], out int a) || !int.TryParse(parts[1], out int b))
            throw new DmdInputException($"--rss-steps '{window}': write FROM:TO, e.g. 3500:5300");
        return RssTrend.FromLog(log, a, b);
    }

    static string RssLine(RssTrend t) =>
        $"RSS of {t.Log} (steps {t.FromStep}-{t.ToStep}): {t.RssAt10PercentMb:F0} MB at 10 %, {t.RssAtEndMb:F0} MB at the end: " +
        $"{t.GrowthPercent:+0.0;-0.0} % ({(t.GrowthPercent < 5 ? "flat, under 5 %" : "GROWS by 5 % or more")}); peak {t.PeakMb:F0} MB";
}
