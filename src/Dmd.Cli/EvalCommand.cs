using System.CommandLine;
using System.Globalization;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Pipelines;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>`dmd eval`: draw N samples from any model and measure them (<see cref="Evaluation"/>).</summary>
internal static class EvalCommand
{
    public static Command Build()
    {
        var cmd = new Command("eval", "Draw N samples from a teacher (chosen sampler and steps) or a DMD generator (its trained steps) and measure them. " +
                                      "Points: energy distance, precision/recall, mode coverage against held-out data. " +
                                      "Fashion-MNIST images: FD-FMNIST against the shipped test statistics and per-class accuracy; a text-to-image model (a diffusers folder " +
                                      "or a `dmd distill` run of one) with --class-prompts: the same on images of each class's prompt (prompt following).");
        var model = new Option<string>("--model") { Description = "teacher.safetensors or generator.safetensors (or its run folder); or a text-to-image folder or its distillation run (with --class-prompts)", Required = true };
        var classPrompts = new Option<string?>("--class-prompts") { Description = "text-to-image: a file of 10 prompts, line i prompting Fashion-MNIST class i (the judge's classes)" };
        var prompts = new Option<string?>("--prompts") { Description = "text-to-image: prompts (one a line, each sample's drawn uniformly) for FID against --reference" };
        var reference = new Option<string?>("--reference") { Description = "text-to-image: a folder of reference images (PNG/JPEG, resized to the model's image size) for FID with --prompts" };
        var fidWeights = new Option<string?>("--fid-weights") { Description = "FID Inception weights (safetensors from tools/convert_inception_weights.py) for --reference" };
        var sampler = new Option<string?>("--sampler") { Description = "onestep, heun or euler (default: onestep for generators, heun otherwise)" };
        var steps = new Option<int?>("--steps") { Description = "sampler steps (default: heun 18 = 35 NFE); a generator: how many of its trained steps (default all)" };
        var guidance = new Option<double>("--guidance") { Description = "classifier-free guidance scale (1 = none)", DefaultValueFactory = _ => 1.0 };
        var interval = new Option<string?>("--guidance-interval") { Description = "LO,HI: guide only at noise levels sigma in (LO, HI] (Kynkäänniemi et al. 2024; EDM2), the conditional model elsewhere; LO,HI,W: guidance W elsewhere; default: every level" };
        var finishWith = new Option<string?>("--finish-with") { Description = "a teacher (teacher.safetensors or its run folder) that takes over after a K-step generator's first --steps k: the k-th output re-noised to the next level as the chain would, then the teacher's Heun to 0 (with --guidance, --guidance-interval); shows where along the chain the student falls behind" };
        var finishSteps = new Option<int>("--finish-steps") { Description = "Heun steps of --finish-with", DefaultValueFactory = _ => 10 };
        var n = new Option<int>("--n") { Description = "number of samples", DefaultValueFactory = _ => 10_000 };
        var batch = new Option<int?>("--batch") { Description = "samples per batch (default 500 for points, 64 for images: larger image batches ran slower per image on a 2-core CPU)" };
        var seed = new Option<long>("--seed") { Description = "seed of the noise and labels of the samples", DefaultValueFactory = _ => 0 };
        var data = new Option<string?>("--data") { Description = "points: the reference distribution (built-in name or csv:PATH; default: the data the model's run learned, from its config.json)" };
        var outOpt = new Option<string?>("--out", "-o") { Description = "JSON file for the results (default: runs/eval/MODEL.json; never inside the model's folder unless named here)" };
        var carry = Common.StepNoiseCarry();
        foreach (var o in new Option[] { model, classPrompts, prompts, reference, fidWeights, sampler, steps, carry, guidance, interval, finishWith, finishSteps, n, batch, seed, data, outOpt }) cmd.Options.Add(o);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, steps, batch);
            if (TextToImageModel(r.GetValue(model)!) is string teacherFolder)
            {
                if (r.GetValue(interval) is not null) throw new DmdInputException("--guidance-interval is for class-conditional teachers; a text-to-image evaluation guides at every level");
                if (r.GetValue(finishWith) is not null) throw new DmdInputException("--finish-with is for class-conditional generators; a text-to-image generator is evaluated on its own steps");
                if (r.GetValue(carry) is not null) throw new DmdInputException("--step-noise-carry is for class-conditional K-step generators; a text-to-image generator samples as it was trained");
                return TextToImage(r, teacherFolder, model, classPrompts, sampler, steps, guidance, n, batch, seed, outOpt, (prompts, reference, fidWeights));
            }
            if (r.GetValue(classPrompts) is not null || r.GetValue(prompts) is not null || r.GetValue(reference) is not null)
                throw new DmdInputException("--class-prompts, --prompts and --reference are for a text-to-image model (a diffusers folder or a distillation of one)");
            var finisher = r.GetValue(finishWith);
            var guideAt = GuidanceInterval.Parse(r.GetValue(interval), "--guidance-interval");
            var m = finisher is null
                ? ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), r.GetValue(guidance), Devices.Get(r), guideAt)
                : ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), 1, Devices.Get(r))
                           .FinishedBy(finisher, r.GetValue(finishSteps), r.GetValue(guidance), guideAt, Devices.Get(r));
            m = m.WithStepNoiseCarry(r.GetValue(carry));
            var outPath = r.GetValue(outOpt) ?? Evaluation.DefaultOut(m.Path);
            Checkpoint.EnsureWritableFile(outPath, "--out");
            Threads.Apply(r, smallModel: !m.Spec.IsImage);
            EvalResult res = null!;
            ProgressView.Run(report => res = Evaluation.Run(m, r.GetValue(n), r.GetValue(seed), r.GetValue(batch), r.GetValue(data),
                                                            (d, t) => report("sample", d, t, null), msg => AnsiConsole.MarkupLine(Markup.Escape(msg))));
            var (metrics, perClass, count, secs) = (res.Metrics, res.PerClassAccuracy, res.Samples, res.Samples / res.SamplesPerSecond);
            if (Mpi.IsRoot) Checkpoint.SaveJson(res, outPath); // before any printing: the measurement is never lost to the console
            var t = new Table().AddColumns("measure", "value").Title(Markup.Escape(m.Title));
            t.AddRow("NFE", m.Nfe.ToString());
            if ((m.Guidance != 1 || m.GuidanceInterval is not null) && (m.Sampler != "onestep" || m.Finisher is not null))
                t.AddRow("guidance", Markup.Escape(m.Guidance.ToString("G", CultureInfo.InvariantCulture) + (m.GuidanceInterval is { } gi ? $" at sigma in {gi}" : "")));
            t.AddRow("samples", count.ToString());
            t.AddRow("samples/s", (count / secs).ToString("N1", CultureInfo.InvariantCulture));
            foreach (var (k, v) in metrics) t.AddRow(Markup.Escape(k), v.ToString("G4", CultureInfo.InvariantCulture));
            AnsiConsole.Write(t);
            if (perClass is not null)
                AnsiConsole.MarkupLine(Markup.Escape(PerClassLine(perClass, res.RealPerClassAccuracy)));
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// "per class: T-shirt/top 83.2 %, ..." and, when the judge's own accuracy on real test images is known, each class's
    /// in brackets, so that a class the judge confuses on real images (Shirt: 74 %) is not read against 100 %.
    /// </summary>
    static string PerClassLine(double[] perClass, double[]? real) =>
        (real is null ? "per class: " : "per class (in brackets: the judge on real test images): ")
        + string.Join(", ", perClass.Select((a, c) => FashionMnist.ClassNames[c]
                                                      + (double.IsNaN(a) ? " - (no samples)" : string.Create(CultureInfo.InvariantCulture, $" {100 * a:F1} %"))
                                                      + (real is null ? "" : string.Create(CultureInfo.InvariantCulture, $" ({100 * real[c]:F1})"))));

    /// <summary>The text-to-image folder a model path is (itself) or was distilled from (a run folder with an sd-unet generator); null otherwise.</summary>
    static string? TextToImageModel(string path)
    {
        if (TextToImageDistillation.IsPipelineFolder(path)) return path;
        if (DistillCheckpoint.Locate(path) is { Info: var info })
        {
            if (info.Spec is not SdUNetSpec) return null;
            return TextToImageDistillation.IsPipelineFolder(info.Teacher) ? info.Teacher
                : throw new DmdInputException($"{path} is a text-to-image run's checkpoint but its teacher folder {info.Teacher} is gone");
        }
        var spec = Path.Combine(path, "generator.json");
        if (!File.Exists(spec) || Checkpoint.LoadJson<NetworkSpec>(spec) is not SdUNetSpec) return null;
        var teacher = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(path, "config.json")))?["Teacher"]?.GetValue<string>();
        return teacher is not null && TextToImageDistillation.IsPipelineFolder(teacher) ? teacher
            : throw new DmdInputException($"{path} holds a text-to-image generator but its config.json names no text-to-image teacher folder");
    }

    static int TextToImage(ParseResult r, string teacherFolder, Option<string> model, Option<string?> classPrompts, Option<string?> sampler, Option<int?> steps,
                           Option<double> guidance, Option<int> n, Option<int?> batch, Option<long> seed, Option<string?> outOpt,
                           (Option<string?> Prompts, Option<string?> Reference, Option<string?> Weights) fid)
    {
        var modelPath = r.GetValue(model)!;
        bool useFid = r.GetValue(fid.Reference) is not null;
        if (useFid == (r.GetValue(classPrompts) is not null))
            throw new DmdInputException($"{modelPath} is a text-to-image model: give --class-prompts FILE (10 lines, line i prompting Fashion-MNIST class i: " +
                                        "FD-FMNIST and prompt following), or --prompts FILE --reference FOLDER --fid-weights FILE (FID), not both");
        var prompts = RegressionPairs.ReadPrompts(useFid ? r.GetValue(fid.Prompts) ?? throw new DmdInputException("--reference: give the prompts of the samples with --prompts FILE")
                                                         : r.GetValue(classPrompts)!);
        using var inception = useFid ? Metrics.FidInceptionV3.Load(r.GetValue(fid.Weights) ?? throw new DmdInputException(
            "--reference: FID needs the Inception weights, --fid-weights FILE (made by tools/convert_inception_weights.py from pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")) : null;
        var outPath = r.GetValue(outOpt) ?? Evaluation.DefaultOut(modelPath);
        Checkpoint.EnsureWritableFile(outPath, "--out");
        using var sd = StableDiffusion.Load(teacherFolder, Devices.Get(r));
        Threads.Apply(r, smallModel: false);
        bool distilled = teacherFolder != modelPath;
        var generator = distilled ? OneStepGenerator.Load(modelPath) : null;
        generator?.Net.to(sd.Device);
        var options = new TextToImageOptions { Sampler = r.GetValue(sampler) ?? "euler", Steps = r.GetValue(steps) ?? 25, Guidance = r.GetValue(guidance), Batch = r.GetValue(batch) ?? 64 };
        if (!distilled) options.Validate();
        int k = generator?.CheckSteps(r.GetValue(steps)) ?? 0;
        int nfe = distilled ? k : options.Sampler == "heun" ? 2 * options.Steps - 1 : options.Steps;
        var shape = generator?.Spec!.SampleShape ?? new[] { sd.Unet.Config.InChannels, sd.Unet.Config.SampleSize, sd.Unet.Config.SampleSize };
        EvalResult res = null!;
        Tensor Make(IReadOnlyList<string> p, Tensor z, long first) => distilled ? sd.Generate(generator!, p, r.GetValue(seed) + first, k, options.Batch, latents: z).Images
                                                                                : sd.Generate(p, options, latents: z).Images;
        var samplerName = distilled ? "onestep" : options.Sampler;
        double w = distilled ? 1 : options.Guidance;
        if (useFid)
        {
            int size = shape[1] * sd.VaeScaleFactor;
            var refName = r.GetValue(fid.Reference)!;
            var refImages = Data.DataSource.Parse("folder:" + refName).LoadImages(size, sd.Vae.Config.OutChannels, xflip: false).Images;
            var refFloat = refImages.to(ScalarType.Float32) / 127.5 - 1;
            ProgressView.Run(report => res = Evaluation.RunTextToImageFid(modelPath, samplerName, nfe, w, prompts, shape, Make, r.GetValue(n), r.GetValue(seed),
                                                                          refFloat, inception!, refName, options.Batch, (d, t) => report("sample", d, t, null)));
        }
        else
            ProgressView.Run(report => res = Evaluation.RunTextToImage(modelPath, samplerName, nfe, w, prompts, shape, Make,
                                                                       r.GetValue(n), r.GetValue(seed), options.Batch, (d, t) => report("sample", d, t, null)));
        Checkpoint.SaveJson(res, outPath); // before any printing, as above
        var t = new Table().AddColumns("measure", "value").Title(Markup.Escape($"{modelPath} ({res.Sampler}, {res.Nfe} NFE)"));
        t.AddRow("samples/s", res.SamplesPerSecond.ToString("N1", CultureInfo.InvariantCulture));
        foreach (var (key, v) in res.Metrics) t.AddRow(Markup.Escape(key), v.ToString("G4", CultureInfo.InvariantCulture));
        AnsiConsole.Write(t);
        if (res.PerClassAccuracy is { } perClass)
            AnsiConsole.MarkupLine(Markup.Escape(PerClassLine(perClass, res.RealPerClassAccuracy)));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(outPath)}");
        return 0;
    }
}
