using System.CommandLine;
using System.Globalization;
using Dmd.IO;
using Dmd.Pipelines;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd eval`: draw N samples from any model and measure them (<see cref="Evaluation"/>).</summary>
internal static class EvalCommand
{
    public static Command Build()
    {
        var cmd = new Command("eval", "Draw N samples from a teacher (chosen sampler and steps) or a DMD generator (its trained steps) and measure them. " +
                                      "Points: energy distance, precision/recall, mode coverage against held-out data. " +
                                      "Fashion-MNIST images: FD-FMNIST against the shipped test statistics and per-class accuracy.");
        var model = new Option<string>("--model") { Description = "teacher.safetensors or generator.safetensors (or its run folder)", Required = true };
        var sampler = new Option<string?>("--sampler") { Description = "onestep, heun or euler (default: onestep for generators, heun otherwise)" };
        var steps = new Option<int?>("--steps") { Description = "sampler steps (default: heun 18 = 35 NFE); a generator: how many of its trained steps (default all)" };
        var guidance = new Option<double>("--guidance") { Description = "classifier-free guidance scale (1 = none)", DefaultValueFactory = _ => 1.0 };
        var n = new Option<int>("--n") { Description = "number of samples", DefaultValueFactory = _ => 10_000 };
        var batch = new Option<int?>("--batch") { Description = "samples per batch (default 500 for points, 64 for images: larger image batches ran slower per image on a 2-core CPU)" };
        var seed = new Option<long>("--seed") { Description = "seed of the noise and labels of the samples", DefaultValueFactory = _ => 0 };
        var data = new Option<string?>("--data") { Description = "points: the reference distribution (built-in name or csv:PATH; default: the data the model's run learned, from its config.json)" };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file for the results (default: runs/eval/MODEL.json; never inside the model's folder unless named here)" };
        foreach (var o in new Option[] { model, sampler, steps, guidance, n, batch, seed, data, outOpt }) cmd.Options.Add(o);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, steps, batch);
            var m = ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), r.GetValue(guidance), Devices.Get(r));
            var outPath = r.GetValue(outOpt) ?? Evaluation.DefaultOut(m.Path);
            Checkpoint.EnsureWritableFile(outPath, "--out");
            Threads.Apply(r, smallModel: !m.Spec.IsImage);
            EvalResult res = null!;
            ProgressView.Run(report => res = Evaluation.Run(m, r.GetValue(n), r.GetValue(seed), r.GetValue(batch), r.GetValue(data),
                                                            (d, t) => report("sample", d, t, null), msg => AnsiConsole.MarkupLine(Markup.Escape(msg))));
            var (metrics, perClass, count, secs) = (res.Metrics, res.PerClassAccuracy, res.Samples, res.Samples / res.SamplesPerSecond);
            var t = new Table().AddColumns("measure", "value").Title(Markup.Escape(m.Title));
            t.AddRow("NFE", m.Nfe.ToString());
            t.AddRow("samples", count.ToString());
            t.AddRow("samples/s", (count / secs).ToString("N1", CultureInfo.InvariantCulture));
            foreach (var (k, v) in metrics) t.AddRow(k, v.ToString("G4", CultureInfo.InvariantCulture));
            AnsiConsole.Write(t);
            if (perClass is not null)
                AnsiConsole.MarkupLine("per class: " + string.Join(", ", perClass.Select((a, c) => double.IsNaN(a) ? $"{c}: - (no samples)" : $"{c}: {100 * a:F1} %")));
            if (Mpi.IsRoot) Checkpoint.SaveJson(res, outPath);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
            return 0;
        });
        return cmd;
    }
}
