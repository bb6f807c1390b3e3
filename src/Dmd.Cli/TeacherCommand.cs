using System.CommandLine;
using Dmd.Data;
using Dmd.IO;
using Dmd.Training;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd train-teacher`: EDM teacher training on point data.</summary>
internal static class TeacherCommand
{
    public static Command Build()
    {
        var cmd = new Command("train-teacher", "Train a diffusion teacher (EDM loss) on a built-in 2-D distribution or your CSV points; resumes if --out holds a checkpoint.");
        var data = new Option<string>("--data") { Description = $"{string.Join(", ", PointDistributions.Names)} or csv:PATH", DefaultValueFactory = _ => "ring8" };
        var points = new Option<int>("--train-points") { Description = "points drawn from a built-in distribution", DefaultValueFactory = _ => 50_000 };
        var cond = new Option<bool>("--conditional") { Description = "condition on class labels (mode index, or the CSV's label column)" };
        var width = new Option<int>("--width") { Description = "hidden units per layer of the MLP denoiser", DefaultValueFactory = _ => 256 };
        var depth = new Option<int>("--depth") { Description = "hidden layers of the MLP denoiser", DefaultValueFactory = _ => 4 };
        var outOpt = Common.Out("runs/teacher");
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { data, points, cond, width, depth, outOpt, cfgFile, allow }) cmd.Options.Add(o);
        var opts = new ConfigOptions<TeacherConfig>(cmd);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: true);
            Common.RequirePositive(r, points, width, depth);
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            var dataName = r.GetValue(data)!;
            using var trainer = TeacherTrainer.ForPoints(dataName, r.GetValue(points), r.GetValue(cond), r.GetValue(width), r.GetValue(depth), cfg, Devices.Get(r));
            var set = trainer.Data;
            AnsiConsole.MarkupLine($"teacher: {TrainingUtils.ParameterCount(trainer.Net):N0} parameters, {set.Count:N0} points of dim {set.Shape[0]}, {set.NumClasses} classes");
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            using var signal = new StopSignal();
            bool finished = true;
            var ranks = new RankReport();
            ProgressView.Run(report => finished = trainer.Run(outDir, dataName, Common.RunOptions(r, allow, (s, n, l) => { ranks.Step(); report("teacher", s, n, l); }, () => signal.Requested)));
            ranks.Print(trainer.Net, trainer.Ema);
            if (!finished)
            {
                AnsiConsole.MarkupLine($"stopped on request at step {trainer.Step} of {cfg.Steps} (checkpoint written); the same command continues the run");
                return 0;
            }
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "teacher.safetensors"))}");
            return 0;
        });
        return cmd;
    }
}
