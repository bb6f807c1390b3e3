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
        var cls = new Option<int?>("--class") { Description = "class index for a conditional model (default: random for points, one row per class for images)" };
        var seed = new Option<long>("--seed") { Description = "random seed (images: image i uses seed + i, as EDM's --seeds)", DefaultValueFactory = _ => 0 };
        var each = new Option<bool>("--each") { Description = "images: also write one PNG per image into a folder named after --out" };
        var batch = new Option<int>("--batch") { Description = "images sampled per batch", DefaultValueFactory = _ => 256 };
        var scale = new Option<int>("--scale") { Description = "images: enlarge the grid's tiles this many times", DefaultValueFactory = _ => 1 };
        var outOpt = new Option<string>("--out", "-o") { Description = "output file (.csv for points, .png for images)", DefaultValueFactory = _ => "runs/samples.csv" };
        foreach (var o in new Option[] { model, n, sampler, steps, guidance, cls, seed, each, batch, scale, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, n, steps, batch, scale);
            var m = ModelDraw.Load(r.GetValue(model)!, r.GetValue(sampler), r.GetValue(steps), r.GetValue(guidance));
            var (spec, which) = (m.Spec, m.Sampler);
            Threads.Apply(r, smallModel: !spec.IsImage);
            int? classIndex = r.GetValue(cls);
            if (classIndex is int ci && spec.LabelDim > 0 && (ci < 0 || ci >= spec.LabelDim))
                throw new DmdInputException($"--class {ci} is out of range: the model has {spec.LabelDim} classes (0..{spec.LabelDim - 1})");
            if (spec.IsImage) return SampleImages(m, r.GetValue(n) ?? 100, classIndex,
                                                  r.GetValue(seed), r.GetValue(each), r.GetValue(batch), r.GetValue(scale), r.GetValue(outOpt)!);

            using var g = new torch.Generator((ulong)r.GetValue(seed));
            int count = r.GetValue(n) ?? 2000;
            var z = Rng.Normal(new long[] { count }.Concat(spec.SampleShape.Select(s => (long)s)).ToArray(), g);
            Tensor? y = null;
            if (spec.LabelDim > 0)
                y = classIndex is int c ? Rng.OneHot(torch.full(count, c, ScalarType.Int64), spec.LabelDim) : Rng.OneHotLabels(spec.LabelDim, count, g);
            var (x, secs) = m.Draw(z, y, count, seed: r.GetValue(seed));
            int nfe = m.Nfe;
            var outPath = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFile(outPath, "--out");
            var flat = x.reshape(count, -1);
            PointSet.ToCsv(outPath, flat, y?.argmax(1));
            if (flat.shape[1] >= 2) Plots.ScatterPanels(Path.ChangeExtension(outPath, ".png"), new[] { ($"{which}, {nfe} NFE", flat) }, flat);
            AnsiConsole.MarkupLine($"{count} samples, {nfe} NFE, {count / secs:N0} samples/s; wrote {outPath} and {Path.ChangeExtension(outPath, ".png")}");
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// Images: per-image seeds; for a conditional model without --class, the count is rounded up to whole rows
    /// and the grid has one row per class; otherwise a square-ish grid.
    /// </summary>
    static int SampleImages(ModelDraw m, int count, int? classIndex, long seed, bool each, int batch, int scale, string outPath)
    {
        var (spec, which, guidance) = (m.Spec, m.Sampler, m.Guidance);
        if (count < 1 || batch < 1 || scale < 1) throw new DmdInputException("--n, --batch and --scale must be positive");
        if (!outPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) outPath = Path.ChangeExtension(outPath, ".png");
        Checkpoint.EnsureWritableFile(outPath, "--out");
        bool rows = spec.LabelDim > 0 && classIndex is null;
        int perClass = rows ? (count + spec.LabelDim - 1) / spec.LabelDim : 0;
        if (rows) count = perClass * spec.LabelDim;
        var z = ImageSampling.SeededNoise(spec.SampleShape, seed, count);
        Tensor? y = spec.LabelDim == 0 ? null
            : rows ? ImageSampling.ClassMajorLabels(spec.LabelDim, perClass)
            : Rng.OneHot(torch.full(count, classIndex!.Value, ScalarType.Int64), spec.LabelDim);
        Tensor samples = null!; double secs = 0;
        ProgressView.Run(report => (samples, secs) = m.Draw(z, y, batch, (d, t) => report("sample", d, t, null), seed));
        var res = new SampleResult(samples, m.Nfe);
        int columns = rows ? perClass : (int)Math.Ceiling(Math.Sqrt(count));
        ImageGrid.Save(outPath, res.Samples, columns, scale, rowLabels: rows ? Enumerable.Range(0, spec.LabelDim).Select(c => c.ToString()).ToArray() : null);
        string also = "";
        if (each)
        {
            var folder = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(outPath))!, Path.GetFileNameWithoutExtension(outPath));
            ImageGrid.SaveEach(folder, res.Samples, first: (int)seed); // named by seed, as EDM
            also = $" and {count} PNGs in {folder}";
        }
        AnsiConsole.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
            $"{count} images, {which}, {res.Nfe} NFE{(guidance != 1 && which != "onestep" ? $", guidance {guidance}" : "")}, {count / secs:F1} images/s ({torch.get_num_threads()} threads); wrote {outPath}{also}")));
        return 0;
    }
}
