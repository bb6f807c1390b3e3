using System.CommandLine;
using System.Globalization;
using Dmd.Pipelines;
using Dmd.IO;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd demo`: the main job on images, from the shipped teacher to a report with pictures.</summary>
internal static class DemoCommand
{
    public static Command Build()
    {
        var cmd = new Command("demo", "Distil the shipped Fashion-MNIST teacher into a one-step generator within a time budget (default 10 min): " +
                                      "regression pairs, DMD, then FD-FMNIST, class accuracy and speed of teacher vs student, written to report.md with pictures. " +
                                      "Needs no dataset; resumes if --out holds a run.");
        var outOpt = Common.Out("runs/demo");
        var cfgFile = Common.ConfigFile();
        cmd.Options.Add(outOpt); cmd.Options.Add(cfgFile);
        var opts = new ConfigOptions<ImageDemoConfig>(cmd);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: false);
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            if (cfg.BudgetMinutes <= 0) throw new DmdInputException("--budget-minutes must be positive");
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var demo = new ImageDemo(cfg) { OnMessage = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]") };
            ImageDemoResults? res = null;
            ProgressView.Run(report => { demo.OnProgress = report; res = demo.Run(outDir); });
            var inv = CultureInfo.InvariantCulture;
            var t = new Table().AddColumns("model", "NFE", "FD-FMNIST", "class accuracy", "images/s");
            foreach (var row in res!.Rows)
                t.AddRow(Markup.Escape(row.Model), row.Nfe.ToString(), row.FdFmnist?.ToString("F2", inv) ?? "-",
                         row.ClassAccuracy is double a ? (100 * a).ToString("F1", inv) + " %" : "-",
                         double.IsFinite(row.ImagesPerSecond) ? row.ImagesPerSecond.ToString("F1", inv) : "-");
            AnsiConsole.Write(t);
            AnsiConsole.MarkupLine(string.Create(inv, $"{res.Samples} samples per model; {res.DmdSteps} DMD steps in {res.DmdSeconds:F0} s; student [bold]{res.SpeedUp:F0}x[/] faster than the teacher; total {res.TotalSeconds / 60:F1} min"));
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "report.md"))}");
            return 0;
        });
        return cmd;
    }
}
