using System.CommandLine;
using System.Globalization;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Pipelines;
using Dmd.IO;
using Dmd.Training;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>`dmd sample`: samples from a teacher (Heun/Euler) or a one-step generator.</summary>
internal static class SampleCommand
{
    public static Command Build()
    {
        var cmd = new Command("sample", "Draw samples from a teacher (multi-step) or a DMD generator (one step, or its K trained steps); writes CSV and a scatter plot " +
                                        "for point data, a PNG grid (one row per class) and optionally one PNG per image for images.");
        var model = new Option<string>("--model") { Description = "a teacher.safetensors or generator.safetensors (or its run folder)", Required = true };
        var n = new Option<int?>("--n") { Description = "number of samples (default 2000 points; 100 images, i.e. 10 per class for 10 classes)" };
        var sampler = new Option<string>("--sampler") { Description = "onestep, heun or euler (default: onestep for generator files, heun otherwise)" };
        var steps = new Option<int?>("--steps") { Description = "sampler steps (default: heun 18 = 35 NFE); a generator: how many of its trained steps (default all)" };
        var guidance = new Option<double>("--guidance") { Description = "classifier-free guidance scale (1 = none)", DefaultValueFactory = _ => 1.0 };
        var interval = new Option<string?>("--guidance-interval") { Description = "LO,HI: guide only at noise levels sigma in (LO, HI] (Kynkäänniemi et al. 2024; EDM2), the conditional model elsewhere; LO,HI,W: guidance W elsewhere; default: every level" };
        var cls = new Option<int?>("--class") { Description = "class index for a conditional model (default: random for points, one row per class for images)" };
        var seed = new Option<long>("--seed") { Description = "random seed (images: image i uses seed + i, as EDM's --seeds)", DefaultValueFactory = _ => 0 };
        var each = new Option<bool>("--each") { Description = "images: also write one PNG per image into a folder named after --out" };
        var batch = new Option<int>("--batch") { Description = "samples per batch", DefaultValueFactory = _ => 256 };
        var scale = new Option<int>("--scale") { Description = "images: enlarge the grid's tiles this many times", DefaultValueFactory = _ => 1 };
        var outOpt = new Option<string>("--out", "-o") { Description = "output file (.csv for points, .png for images)", DefaultValueFactory = _ => "runs/samples.csv" };
        var carry = Common.StepNoiseCarry();
        foreach (var o in new Option[] { model, n, sampler, steps, carry, guidance, interval, cls, seed, each, batch, scale, outOpt }) cmd.Options.Add(o);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, n, steps, batch, scale);
            var m = ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), r.GetValue(guidance), Devices.Get(r),
                                  GuidanceInterval.Parse(r.GetValue(interval), "--guidance-interval")).WithStepNoiseCarry(r.GetValue(carry));
            Threads.Apply(r, smallModel: !m.Spec.IsImage);
            var outPath = r.GetValue(outOpt)!;
            var guided = (m.Guidance != 1 || m.GuidanceInterval is not null) && m.Sampler != "onestep" ? string.Create(CultureInfo.InvariantCulture, $", guidance {m.Guidance}{(m.GuidanceInterval is { } gi ? $" at sigma in {gi}" : "")}") : "";
            if (m.Spec.IsImage)
            {
                ImageSampleResult res = null!;
                ProgressView.Run(report => res = m.WriteImages(outPath, r.GetValue(n) ?? 100, r.GetValue(cls), r.GetValue(seed), r.GetValue(batch),
                                                               r.GetValue(scale), r.GetValue(each), (d, t) => report("sample", d, t, null)));
                var also = res.EachFolder is null ? "" : $" and {res.Count} PNGs in {res.EachFolder}";
                AnsiConsole.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                    $"{res.Count} images, {m.SamplerName}, {m.Nfe} NFE{guided}, {res.ImagesPerSecond:F1} images/s ({Wording.Threads(torch.get_num_threads())}); wrote {res.GridPath}{also}")));
                return 0;
            }
            int count = r.GetValue(n) ?? 2000;
            double rate = m.WritePoints(outPath, count, r.GetValue(cls), r.GetValue(seed), r.GetValue(batch));
            AnsiConsole.MarkupLine(Markup.Escape($"{count} samples, {m.Nfe} NFE{guided}, {rate:N0} samples/s; wrote {outPath} and {Path.ChangeExtension(outPath, ".png")}"));
            return 0;
        });
        return cmd;
    }
}
