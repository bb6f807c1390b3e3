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
        var teacher = new Option<string>("--teacher") { Description = "teacher .safetensors file or its run folder, or a text-to-image (diffusers Stable Diffusion) folder with --prompts", Required = true };
        var prompts = new Option<string?>("--prompts") { Description = "a text-to-image teacher's prompts, one a line: the conditions the generator learns (the pairs' prompts file when --pairs is given)" };
        var pairs = new Option<string?>("--pairs") { Description = "regression pairs from `dmd pairs` (not needed with --mode DmOnly or --lambda-reg 0)" };
        var ganData = new Option<string?>("--gan-data")
        {
            Description = "real data of the GAN head (with --gan-weight > 0): ring8, grid25, moons, checkerboard or csv:PATH for points, " +
                          "fashion-mnist or folder:PATH for images at the teacher's resolution and channels (default: the teacher run's training data, from its config.json); " +
                          "for a text-to-image teacher captions:FOLDER (images and a metadata.jsonl of {\"file_name\", \"text\"} lines) or fashion-mnist (templated captions)",
        };
        var minutes = new Option<double?>("--minutes") { Description = "stop after this many minutes (checkpoint and generator.safetensors written; run again to continue)" };
        var outOpt = Common.Out("runs/dmd");
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { teacher, prompts, pairs, ganData, minutes, outOpt, cfgFile, allow }) cmd.Options.Add(o);
        var opts = new ConfigOptions<DmdConfig>(cmd);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            cfg.Validate(); // before --out is made: a bad setting leaves nothing behind
            var teacherPath = r.GetValue(teacher)!;
            bool textToImage = TextToImageDistillation.IsPipelineFolder(teacherPath);
            if (!textToImage && r.GetValue(prompts) is not null)
                throw Common.PromptsNeedTextToImage(teacherPath);
            Threads.Apply(r, smallModel: !textToImage && !DenoiserFile.LoadSpec(teacherPath).IsImage); // the spec alone: FromFiles loads the network
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var promptsPath = textToImage ? r.GetValue(prompts) ?? PairsPrompts(r.GetValue(pairs)) ??
                throw new DmdInputException($"{teacherPath} is a text-to-image teacher: give the prompts the generator learns with --prompts FILE (one a line)") : null;
            StableDiffusion? pipeline = null;
            DmdTrainer trainer;
            string? ganText = null;
            if (textToImage)
            {
                (trainer, pipeline) = TextToImageDistillation.FromFolder(teacherPath, promptsPath!, r.GetValue(pairs), cfg, Devices.Get(r), r.GetValue(ganData));
                ganText = cfg.UsesRealData ? r.GetValue(ganData) : null;
            }
            else (trainer, ganText) = DmdTrainer.FromFiles(teacherPath, r.GetValue(pairs), r.GetValue(ganData), cfg, m => AnsiConsole.MarkupLine(Markup.Escape(m)), Devices.Get(r));
            using var _ = trainer;
            using var __ = pipeline;
            using var signal = new StopSignal();
            var options = Common.RunOptions(r, allow, (s, n, l) => { }, () => signal.Requested) with
            {
                TimeBudget = r.GetValue(minutes) is double min ? TimeSpan.FromMinutes(min) : null,
            };
            var ranks = new RankReport();
            ProgressView.Run(report => trainer.Run(outDir, teacherPath, r.GetValue(pairs),
                options with { OnStep = (s, n, l) => { ranks.Step(); report($"dmd {cfg.Mode}", s, n, l); } }, ganText, promptsPath));
            if (trainer.Step < cfg.Steps)
                AnsiConsole.MarkupLine($"stopped {(signal.Requested ? "on request" : $"after {r.GetValue(minutes)} min")} at step {trainer.Step} of {cfg.Steps}; the same command continues the run");
            ranks.Print(trainer.Generator.Net, trainer.Fake, trainer.Ema?.Net, trainer.GanHead);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "generator.safetensors"))}");
            return 0;
        });
        return cmd;
    }

    /// <summary>The prompts file of a text-to-image pairs folder (its prompts.txt), or null.</summary>
    static string? PairsPrompts(string? pairsPath)
    {
        var file = pairsPath is null ? null : Path.Combine(pairsPath, RegressionPairs.PromptsFile);
        return file is not null && File.Exists(file) ? file : null;
    }
}
