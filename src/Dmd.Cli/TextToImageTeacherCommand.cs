using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dmd.Data;
using Dmd.IO;
using Dmd.Pipelines;
using Dmd.Training;
using Spectre.Console;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>`dmd train-text2img-teacher`: a small Stable Diffusion (VAE, CLIP text encoder, UNet) trained from scratch on captioned Fashion-MNIST.</summary>
internal static class TextToImageTeacherCommand
{
    public static Command Build()
    {
        var cmd = new Command("train-text2img-teacher",
            "Train a small latent text-to-image teacher in Stable Diffusion's layout on Fashion-MNIST with templated captions: " +
            "first the VAE, then the UNet and CLIP text encoder together; writes a diffusers folder that `dmd text2img --model` runs, " +
            "sample grids every --grid-every steps, and resumes if --out holds a checkpoint.");
        var data = new Option<string>("--data") { Description = "fashion-mnist (Debian's dataset-fashion-mnist) or fashion-mnist:FOLDER", DefaultValueFactory = _ => "fashion-mnist" };
        var limit = new Option<int?>("--train-images") { Description = "use only the first N training images (quick runs)" };
        var minutes = new Option<double?>("--minutes") { Description = "stop after this many minutes in all, both stages (checkpoint and model folder written; run again to continue)" };
        var outOpt = Common.Out("runs/t2i-teacher");
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { data, limit, minutes, outOpt, cfgFile, allow }) cmd.Options.Add(o);
        var opts = new ConfigOptions<TextToImageTeacherConfig>(cmd);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: false);
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            if (r.GetValue(minutes) is double m && !(m > 0)) throw new DmdInputException($"--minutes {m}: give a positive number of minutes");
            var set = new ImageDataOptions { Data = r.GetValue(data)!, Channels = 1, TrainImages = r.GetValue(limit) }.Load();
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            using var trainer = new TextToImageTeacherTrainer(cfg, set);
            AnsiConsole.MarkupLine(Markup.Escape(
                $"VAE {TrainingUtils.ParameterCount(trainer.Vae):N0} parameters, text encoder {TrainingUtils.ParameterCount(trainer.TextEncoder):N0} " +
                $"(vocabulary {trainer.Tokenizer.VocabSize}), UNet {TrainingUtils.ParameterCount(trainer.Unet):N0}; {set.Count:N0} images " +
                $"[{string.Join("x", set.Shape)}]; batch {cfg.VaeBatchSize} (VAE) / {cfg.BatchSize} (UNet), {torch.get_num_threads()} threads"));

            using var signal = new StopSignal();
            var clock = new Dictionary<string, (Stopwatch Clock, int First, int Last)>();
            string stage = "vae";
            var options = Common.RunOptions(r, allow, (s, n, l) => { }, () => signal.Requested) with
            {
                TimeBudget = r.GetValue(minutes) is double min ? TimeSpan.FromMinutes(min) : null,
            };
            bool finished = true;
            ProgressView.Run(report => finished = trainer.Run(outDir, r.GetValue(data)!, options with
            {
                OnStep = (s, n, l) =>
                {
                    if (!clock.TryGetValue(stage, out var c)) c = (Stopwatch.StartNew(), s, s);   // timed from the end of the first step
                    clock[stage] = (c.Clock, c.First, s);
                    report(stage, s, n, l);
                },
            }, onStage: s => { foreach (var c in clock.Values) c.Clock.Stop(); stage = s; }));
            foreach (var (name, (c, first, last)) in clock)
            {
                // the clock starts after the first step: start-up and the first step's allocations are not counted
                int done = last - first;
                double secs = c.Elapsed.TotalSeconds - (name == "unet" ? trainer.GridSeconds : 0);
                if (done > 0)
                    AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
                        $"{name}: {done} steps in {secs:F0} s, {secs / done:F3} s/step (batch {(name == "vae" ? cfg.VaeBatchSize : cfg.BatchSize)}, {torch.get_num_threads()} threads{(name == "unet" ? ", grids not counted" : "")})"));
            }
            if (!finished)
                AnsiConsole.MarkupLine($"stopped {(signal.Requested ? "on request" : $"after {r.GetValue(minutes)} min")} at VAE step {trainer.VaeStep} of {cfg.VaeSteps}, UNet step {trainer.UnetStep} of {cfg.Steps} (checkpoint written); the same command continues the run");
            else
                AnsiConsole.MarkupLine(Markup.Escape($"wrote the diffusers folder {outDir} (scaling_factor {trainer.ScalingFactor:G5}), samples-*.png and losses.png; try: dmd text2img --model {outDir} --prompt \"{FashionMnistCaptions.PromptFor(7)}\" --guidance 3"));
            return 0;
        });
        return cmd;
    }
}
