using System.CommandLine;
using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>Measured speed of one run: DMD iteration time and one-step vs multi-step sampling throughput.</summary>
public sealed record BenchResult(string Machine, int Threads, int Batch, int HeunSteps, int HeunNfe,
                                 double TeacherSamplesPerSecond, double StudentSamplesPerSecond, double SpeedUp,
                                 double DmdIterationMs, int DmdBatch, long PeakRssMb);

/// <summary>`dmd bench`: speed of sampling (teacher vs student) and of DMD training, with warm-up and repeats.</summary>
internal static class BenchCommand
{
    public static Command Build()
    {
        var cmd = new Command("bench", "Benchmark a distilled run: teacher (Heun, 35 NFE) vs one-step generator throughput, and DMD iteration time.");
        var run = new Option<string>("--run") { Description = "folder of a `dmd toy2d` run (teacher/, pairs/, dmd-full/)", DefaultValueFactory = _ => "runs/toy2d" };
        var batch = new Option<int>("--batch") { Description = "samples per sampling call", DefaultValueFactory = _ => 4096 };
        var steps = new Option<int>("--steps") { Description = "teacher Heun steps (18 = 35 NFE)", DefaultValueFactory = _ => 18 };
        var repeats = new Option<int>("--repeats") { DefaultValueFactory = _ => 5 };
        var iters = new Option<int>("--dmd-iterations") { Description = "timed DMD iterations (after 5 warm-up ones)", DefaultValueFactory = _ => 30 };
        foreach (var o in new Option[] { run, batch, steps, repeats, iters }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: true);
            var dir = r.GetValue(run)!;
            var teacherPath = Path.Combine(dir, "teacher", "teacher.safetensors");
            var (teacher, spec) = DenoiserFile.Load(teacherPath);
            var (genNet, _) = DenoiserFile.Load(Path.Combine(dir, "dmd-full", "generator.safetensors"));
            var gen = new OneStepGenerator(genNet);
            int b = r.GetValue(batch), n = r.GetValue(repeats), heunSteps = r.GetValue(steps);
            using var g = new torch.Generator(0);
            var z = Rng.Normal(new long[] { b }.Concat(spec.SampleShape.Select(s => (long)s)).ToArray(), g);
            var y = Rng.OneHotLabels(spec.LabelDim, b, g);

            int nfe = 0;
            double teacherSec = Median(n, () => { using var s = NewDisposeScope(); nfe = Samplers.Heun(teacher, z, y, heunSteps).Nfe; });
            double studentSec = Median(n, () => { using var s = NewDisposeScope(); using var _ = no_grad(); gen.Generate(z, y); });

            var pairsPath = Path.Combine(dir, "pairs", "pairs.safetensors");
            var cfg = Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(dir, "dmd-full", "config.json")).Config;
            using var trainer = new DmdTrainer(DenoiserFile.Load(teacherPath).Net, spec, cfg with { WarmupSteps = 1 }, RegressionPairs.Load(pairsPath));
            for (int i = 0; i < 5; i++) trainer.TrainStep();
            int it = r.GetValue(iters);
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < it; i++) trainer.TrainStep();
            double iterMs = sw.Elapsed.TotalMilliseconds / it;

            var res = new BenchResult($"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}", torch.get_num_threads(),
                                      b, heunSteps, nfe, b / teacherSec, b / studentSec, teacherSec / studentSec, iterMs, cfg.BatchSize,
                                      Process.GetCurrentProcess().PeakWorkingSet64 >> 20);
            var t = new Table().AddColumns("measure", "value");
            t.AddRow($"teacher Heun {nfe} NFE", $"{res.TeacherSamplesPerSecond:N0} samples/s");
            t.AddRow("DMD student 1 NFE", $"{res.StudentSamplesPerSecond:N0} samples/s");
            t.AddRow("speed-up", $"{res.SpeedUp:F1}x");
            t.AddRow($"DMD iteration (batch {cfg.BatchSize} + {cfg.RegressionBatchSize} pairs, {cfg.FakeUpdatesPerStep} fake update)", $"{iterMs:F1} ms");
            t.AddRow("peak RSS", $"{res.PeakRssMb} MB");
            AnsiConsole.Write(t);
            Checkpoint.SaveJson(res, Path.Combine(dir, "bench.json"));
            AnsiConsole.MarkupLine($"wrote {Path.Combine(dir, "bench.json")}");
            return 0;
        });
        return cmd;
    }

    /// <summary>Median wall time of <paramref name="repeats"/> runs after one warm-up run.</summary>
    static double Median(int repeats, Action f)
    {
        f();
        var times = new List<double>();
        for (int i = 0; i < repeats; i++) { var sw = Stopwatch.StartNew(); f(); times.Add(sw.Elapsed.TotalSeconds); }
        times.Sort();
        return times[times.Count / 2];
    }
}
