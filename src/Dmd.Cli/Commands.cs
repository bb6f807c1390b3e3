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

internal static class Common
{
    public static Option<string> Out(string def) => new("--out", "-o") { Description = "output folder", DefaultValueFactory = _ => def };
    public static Option<string?> ConfigFile() => new("--config") { Description = "JSON file with the run's settings, or a run's own config.json (command-line options override it)" };
    public static Option<bool> AllowChanges() => new("--allow-changes") { Description = "continue the run in --out even though its settings differ from the saved ones" };

    /// <summary>What a training command passes to its trainer: progress, status lines, a clean stop on Ctrl-C/SIGTERM.</summary>
    public static RunOptions RunOptions(ParseResult r, Option<bool> allowChanges, Action<int, int, IReadOnlyDictionary<string, double>> onStep, Func<bool> stop) => new()
    {
        OnStep = onStep,
        OnMessage = m => AnsiConsole.MarkupLine(Markup.Escape(m)),
        Stop = stop,
        AllowChanges = r.GetValue(allowChanges),
    };

    public static T LoadConfig<T>(ParseResult r, Option<string?> file, ConfigOptions<T> opts) where T : class, new()
    {
        var path = r.GetValue(file);
        return opts.Bind(r, path is null ? null : Checkpoint.LoadSettings<T>(path));
    }

    /// <summary>Whole-number options that must be at least 1 (counts, sizes, repeats): a one-line error otherwise.</summary>
    public static void RequirePositive(ParseResult r, params Option[] options)
    {
        foreach (var o in options)
        {
            long? v = o switch { Option<int> i => r.GetValue(i), Option<int?> ni => r.GetValue(ni), Option<long> l => r.GetValue(l), _ => null };
            if (v is long x && x < 1) throw new DmdInputException($"{o.Name} {x}: must be at least 1");
        }
    }

    public static void ResultsTable(IEnumerable<ModelResult> rows)
    {
        var t = new Table().AddColumns("model", "NFE", "energy dist.", "precision", "recall", "modes", "in-mode", "samples/s");
        foreach (var r in rows)
            t.AddRow(Markup.Escape(r.Model), r.Nfe.ToString(), r.EnergyDistance.ToString("F4", CultureInfo.InvariantCulture),
                     r.Precision.ToString("F3", CultureInfo.InvariantCulture), r.Recall.ToString("F3", CultureInfo.InvariantCulture),
                     r.Modes is null ? "-" : $"{r.ModesCovered}/{r.Modes}", r.HighQuality?.ToString("P1", CultureInfo.InvariantCulture) ?? "-",
                     r.SamplesPerSecond.ToString("N0", CultureInfo.InvariantCulture));
        AnsiConsole.Write(t);
    }
}

/// <summary>`dmd toy2d`: the whole 2-D experiment.</summary>
internal static class Toy2dCommand
{
    public static Command Build()
    {
        var cmd = new Command("toy2d", "Train a 2-D teacher, distil it with DMD (and the paper's ablations), evaluate and plot everything.");
        var outOpt = Common.Out("runs/toy2d");
        var quick = new Option<bool>("--quick") { Description = "small budget (about a minute): for a first look and for tests" };
        var cfgFile = Common.ConfigFile();
        cmd.Options.Add(outOpt); cmd.Options.Add(quick); cmd.Options.Add(cfgFile);
        var opts = new ConfigOptions<Toy2dConfig>(cmd);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: true);
            var start = r.GetValue(cfgFile) is string f ? Checkpoint.LoadSettings<Toy2dConfig>(f) : r.GetValue(quick) ? Toy2dPresets.Quick : new Toy2dConfig();
            var cfg = opts.Bind(r, start);
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var exp = new Toy2dExperiment(cfg) { OnMessage = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]") };
            var sw = Stopwatch.StartNew();
            Toy2dResults? res = null;
            ProgressView.Run(report => { exp.OnProgress = report; res = exp.Run(outDir); });
            Common.ResultsTable(res!.Rows);
            AnsiConsole.MarkupLine($"data vs held-out data: energy distance {res.DataVsHeldOut:F4} (the noise floor)");
            var teacherEd = res.Rows[0].EnergyDistance;
            if (teacherEd > 3 * Math.Max(Math.Abs(res.DataVsHeldOut), 2e-4))
                AnsiConsole.MarkupLine($"DMD student / teacher (35 NFE) energy distance: [bold]{res.StudentTeacherRatio:F2}x[/];  student / teacher 1-step: {res.StudentOneStepTeacherRatio:P1}");
            else
                AnsiConsole.MarkupLine($"the teacher (35 NFE) is at the noise floor of the metric, so a student/teacher ratio means nothing here; student / teacher 1-step: {res.StudentOneStepTeacherRatio:P1}");
            AnsiConsole.MarkupLine($"wrote {Path.Combine(outDir, "results.json")}, samples.png, losses.png in {sw.Elapsed.TotalSeconds:F0} s");
            return 0;
        });
        return cmd;
    }
}

/// <summary>Named budgets of the 2-D experiment.</summary>
public static class Toy2dPresets
{
    /// <summary>
    /// About a minute per distillation on one quiet core (three with the ablations): what the end-to-end test runs. The
    /// generator's weights are averaged (decay 0.99): without the average the student/teacher energy-distance ratio of
    /// this budget spread from 1.26x to 3.26x over teacher seeds, DMD seeds and 1 or 2 threads; with it 1.64x-1.95x.
    /// </summary>
    public static Toy2dConfig Quick => new()
    {
        TrainPoints = 20_000, EvalSamples = 5000, PairCount = 2000, Width = 128, Depth = 3,
        Teacher = new TeacherConfig { Steps = 1500, BatchSize = 256, CheckpointEvery = 500 },
        Dmd = new DmdConfig { Steps = 1500, BatchSize = 128, RegressionBatchSize = 128, WarmupSteps = 100, LearningRate = 2e-4, CheckpointEvery = 300, FakeUpdatesPerStep = 5, EmaDecay = 0.99 },
    };
}

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
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: true);
            Common.RequirePositive(r, points, width, depth);
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            var dataName = r.GetValue(data)!;
            if (dataName.StartsWith("fashion-mnist") || dataName.StartsWith("folder:"))
                throw new DmdInputException($"--data {dataName} is image data: train it with `dmd train-image-teacher --data {dataName}`");
            var set = PointDistributions.Load(dataName, r.GetValue(points), seed: 1);
            if (!r.GetValue(cond)) set = set.WithoutLabels();
            var spec = new NetworkSpec("mlp", set.Shape, set.NumClasses, Math.Round(set.Std, 4), r.GetValue(width), r.GetValue(depth));
            using var trainer = new TeacherTrainer(spec, cfg, set);
            AnsiConsole.MarkupLine($"teacher: {TrainingUtils.ParameterCount(trainer.Net):N0} parameters, {set.Count:N0} points of dim {set.Dim}, {set.NumClasses} classes");
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            using var signal = new StopSignal();
            bool finished = true;
            ProgressView.Run(report => finished = trainer.Run(outDir, dataName, Common.RunOptions(r, allow, (s, n, l) => report("teacher", s, n, l), () => signal.Requested)));
            if (!finished)
            {
                AnsiConsole.MarkupLine($"stopped on request at step {trainer.Step} of {cfg.Steps} (checkpoint written); the same command continues the run");
                return 0;
            }
            Plots.LossCurves(Path.Combine(outDir, "losses.png"), new[] { ("teacher", Path.Combine(outDir, "losses.csv")) });
            AnsiConsole.MarkupLine($"wrote {Path.Combine(outDir, "teacher.safetensors")}");
            return 0;
        });
        return cmd;
    }
}

/// <summary>`dmd pairs`: the teacher's ODE outputs for stored noise (DMD's regression set).</summary>
internal static class PairsCommand
{
    public static Command Build()
    {
        var cmd = new Command("pairs", "Make regression pairs (z, y, x_ref = teacher Heun ODE output) for DMD; written in shards, " +
                                       "so running the same command again resumes a stopped run.");
        var teacher = new Option<string>("--teacher") { Description = "teacher .safetensors file or its run folder", Required = true };
        var count = new Option<int>("--count") { Description = "number of pairs", DefaultValueFactory = _ => 10_000 };
        var steps = new Option<int>("--steps") { Description = "Heun steps (18 = 35 NFE)", DefaultValueFactory = _ => 18 };
        var guidance = new Option<double>("--guidance") { Description = "CFG scale for a conditional teacher (distil with the same --guidance-real)", DefaultValueFactory = _ => 1.0 };
        var sigmaMax = new Option<double>("--sigma-max") { Description = "noise level the sampler starts at (distil with the same --sigma-max)", DefaultValueFactory = _ => KarrasSchedule.DefaultSigmaMax };
        var seed = new Option<long>("--seed") { Description = "seed of the stored noise (and labels)", DefaultValueFactory = _ => 3 };
        var batch = new Option<int?>("--batch") { Description = "pairs per shard (default 1024 for points, 64 for images)" };
        var outOpt = new Option<string>("--out", "-o") { Description = "a folder of shards, or one .safetensors file (no resume)", DefaultValueFactory = _ => "runs/pairs" };
        foreach (var o in new Option[] { teacher, count, steps, guidance, sigmaMax, seed, batch, outOpt }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, count, steps, batch);
            var (net, spec) = DenoiserFile.Load(r.GetValue(teacher)!);
            Threads.Apply(r, smallModel: !spec.IsImage);
            var outPath = r.GetValue(outOpt)!;
            bool file = outPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
            if (file) Checkpoint.EnsureWritableFile(outPath, "--out"); else Checkpoint.EnsureWritableFolder(outPath, "--out");
            int b = r.GetValue(batch) ?? (spec.IsImage ? 64 : 1024);
            RegressionPairs? pairs = null;
            var sw = Stopwatch.StartNew();
            ProgressView.Run(report => pairs = RegressionPairs.Generate(net, spec.SampleShape, r.GetValue(count), r.GetValue(steps), r.GetValue(guidance), r.GetValue(seed),
                                                                        batchSize: b, onBatch: (d, n) => report("pairs", d, n, null), shardDir: file ? null : outPath,
                                                                        sigmaMax: r.GetValue(sigmaMax)));
            if (file) pairs!.Save(outPath);
            AnsiConsole.MarkupLine($"wrote {pairs!.Count:N0} pairs ({pairs.Info.Nfe} NFE each) to {outPath} in {sw.Elapsed.TotalSeconds:F0} s");
            return 0;
        });
        return cmd;
    }
}

/// <summary>`dmd distill`: DMD training of a one-step generator.</summary>
internal static class DistillCommand
{
    public static Command Build()
    {
        var cmd = new Command("distill", "Distil a teacher into a one-step generator with DMD; resumes if --out holds a checkpoint.");
        var teacher = new Option<string>("--teacher") { Description = "teacher .safetensors file or its run folder", Required = true };
        var pairs = new Option<string?>("--pairs") { Description = "regression pairs from `dmd pairs` (not needed with --mode DmOnly)" };
        var minutes = new Option<double?>("--minutes") { Description = "stop after this many minutes (checkpoint and generator.safetensors written; run again to continue)" };
        var outOpt = Common.Out("runs/dmd");
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { teacher, pairs, minutes, outOpt, cfgFile, allow }) cmd.Options.Add(o);
        var opts = new ConfigOptions<DmdConfig>(cmd);
        cmd.SetAction(r =>
        {
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            var teacherPath = r.GetValue(teacher)!;
            var (net, spec) = DenoiserFile.Load(teacherPath);
            Threads.Apply(r, smallModel: !spec.IsImage);
            var p = r.GetValue(pairs) is string pp ? RegressionPairs.Load(pp) : null;
            using var trainer = new DmdTrainer(net, spec, cfg, p);
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var clock = Stopwatch.StartNew();
            double limit = (r.GetValue(minutes) ?? double.PositiveInfinity) * 60;
            using var signal = new StopSignal();
            int firstStep = -1; // a --minutes budget ends a run only after it made a step, so every call moves the run on
            ProgressView.Run(report => trainer.Run(outDir, teacherPath, r.GetValue(pairs),
                Common.RunOptions(r, allow, (s, n, l) => report($"dmd {cfg.Mode}", s, n, l),
                                  () => signal.Requested || (trainer.Step > (firstStep < 0 ? firstStep = trainer.Step : firstStep) && clock.Elapsed.TotalSeconds > limit))));
            if (trainer.Step < cfg.Steps)
                AnsiConsole.MarkupLine($"stopped {(signal.Requested ? "on request" : $"after {r.GetValue(minutes)} min")} at step {trainer.Step} of {cfg.Steps}; the same command continues the run");
            Plots.LossCurves(Path.Combine(outDir, "losses.png"), new[] { ("dmd", Path.Combine(outDir, "losses.csv")) });
            AnsiConsole.MarkupLine($"wrote {Path.Combine(outDir, "generator.safetensors")}");
            return 0;
        });
        return cmd;
    }
}

/// <summary>`dmd sample`: samples from a teacher (Heun/Euler) or a one-step generator.</summary>
internal static class SampleCommand
{
    public static Command Build()
    {
        var cmd = new Command("sample", "Draw samples from a teacher (multi-step) or a DMD generator (one step); writes CSV and a scatter plot " +
                                        "for point data, a PNG grid (one row per class) and optionally one PNG per image for images.");
        var model = new Option<string>("--model") { Description = "a teacher.safetensors or generator.safetensors (or its run folder)", Required = true };
        var n = new Option<int?>("--n") { Description = "number of samples (default 2000 points; 100 images, i.e. 10 per class for 10 classes)" };
        var sampler = new Option<string>("--sampler") { Description = "onestep, heun or euler (default: onestep for generator files, heun otherwise)" };
        var steps = new Option<int>("--steps") { Description = "sampler steps (heun: 2N-1 NFE)", DefaultValueFactory = _ => 18 };
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
            var (x, secs) = m.Draw(z, y, count);
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
        ProgressView.Run(report => (samples, secs) = m.Draw(z, y, batch, (d, t) => report("sample", d, t, null)));
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
