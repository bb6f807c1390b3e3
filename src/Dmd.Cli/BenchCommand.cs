using System.CommandLine;
using System.Diagnostics;
using Dmd.Pipelines;
using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>`dmd bench`: sampling speed of one or two models (and their ratio), and DMD iteration time for a run.</summary>
internal static class BenchCommand
{
    public static Command Build()
    {
        var cmd = new Command("bench", "Measure sampling speed (samples/s, per-batch latency; warm-up, then repeats) of one or two models and " +
                                       "their ratio; with --run, the teacher (Heun) vs the DMD generator of a toy2d run and the DMD iteration time.");
        var models = new Option<string[]>("--model") { Description = "model file or folder; give it twice to compare two models", AllowMultipleArgumentsPerToken = false };
        var run = new Option<string?>("--run") { Description = "folder of a `dmd toy2d` run: benches teacher/ (Heun) against dmd-full/ (1 step)" };
        var sampler = new Option<string?>("--sampler") { Description = "sampler for teachers: heun or euler (generators run their own trained steps)" };
        var steps = new Option<int?>("--steps") { Description = "teacher steps (default: heun 18 = 35 NFE); generators run their own trained steps" };
        var batch = new Option<int?>("--batch") { Description = "samples per batch (default 4096 for points, 64 for images)" };
        var repeats = new Option<int>("--repeats") { Description = "timed batches per model, after one warm-up batch", DefaultValueFactory = _ => 5 };
        var iters = new Option<int>("--dmd-iterations") { Description = "with --run: timed DMD iterations (after 5 warm-up ones)", DefaultValueFactory = _ => 30 };
        var train = new Option<int>("--train") { Description = "with one teacher --model: also time this many teacher training steps (EDM loss, Adam; synthetic images of its shape) after 3 warm-up ones", DefaultValueFactory = _ => 0 };
        var trainBatch = new Option<int>("--train-batch") { Description = "batch of --train", DefaultValueFactory = _ => 64 };
        var distill = new Option<int>("--distill") { Description = "with one teacher --model: also time this many DMD iterations (three networks resident; batch --distill-batch + as many pairs) after 3 warm-up ones", DefaultValueFactory = _ => 0 };
        var distillBatch = new Option<int>("--distill-batch") { Description = "generated images (and as many pairs) per DMD iteration of --distill", DefaultValueFactory = _ => 16 };
        var rssLog = new Option<string?>("--rss-log") { Description = "a run's losses.csv: report its RSS at 10 % and 100 % of the run (growth must stay under 5 %)" };
        var rssSteps = new Option<string?>("--rss-steps") { Description = "with --rss-log: the window FROM:TO in steps (e.g. one 30-minute stretch)" };
        var text2img = new Option<string?>("--text2img")
        {
            Description = "text-to-image speed at batch 1 instead: a diffusers folder (or `sd15`: Stable Diffusion v1.5 at full size with random weights, " +
                          "which cost what the real ones do); times the text encoder, the UNet with and without CFG's doubled batch and the VAE decode, " +
                          "and gives images/s of the teacher (--steps guided Euler steps, default 25) and of a one-step generator",
        };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file (default: bench.json in --run, else runs/bench.json; runs/bench-text2img.json for --text2img)" };
        foreach (var o in new Option[] { text2img, models, run, sampler, steps, batch, repeats, iters, train, trainBatch, distill, distillBatch, rssLog, rssSteps, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, steps, batch, repeats, iters, trainBatch, distillBatch);
            if (r.GetValue(text2img) is string t2i) return TextToImage(r, t2i, r.GetValue(steps) ?? 25, r.GetValue(repeats), r.GetValue(outOpt) ?? "runs/bench-text2img.json");
            var req = new BenchRequest(r.GetValue(models) ?? Array.Empty<string>(), r.GetValue(run), r.GetValue(sampler), r.GetValue(steps),
                                       r.GetValue(batch), r.GetValue(repeats), r.GetValue(iters), r.GetValue(train), r.GetValue(trainBatch),
                                       r.GetValue(distill), r.GetValue(distillBatch), r.GetValue(rssLog), r.GetValue(rssSteps), r.GetValue(outOpt));
            if (req.RssOnly)
            {
                var trend = Benchmark.RunRssOnly(req);
                AnsiConsole.MarkupLine(Markup.Escape(trend.Describe()));
                return trend.GrowthPercent < 5 ? 0 : 1;
            }
            var draws = Benchmark.LoadModels(req);
            Threads.Apply(r, smallModel: !draws[0].Spec.IsImage);
            var res = Benchmark.Run(req, draws, m => Console.WriteLine(m));
            var t = new Table().AddColumns("model", "NFE", "batch ms (median / p90)", "samples/s");
            foreach (var s in res.Models)
                t.AddRow(Markup.Escape(Path.GetFileName(s.Model)), s.Nfe.ToString(), $"{s.MedianBatchMs:F1} / {s.P90BatchMs:F1}", $"{s.SamplesPerSecond:N0}");
            AnsiConsole.Write(t);
            if (res.SpeedUp is double q) AnsiConsole.MarkupLine($"speed ratio (second / first): [bold]{q:F1}x[/]");
            if (res.DmdIterations is { } recipes)
            {
                AnsiConsole.MarkupLine($"convolution peak: {res.ConvPeakGflops:F0} GFLOP/s (one 4.8 GFLOP fp32 convolution, {Wording.Threads(res.Threads)})");
                foreach (var d in recipes)
                    AnsiConsole.MarkupLine(Markup.Escape($"{d.Recipe}, batch {d.Batch}: {d.Ms:F0} ms per iteration, {d.Gflop:F1} GFLOP, " +
                                                         $"{d.AchievedGflops:F0} GFLOP/s" + (d.PeakFraction is double f ? $" = {100 * f:F0} % of the peak" : " (FLOPs counted for the U-Nets only)")));
            }
            else if (res.DmdIterationMs is double ms) AnsiConsole.MarkupLine($"DMD iteration: {ms:F1} ms (batch {res.DmdBatch})");
            if (res.TrainImagesPerSecond is double tr) AnsiConsole.MarkupLine($"teacher training: {tr:F1} images/s (batch {res.TrainBatch})");
            if (res.Rss is not null) AnsiConsole.MarkupLine(Markup.Escape(res.Rss.Describe()));
            AnsiConsole.MarkupLine($"peak RSS {res.PeakRssMb} MB, {Wording.Threads(res.Threads)}");
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(req.OutPath)}");
            return 0;
        });
        return cmd;
    }

    static int TextToImage(ParseResult r, string model, int steps, int repeats, string outPath)
    {
        Checkpoint.EnsureWritableFile(outPath, "--out");
        Threads.Apply(r, smallModel: false);
        StableDiffusion? sd = null;
        ClipTextModel te; UNet2DConditionModel unet; AutoencoderKL vae;
        if (model == "sd15") (te, unet, vae) = TextToImageBenchmark.StableDiffusion15Random();
        else { sd = StableDiffusion.Load(model); (te, unet, vae) = (sd.TextEncoder, sd.Unet, sd.Vae); }
        using var _ = sd;
        AnsiConsole.MarkupLine(Markup.Escape($"{(model == "sd15" ? "Stable Diffusion v1.5 (full size, random weights)" : model)}: " +
                                             $"UNet {unet.parameters().Sum(p => p.numel()):N0} parameters, latents {unet.Config.SampleSize}x{unet.Config.SampleSize}, {TorchSharp.torch.get_num_threads()} threads"));
        var res = TextToImageBenchmark.Run(model, te, unet, vae, unet.Config.SampleSize, steps, repeats, m => AnsiConsole.MarkupLine(Markup.Escape(m)));
        AnsiConsole.MarkupLine(Markup.Escape(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"{res.ImageSize}x{res.ImageSize}, batch 1: teacher ({steps} guided steps) {res.TeacherSecondsPerImage:F2} s/image ({res.TeacherImagesPerSecond:G3} images/s), " +
            $"one-step generator {res.StudentSecondsPerImage:F2} s/image ({res.StudentImagesPerSecond:G3} images/s): {res.SpeedUp:F0}x; peak RSS {res.PeakRssMb} MB")));
        Checkpoint.SaveJson(res, outPath);
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
        return 0;
    }
}
