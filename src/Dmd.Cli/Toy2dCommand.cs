using System.CommandLine;
using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Pipelines;
using Dmd.IO;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd toy2d`: the whole 2-D experiment.</summary>
internal static class Toy2dCommand
{
    public static Command Build()
    {
        var cmd = new Command("toy2d", "Train a 2-D teacher, distil it with DMD (and the paper's ablations), evaluate and plot everything.");
        var outOpt = Common.Out("runs/toy2d");
        var quick = new Option<bool>("--quick") { Description = "small budget (about a minute): for a first look and for tests" };
        var cfgFile = Common.ConfigFile();
        cmd.Options.Add(outOpt); cmd.Options.Add(quick); cmd.Options.Add(cfgFile);
        var opts = new ConfigOptions<Toy2dConfig>(cmd);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: true);
            var start = r.GetValue(cfgFile) is string f ? Checkpoint.LoadSettings<Toy2dConfig>(f) : r.GetValue(quick) ? Toy2dPresets.Quick : new Toy2dConfig();
            var cfg = opts.Bind(r, start);
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var exp = new Toy2dExperiment(cfg) { OnMessage = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]") };
            var sw = Stopwatch.StartNew();
            Toy2dResults? res = null;
            ProgressView.Run(report => { exp.OnProgress = report; res = exp.Run(outDir); });
            Common.ResultsTable(res!.Rows);
            AnsiConsole.MarkupLine($"data vs held-out data: energy distance {res.DataVsHeldOut:F4} (the noise floor)");
            var teacherEd = res.Rows[0].EnergyDistance;
            if (teacherEd > 3 * Math.Max(Math.Abs(res.DataVsHeldOut), 2e-4))
                AnsiConsole.MarkupLine($"DMD student / teacher (35 NFE) energy distance: [bold]{res.StudentTeacherRatio:F2}x[/];  student / teacher 1-step: {res.StudentOneStepTeacherRatio:P1}");
            else
                AnsiConsole.MarkupLine($"the teacher (35 NFE) is at the noise floor of the metric, so a student/teacher ratio means nothing here; student / teacher 1-step: {res.StudentOneStepTeacherRatio:P1}");
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "results.json"))}, samples.png, losses.png in {sw.Elapsed.TotalSeconds:F0} s");
            return 0;
        });
        return cmd;
    }
}
