using System.CommandLine;
using System.Globalization;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Pipelines;
using Dmd.IO;
using Dmd.Metrics;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>Result of `dmd eval` (written as JSON).</summary>
public sealed record EvalResult(string Model, string Sampler, int Nfe, int Samples, double Guidance, double SamplesPerSecond,
                                Dictionary<string, double> Metrics, double[]? PerClassAccuracy, string? Reference = null);

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
        var seed = new Option<long>("--seed") { Description = "seed of the noise and labels of the samples", DefaultValueFactory = _ => 0 };
        var data = new Option<string?>("--data") { Description = "points: the reference distribution (built-in name or csv:PATH; default: the data the model's run learned, from its config.json)" };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file for the results (default: runs/eval/MODEL.json; never inside the model's folder unless named here)" };
        foreach (var o in new Option[] { model, sampler, steps, guidance, n, batch, seed, data, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, steps, batch);
            var m = ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), r.GetValue(guidance));
            var outPath = r.GetValue(outOpt) ?? DefaultOut(m.Path);
            Checkpoint.EnsureWritableFile(outPath, "--out");
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
            string? referenceName = null;
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
                referenceName = r.GetValue(data) ?? RunData(m.Path)
                    ?? throw new DmdInputException($"cannot tell which data {m.Path} learned (no run config.json beside it): name the reference with --data, e.g. --data ring8 or --data csv:PATH");
                AnsiConsole.MarkupLine(Markup.Escape($"reference: {referenceName}{(r.GetValue(data) is null ? " (the data of the model's run)" : "")}"));
                var reference = DataSource.Parse(referenceName).LoadPoints(count, seed: 2, expectedDim: m.Spec.SampleShape[0]);
                var row = Toy2dExperiment.Evaluate(m.Title, x.reshape(count, -1), m.Nfe, reference, count / secs);
                metrics["energy_distance"] = row.EnergyDistance;
                metrics["precision"] = row.Precision;
                metrics["recall"] = row.Recall;
                if (row.ModesCovered is int mc) { metrics["modes_covered"] = mc; metrics["in_mode"] = row.HighQuality!.Value; }
            }
            var res = new EvalResult(m.Path, m.Sampler, m.Nfe, count, m.Guidance, count / secs, metrics, perClass, referenceName);
            var t = new Table().AddColumns("measure", "value").Title(Markup.Escape(m.Title));
            t.AddRow("NFE", m.Nfe.ToString());
            t.AddRow("samples", count.ToString());
            t.AddRow("samples/s", (count / secs).ToString("N1", CultureInfo.InvariantCulture));
            foreach (var (k, v) in metrics) t.AddRow(k, v.ToString("G4", CultureInfo.InvariantCulture));
            AnsiConsole.Write(t);
            if (perClass is not null)
                AnsiConsole.MarkupLine("per class: " + string.Join(", ", perClass.Select((a, c) => double.IsNaN(a) ? $"{c}: - (no samples)" : $"{c}: {100 * a:F1} %")));
            Checkpoint.SaveJson(res, outPath);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// The training data of a point model's run: a teacher run's config.json names it; a DMD run's names its teacher,
    /// whose run names it; a `dmd toy2d` run keeps it in experiment.json one folder up. Null when none of these is there.
    /// </summary>
    internal static string? RunData(string modelPath, int depth = 0)
    {
        if (depth > 3) return null;
        var full = System.IO.Path.GetFullPath(modelPath);
        var folder = Directory.Exists(full) ? full : System.IO.Path.GetDirectoryName(full)!;
        foreach (var (file, key) in new[] { (System.IO.Path.Combine(folder, "config.json"), "Data"), (System.IO.Path.Combine(folder, "..", "experiment.json"), "Data") })
        {
            if (!File.Exists(file)) continue;
            try
            {
                var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file));
                if (node?[key]?.GetValue<string>() is string d) return d;
                if (node?["Teacher"]?.GetValue<string>() is string t && (File.Exists(t) || Directory.Exists(t))) return RunData(t, depth + 1);
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException) { }
        }
        return null;
    }

    /// <summary>runs/eval/NAME.json, NAME from the model's folder (and file, when it is not the folder's usual one).</summary>
    static string DefaultOut(string modelPath)
    {
        var full = System.IO.Path.GetFullPath(modelPath).TrimEnd('/');
        string name = Directory.Exists(full) ? System.IO.Path.GetFileName(full)
            : System.IO.Path.GetFileName(System.IO.Path.GetDirectoryName(full)!) + (System.IO.Path.GetFileNameWithoutExtension(full) is "teacher" or "generator" ? "" : "-" + System.IO.Path.GetFileNameWithoutExtension(full));
        return System.IO.Path.Combine("runs", "eval", name + ".json");
    }
}
