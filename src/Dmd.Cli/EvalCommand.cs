using System.CommandLine;
using System.Globalization;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Experiments;
using Dmd.IO;
using Dmd.Metrics;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>Result of `dmd eval` (written as JSON).</summary>
public sealed record EvalResult(string Model, string Sampler, int Nfe, int Samples, double Guidance, double SamplesPerSecond,
                                Dictionary<string, double> Metrics, double[]? PerClassAccuracy);

/// <summary>`dmd eval`: draw N samples from any model and measure them.</summary>
internal static class EvalCommand
{
    public static Command Build()
    {
        var cmd = new Command("eval", "Draw N samples from a teacher (chosen sampler and steps) or a DMD generator (one step) and measure them. " +
                                      "Points: energy distance, precision/recall, mode coverage against held-out data. " +
                                      "Fashion-MNIST images: FD-FMNIST against the shipped test statistics and per-class accuracy.");
        var model = new Option<string>("--model") { Description = "teacher.safetensors or generator.safetensors (or its run folder)", Required = true };
        var sampler = new Option<string?>("--sampler") { Description = "onestep, heun or euler (default: onestep for generators, heun otherwise)" };
        var steps = new Option<int>("--steps") { Description = "sampler steps (heun: 2N-1 NFE)", DefaultValueFactory = _ => 18 };
        var guidance = new Option<double>("--guidance") { Description = "classifier-free guidance scale (1 = none)", DefaultValueFactory = _ => 1.0 };
        var n = new Option<int>("--n") { Description = "number of samples", DefaultValueFactory = _ => 10_000 };
        var batch = new Option<int?>("--batch") { Description = "samples per batch (default 500 for points, 64 for images: larger image batches ran slower per image on a 2-core CPU)" };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var data = new Option<string>("--data") { Description = "points: the reference distribution (built-in name or csv:PATH)", DefaultValueFactory = _ => "ring8" };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file for the results (default: eval.json beside the model)" };
        foreach (var o in new Option[] { model, sampler, steps, guidance, n, batch, seed, data, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var m = ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), r.GetValue(guidance));
            Threads.Apply(r, smallModel: !m.Spec.IsImage);
            int count = r.GetValue(n);
            if (count < 10) throw new DmdInputException("--n must be at least 10");
            using var g = new torch.Generator((ulong)r.GetValue(seed));
            var z = Rng.Normal(new long[] { count }.Concat(m.Spec.SampleShape.Select(s => (long)s)).ToArray(), g);
            var y = Rng.OneHotLabels(m.Spec.LabelDim, count, g);
            Tensor x = null!; double secs = 0;
            ProgressView.Run(report => (x, secs) = m.Draw(z, y, r.GetValue(batch) ?? (m.Spec.IsImage ? 64 : 500), (d, t) => report("sample", d, t, null)));

            var metrics = new Dictionary<string, double>();
            double[]? perClass = null;
            if (m.Spec.IsImage)
            {
                using var fd = FdFmnist.Load();
                metrics["fd_fmnist"] = fd.Distance(x);
                if (y is not null && m.Spec.LabelDim == FmnistClassifier.NumClasses)
                {
                    var acc = fd.ClassAccuracy(x, y);
                    metrics["class_accuracy"] = acc.Overall;
                    perClass = acc.PerClass;
                }
            }
            else
            {
                var reference = PointDistributions.Load(r.GetValue(data)!, count, seed: 2, expectedDim: m.Spec.SampleShape[0]);
                var row = Toy2dExperiment.Evaluate(m.Title, x.reshape(count, -1), m.Nfe, reference, count / secs);
                metrics["energy_distance"] = row.EnergyDistance;
                metrics["precision"] = row.Precision;
                metrics["recall"] = row.Recall;
                if (row.ModesCovered is int mc) { metrics["modes_covered"] = mc; metrics["in_mode"] = row.HighQuality!.Value; }
            }
            var res = new EvalResult(m.Path, m.Sampler, m.Nfe, count, m.Guidance, count / secs, metrics, perClass);
            var t = new Table().AddColumns("measure", "value").Title(Markup.Escape(m.Title));
            t.AddRow("NFE", m.Nfe.ToString());
            t.AddRow("samples", count.ToString());
            t.AddRow("samples/s", (count / secs).ToString("N1", CultureInfo.InvariantCulture));
            foreach (var (k, v) in metrics) t.AddRow(k, v.ToString("G4", CultureInfo.InvariantCulture));
            AnsiConsole.Write(t);
            if (perClass is not null)
                AnsiConsole.MarkupLine("per class: " + string.Join(", ", perClass.Select((a, c) => $"{c}: {100 * a:F1} %")));
            var outPath = r.GetValue(outOpt) ?? System.IO.Path.Combine(Directory.Exists(m.Path) ? m.Path : System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(m.Path))!, "eval.json");
            Checkpoint.SaveJson(res, outPath);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
            return 0;
        });
        return cmd;
    }
}
