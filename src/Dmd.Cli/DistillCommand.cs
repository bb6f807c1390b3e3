using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Pipelines;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>`dmd distill`: DMD training of a one-step generator.</summary>
internal static class DistillCommand
{
    public static Command Build()
    {
        var cmd = new Command("distill", "Distil a teacher into a one-step generator with DMD; resumes if --out holds a checkpoint.");
        var teacher = new Option<string>("--teacher") { Description = "teacher .safetensors file or its run folder", Required = true };
        var pairs = new Option<string?>("--pairs") { Description = "regression pairs from `dmd pairs` (not needed with --mode DmOnly or --lambda-reg 0)" };
        var ganData = new Option<string?>("--gan-data")
        {
            Description = "real data of the GAN head (with --gan-weight > 0): ring8, grid25, moons, checkerboard or csv:PATH for points, " +
                          "fashion-mnist or folder:PATH for images at the teacher's resolution and channels (default: the teacher run's training data, from its config.json)",
        };
        var minutes = new Option<double?>("--minutes") { Description = "stop after this many minutes (checkpoint and generator.safetensors written; run again to continue)" };
        var outOpt = Common.Out("runs/dmd");
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { teacher, pairs, ganData, minutes, outOpt, cfgFile, allow }) cmd.Options.Add(o);
        var opts = new ConfigOptions<DmdConfig>(cmd);
        cmd.SetAction(r =>
        {
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            var teacherPath = r.GetValue(teacher)!;
            var (net, spec) = DenoiserFile.Load(teacherPath);
            Threads.Apply(r, smallModel: !spec.IsImage);
            var p = r.GetValue(pairs) is string pp ? RegressionPairs.Load(pp) : null;
            // the GAN's real data: --gan-data, or the data the teacher's run learned
            var ganText = cfg.UsesGan ? r.GetValue(ganData) ?? DmdTrainer.TeacherData(teacherPath) : null;
            if (ganText is not null && r.GetValue(ganData) is null) AnsiConsole.MarkupLine(Markup.Escape($"GAN data: {ganText} (the teacher's training data)"));
            var real = ganText is null ? null : DmdTrainer.LoadRealData(ganText, spec);
            using var trainer = new DmdTrainer(net, spec, cfg, p, realData: real);
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var clock = Stopwatch.StartNew();
            double limit = (r.GetValue(minutes) ?? double.PositiveInfinity) * 60;
            using var signal = new StopSignal();
            int firstStep = -1; // a --minutes budget ends a run only after it made a step, so every call moves the run on
            var ranks = new RankReport();
            ProgressView.Run(report => trainer.Run(outDir, teacherPath, r.GetValue(pairs),
                Common.RunOptions(r, allow, (s, n, l) => { ranks.Step(); report($"dmd {cfg.Mode}", s, n, l); },
                                  () => signal.Requested || (trainer.Step > (firstStep < 0 ? firstStep = trainer.Step : firstStep) && clock.Elapsed.TotalSeconds > limit)),
                ganText));
            if (trainer.Step < cfg.Steps)
                AnsiConsole.MarkupLine($"stopped {(signal.Requested ? "on request" : $"after {r.GetValue(minutes)} min")} at step {trainer.Step} of {cfg.Steps}; the same command continues the run");
            ranks.Print(trainer.Generator.Net, trainer.Fake, trainer.Ema?.Net, trainer.GanHead);
            if (DataParallel.IsRoot) Plots.LossCurves(Path.Combine(outDir, "losses.png"), new[] { ("dmd", Path.Combine(outDir, "losses.csv")) });
            AnsiConsole.MarkupLine($"wrote {Path.Combine(outDir, "generator.safetensors")}");
            return 0;
        });
        return cmd;
    }
}
