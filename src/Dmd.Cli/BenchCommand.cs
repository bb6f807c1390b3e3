using System.CommandLine;
using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>Sampling speed of one model: per-batch latency (median and 90th percentile) and samples/s.</summary>
public sealed record ModelSpeed(string Model, string Sampler, int Nfe, int Batch, double MedianBatchMs, double P90BatchMs, double SamplesPerSecond);

/// <summary>What `dmd bench` measured (written as JSON).</summary>
public sealed record BenchResult(string Machine, int Threads, List<ModelSpeed> Models, double? SpeedUp,
                                 double? DmdIterationMs, int? DmdBatch, long PeakRssMb);

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
        var batch = new Option<int>("--batch") { Description = "samples per batch", DefaultValueFactory = _ => 4096 };
        var repeats = new Option<int>("--repeats") { DefaultValueFactory = _ => 5 };
        var iters = new Option<int>("--dmd-iterations") { Description = "with --run: timed DMD iterations (after 5 warm-up ones)", DefaultValueFactory = _ => 30 };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file (default: bench.json in --run, else runs/bench.json)" };
        foreach (var o in new Option[] { models, run, sampler, steps, batch, repeats, iters, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var dir = r.GetValue(run);
            var paths = dir is not null
                ? new[] { Path.Combine(dir, "teacher", "teacher.safetensors"), Path.Combine(dir, "dmd-full", "generator.safetensors") }
                : r.GetValue(models) ?? Array.Empty<string>();
            if (paths.Length is < 1 or > 2) throw new DmdInputException("give one or two --model paths, or --run RUN_FOLDER");
            var draws = paths.Select(p => ModelDraw.Load(p, r.GetValue(sampler), r.GetValue(steps), 1.0)).ToList();
            Threads.Apply(r, smallModel: !draws[0].Spec.IsImage);
            int b = r.GetValue(batch), n = r.GetValue(repeats);
            if (b < 1 || n < 1) throw new DmdInputException("--batch and --repeats must be positive");

            var speeds = new List<ModelSpeed>();
            foreach (var m in draws)
            {
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

            var res = new BenchResult($"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                                      torch.get_num_threads(), speeds, ratio, iterMs, dmdBatch, Process.GetCurrentProcess().PeakWorkingSet64 >> 20);
            var t = new Table().AddColumns("model", "NFE", "batch ms (median / p90)", "samples/s");
            foreach (var s in speeds)
                t.AddRow(Markup.Escape(Path.GetFileName(s.Model)), s.Nfe.ToString(), $"{s.MedianBatchMs:F1} / {s.P90BatchMs:F1}", $"{s.SamplesPerSecond:N0}");
            AnsiConsole.Write(t);
            if (ratio is double q) AnsiConsole.MarkupLine($"speed ratio (second / first): [bold]{q:F1}x[/]");
            if (iterMs is double ms) AnsiConsole.MarkupLine($"DMD iteration: {ms:F1} ms (batch {dmdBatch})");
            AnsiConsole.MarkupLine($"peak RSS {res.PeakRssMb} MB, {res.Threads} thread(s)");
            var outPath = r.GetValue(outOpt) ?? (dir is not null ? Path.Combine(dir, "bench.json") : "runs/bench.json");
            Checkpoint.SaveJson(res, outPath);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
            return 0;
        });
        return cmd;
    }
}
