using System.CommandLine;
using System.Diagnostics;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using TorchSharp;
using Dmd.IO;
using Dmd.Pipelines;
using Dmd.Networks;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd pairs`: the teacher's ODE outputs for stored noise (DMD's regression set).</summary>
internal static class PairsCommand
{
    public static Command Build()
    {
        var cmd = new Command("pairs", "Make regression pairs (z, y, x_ref = teacher Heun ODE output) for DMD; written in shards, " +
                                       "so running the same command again resumes a stopped run.");
        var teacher = new Option<string>("--teacher") { Description = "teacher .safetensors file or its run folder, or a text-to-image (diffusers Stable Diffusion) folder with --prompts", Required = true };
        var prompts = new Option<string?>("--prompts") { Description = "a text-to-image teacher's prompts, one a line: each pair's prompt is drawn from them (latent pairs; sigma-max is the teacher's largest training sigma)" };
        var count = new Option<int>("--count") { Description = "number of pairs", DefaultValueFactory = _ => 10_000 };
        var steps = new Option<int>("--steps") { Description = "Heun steps (18 = 35 NFE)", DefaultValueFactory = _ => 18 };
        var guidance = new Option<double>("--guidance") { Description = "CFG scale for a conditional teacher (distil with the same --guidance-real)", DefaultValueFactory = _ => 1.0 };
        var sigmaMax = new Option<double>("--sigma-max") { Description = "noise level the sampler starts at (distil with the same --sigma-max)", DefaultValueFactory = _ => KarrasSchedule.DefaultSigmaMax };
        var seed = new Option<long>("--seed") { Description = "seed of the stored noise (and labels)", DefaultValueFactory = _ => 3 };
        var batch = new Option<int?>("--batch") { Description = "pairs per shard (default 1024 for points, 64 for images)" };
        var outOpt = new Option<string>("--out", "-o") { Description = "a folder of shards, or one .safetensors file (no resume)", DefaultValueFactory = _ => "runs/pairs" };
        foreach (var o in new Option[] { teacher, prompts, count, steps, guidance, sigmaMax, seed, batch, outOpt }) cmd.Options.Add(o);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, count, steps, batch);
            if (TextToImageDistillation.IsPipelineFolder(r.GetValue(teacher)!)) return TextToImagePairs(r, teacher, prompts, count, steps, guidance, sigmaMax, seed, batch, outOpt);
            if (r.GetValue(prompts) is not null)
                throw Common.PromptsNeedTextToImage(r.GetValue(teacher)!);
            var (net, spec) = DenoiserFile.Load(r.GetValue(teacher)!);
            Threads.Apply(r, smallModel: !spec.IsImage);
            var device = Devices.Get(r);
            net.to(device);
            var outPath = r.GetValue(outOpt)!;
            bool file = outPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
            if (file) Checkpoint.EnsureWritableFile(outPath, "--out"); else Checkpoint.EnsureWritableFolder(outPath, "--out");
            int b = r.GetValue(batch) ?? (spec.IsImage ? 64 : 1024);
            RegressionPairs? pairs = null;
            var sw = Stopwatch.StartNew();
            ProgressView.Run(report => pairs = RegressionPairs.Generate(net, spec.SampleShape, r.GetValue(count), r.GetValue(steps), r.GetValue(guidance), r.GetValue(seed),
                                                                        batchSize: b, onBatch: (d, n) => report("pairs", d, n, null), shardDir: file ? null : outPath,
                                                                        sigmaMax: r.GetValue(sigmaMax), device: device));
            if (file && Mpi.IsRoot) pairs!.Save(outPath);
            AnsiConsole.MarkupLine($"wrote {pairs!.Count:N0} pairs ({pairs.Info.Nfe} NFE each) to {Markup.Escape(outPath)} in {sw.Elapsed.TotalSeconds:F0} s");
            return 0;
        });
        return cmd;
    }

    /// <summary>Latent pairs of a text-to-image teacher, one prompt per pair drawn from the prompts file.</summary>
    static int TextToImagePairs(ParseResult r, Option<string> teacher, Option<string?> prompts, Option<int> count, Option<int> steps, Option<double> guidance,
                                Option<double> sigmaMax, Option<long> seed, Option<int?> batch, Option<string> outOpt)
    {
        var promptsFile = r.GetValue(prompts) ?? throw new DmdInputException($"{r.GetValue(teacher)} is a text-to-image teacher: give its prompts with --prompts FILE (one a line)");
        if (r.GetResult(sigmaMax) is { Implicit: false })
            throw new DmdInputException("--sigma-max: a text-to-image teacher's pairs start at its largest training sigma; leave the option out");
        var promptList = RegressionPairs.ReadPrompts(promptsFile);
        using var sd = StableDiffusion.Load(r.GetValue(teacher)!, Devices.Get(r));
        Threads.Apply(r, smallModel: false);
        var outPath = r.GetValue(outOpt)!;
        bool file = outPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
        if (file) Checkpoint.EnsureWritableFile(outPath, "--out"); else Checkpoint.EnsureWritableFolder(outPath, "--out");
        RegressionPairs? pairs = null;
        var sw = Stopwatch.StartNew();
        ProgressView.Run(report => pairs = TextToImageDistillation.MakePairs(sd, promptList, r.GetValue(count), r.GetValue(steps), r.GetValue(guidance), r.GetValue(seed),
                                                                             r.GetValue(batch) ?? 64, (d, n) => report("pairs", d, n, null), file ? null : outPath));
        if (file && Mpi.IsRoot) pairs!.Save(outPath);
        AnsiConsole.MarkupLine($"wrote {pairs!.Count:N0} latent pairs ({pairs.Info.Nfe} NFE each, {promptList.Length} prompts) to {Markup.Escape(outPath)} in {sw.Elapsed.TotalSeconds:F0} s");
        return 0;
    }
}
