using System.CommandLine;
using System.Diagnostics;
using Dmd.Pipelines;
using Dmd.Diffusion;
using Dmd.IO;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>`dmd bench`: sampling speed of one or two models (and their ratio), and DMD iteration time for a run.</summary>
internal static class BenchCommand
{
    public static Command Build()
    {
        var cmd = new Command("bench", "Measure sampling speed (samples/s, per-batch latency; warm-up, then repeats) of one or two models and " +
                                       "their ratio; with --run, the teacher (Heun) vs the DMD generator of a toy2d run and the DMD iteration time.");
        var models = new Option<string[]>("--model") { Description = "model file or folder; give it twice to compare two models", AllowMultipleArgumentsPerToken = false };
        var run = new Option<string?>("--run") { Description = "folder of a `dmd toy2d` run: benches teacher/ (Heun) against dmd-full/ (1 step)" };
        var sampler = new Option<string?>("--sampler") { Description = "sampler for teachers: heun or euler (generators run their own trained steps)" };
        var steps = new Option<int?>("--steps") { Description = "teacher steps (default: heun 18 = 35 NFE); generators run their own trained steps" };
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
            var draws = paths.Select(p => ModelDraw.IsGenerator(p) ? ModelDraw.Load(p, null, null, 1.0)
                                                                   : ModelDraw.Load(p, r.GetValue(sampler), r.GetValue(steps), 1.0)).ToList();
            Threads.Apply(r, smallModel: !draws[0].Spec.IsImage);
            int b = r.GetValue(batch) ?? (draws[0].Spec.IsImage ? 64 : 4096), n = r.GetValue(repeats);

            var speeds = new List<ModelSpeed>();
            foreach (var m in draws)
            {
                Console.WriteLine($"timing {m.Path}: {m.Sampler}, {m.Nfe} NFE, {n} batches of {b} after a warm-up one ({torch.get_num_threads()} threads)");
                speeds.Add(Benchmark.SamplingSpeed(m, b, n));
            }
            double? ratio = speeds.Count == 2 ? speeds[1].SamplesPerSecond / speeds[0].SamplesPerSecond : null;

            double? iterMs = null; int? dmdBatch = null;
            if (dir is not null)
            {
                iterMs = Benchmark.ToyRunDmdIterationMs(dir, draws[0], r.GetValue(iters), out int tb0);
                dmdBatch = tb0;
            }
            List<DmdIterationSpeed>? recipes = null;
            double? peak = null;
            if (r.GetValue(distill) is int dIters and > 0)
            {
                dmdBatch = r.GetValue(distillBatch);
                peak = Benchmark.ConvPeakGflops();
                recipes = Benchmark.DmdIterations(draws[0], dmdBatch.Value, dIters, peak);
                iterMs = recipes[0].Ms;
            }
            double? trainRate = null; int? tb = null;
            if (r.GetValue(train) is int tSteps and > 0)
            {
                tb = r.GetValue(trainBatch);
                trainRate = Benchmark.TeacherTrainingImagesPerSecond(draws[0], tb.Value, tSteps);
            }
            var rss = r.GetValue(rssLog) is string lp ? Trend(lp, r.GetValue(rssSteps)) : null;

            var res = new BenchResult($"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                                      torch.get_num_threads(), speeds, ratio, iterMs, dmdBatch, Process.GetCurrentProcess().PeakWorkingSet64 >> 20,
                                      trainRate, tb, rss, recipes, peak);
            var t = new Table().AddColumns("model", "NFE", "batch ms (median / p90)", "samples/s");
            foreach (var s in speeds)
                t.AddRow(Markup.Escape(Path.GetFileName(s.Model)), s.Nfe.ToString(), $"{s.MedianBatchMs:F1} / {s.P90BatchMs:F1}", $"{s.SamplesPerSecond:N0}");
            AnsiConsole.Write(t);
            if (ratio is double q) AnsiConsole.MarkupLine($"speed ratio (second / first): [bold]{q:F1}x[/]");
            if (recipes is not null)
            {
                AnsiConsole.MarkupLine($"convolution peak: {peak:F0} GFLOP/s (one 4.8 GFLOP fp32 convolution, {torch.get_num_threads()} threads)");
                foreach (var d in recipes)
                    AnsiConsole.MarkupLine(Markup.Escape($"{d.Recipe}, batch {d.Batch}: {d.Ms:F0} ms per iteration, {d.Gflop:F1} GFLOP, " +
                                                         $"{d.AchievedGflops:F0} GFLOP/s" + (d.PeakFraction is double f ? $" = {100 * f:F0} % of the peak" : " (FLOPs counted for the U-Nets only)")));
            }
            else if (iterMs is double ms) AnsiConsole.MarkupLine($"DMD iteration: {ms:F1} ms (batch {dmdBatch})");
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
