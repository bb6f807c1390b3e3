using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dmd.Data;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using Spectre.Console;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>`dmd train-image-teacher`: EDM teacher training of a U-Net on images, with sample grids as it goes.</summary>
internal static class ImageTeacherCommand
{
    public static Command Build()
    {
        var cmd = new Command("train-image-teacher",
            "Train a U-Net diffusion teacher (EDM loss) on Fashion-MNIST or a folder of images; writes a sample grid " +
            "every --grid-every steps and resumes if --out holds a checkpoint.");
        var data = new Option<string>("--data") { Description = "fashion-mnist (Debian's dataset-fashion-mnist), fashion-mnist:FOLDER, or folder:PATH (one sub-folder per class, or images only)", DefaultValueFactory = _ => "fashion-mnist" };
        var resolution = new Option<int?>("--resolution") { Description = "image side for folder:PATH (default 32; Fashion-MNIST is padded to 32)" };
        var channels = new Option<int>("--channels") { Description = "1 (greyscale) or 3 (RGB) for folder:PATH", DefaultValueFactory = _ => 3 };
        var limit = new Option<int?>("--train-images") { Description = "use only the first N training images (quick runs)" };
        var uncond = new Option<bool>("--unconditional") { Description = "ignore class labels" };
        var xflip = new Option<bool>("--xflip") { Description = "random left-right flips (EDM's --xflip)" };
        var arch = new Option<string>("--arch") { Description = "ddpmpp (EDM's SongUNet) or adm (EDM's DhariwalUNet)", DefaultValueFactory = _ => "ddpmpp" };
        var modelChannels = new Option<int>("--model-channels") { Description = "base channel count (EDM's model_channels)", DefaultValueFactory = _ => 32 };
        var channelMult = new Option<string?>("--channel-mult") { Description = "channel multiplier per resolution, e.g. 1,2,2 (default: 1,2,2; 1,2 below 16 pixels)" };
        var numBlocks = new Option<int>("--num-blocks") { Description = "residual blocks per resolution", DefaultValueFactory = _ => 2 };
        var attn = new Option<string?>("--attn-resolutions") { Description = "resolutions with self-attention, e.g. 8 (default: resolution/4; 'none' for none)" };
        var dropout = new Option<double>("--dropout") { Description = "dropout rate inside the U-Net blocks (EDM: 0.10 for CIFAR-10)", DefaultValueFactory = _ => 0.10 };
        var gridEvery = new Option<int>("--grid-every") { Description = "write samples-STEP.png every N steps (0 = only at the end)", DefaultValueFactory = _ => 1000 };
        var gridSteps = new Option<int>("--grid-steps") { Description = "Heun steps of the grids (2N-1 NFE)", DefaultValueFactory = _ => 10 };
        var gridPerClass = new Option<int>("--grid-per-class") { Description = "images per class (row) in the grids", DefaultValueFactory = _ => 10 };
        var gridGuidance = new Option<double>("--grid-guidance") { Description = "CFG scale of the grids", DefaultValueFactory = _ => 1.0 };
        var outOpt = Common.Out("runs/fashion-mnist-teacher");
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { data, resolution, channels, limit, uncond, xflip, arch, modelChannels, channelMult, numBlocks, attn, dropout,
                                         gridEvery, gridSteps, gridPerClass, gridGuidance, outOpt, cfgFile, allow })
            cmd.Options.Add(o);
        var opts = new ConfigOptions<TeacherConfig>(cmd, defaults: TeacherConfig.Images);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: false);
            var cfg = opts.Bind(r, r.GetValue(cfgFile) is string f ? Checkpoint.LoadSettings<TeacherConfig>(f) : TeacherConfig.Images);
            var dataOpts = new ImageDataOptions
            {
                Data = r.GetValue(data)!, Resolution = r.GetValue(resolution), Channels = r.GetValue(channels),
                TrainImages = r.GetValue(limit), Unconditional = r.GetValue(uncond), XFlip = r.GetValue(xflip),
            };
            var unet = new UNetOptions
            {
                Arch = r.GetValue(arch)!, ModelChannels = r.GetValue(modelChannels), NumBlocks = r.GetValue(numBlocks), Dropout = r.GetValue(dropout),
                ChannelMult = r.GetValue(channelMult) is string cm ? IntList("--channel-mult", cm) : null,
                AttnResolutions = r.GetValue(attn) is string at ? at == "none" ? Array.Empty<int>() : IntList("--attn-resolutions", at) : null,
            };
            using var trainer = TeacherTrainer.ForImages(dataOpts, unet, cfg, Devices.Get(r));
            var (spec, set) = (trainer.Spec, trainer.Data);
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            AnsiConsole.MarkupLine(Markup.Escape($"teacher: {spec}; {TrainingUtils.ParameterCount(trainer.Net):N0} parameters; " +
                $"{set.Count:N0} images [{string.Join("x", set.Shape)}], {set.NumClasses} classes; batch {cfg.BatchSize}, {torch.get_num_threads()} threads"));

            var grids = new TeacherGrids(r.GetValue(gridEvery), r.GetValue(gridPerClass), r.GetValue(gridSteps), r.GetValue(gridGuidance));
            // images per second of training alone: grid time is taken out
            var train = Stopwatch.StartNew();
            int firstStep = -1, lastStep = 0;
            using var signal = new StopSignal();
            bool finished = true;
            var ranks = new RankReport();
            ProgressView.Run(report => finished = trainer.Run(outDir, dataOpts.Data, Common.RunOptions(r, allow, (s, n, l) =>
            {
                ranks.Step();
                if (firstStep < 0) firstStep = s - 1;
                lastStep = s;
                report("teacher", s, n, l);
            }, () => signal.Requested), grids));
            train.Stop();
            ranks.Print(trainer.Net, trainer.Ema);
            int done = lastStep - Math.Max(firstStep, 0);
            if (done > 0)
            {
                double secs = train.Elapsed.TotalSeconds - trainer.GridSeconds;
                AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
                    $"trained {done} steps in {secs:F0} s: {secs / done:F3} s/step, [bold]{done * (double)cfg.BatchSize / secs:F1} images/s[/] (batch {cfg.BatchSize}, {torch.get_num_threads()} threads, grids not counted)"));
            }
            if (!finished)
                AnsiConsole.MarkupLine($"stopped on request at step {trainer.Step} of {cfg.Steps} (checkpoint written); the same command continues the run");
            else
                AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "teacher.safetensors"))}, samples-*.png and losses.png");
            return 0;
        });
        return cmd;
    }

    internal static int[] IntList(string option, string text)
    {
        try { return text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); }
        catch (FormatException) { throw new DmdInputException($"{option}: '{text}' is not a comma-separated list of integers (e.g. 1,2,2)"); }
    }
}
