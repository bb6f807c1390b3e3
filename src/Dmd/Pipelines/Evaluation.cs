using Dmd.Data;
using Dmd.Distillation;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>Result of an evaluation (`dmd eval` writes it as JSON).</summary>
/// <param name="Model">The model's path.</param>
/// <param name="Sampler">"onestep", "heun" or "euler".</param>
/// <param name="Nfe">Network evaluations per sample.</param>
/// <param name="Samples">Samples drawn.</param>
/// <param name="Guidance">CFG scale of multi-step sampling.</param>
/// <param name="SamplesPerSecond">Sampling speed (wall clock, this machine).</param>
/// <param name="Metrics">Images: fd_fmnist, class_accuracy, precision, recall (in the judge's feature space, when Fashion-MNIST is installed); points: energy_distance, precision, recall, modes_covered, in_mode.</param>
/// <param name="PerClassAccuracy">Per-class accuracy of a class-conditional Fashion-MNIST model (NaN: no samples of that class).</param>
/// <param name="Reference">Points: the reference data the samples were compared with.</param>
/// <param name="RealPerClassAccuracy">Images: the judge's own per-class accuracy on real test images, the reference for <paramref name="PerClassAccuracy"/>.</param>
public sealed record EvalResult(string Model, string Sampler, int Nfe, int Samples, double Guidance, double SamplesPerSecond,
                                Dictionary<string, double> Metrics, double[]? PerClassAccuracy, string? Reference = null,
                                double[]? RealPerClassAccuracy = null)
{
    /// <summary>The noise levels where multi-step sampling guided, "(LO, HI]"; null = all (or no guidance).</summary>
    public string? GuidanceInterval { get; init; }
    /// <summary>A generator's first steps finished by a teacher (<see cref="ModelDraw.FinishedBy"/>): "TEACHER, Heun N from sigma S" (TEACHER its path); null = none.</summary>
    public string? FinishedBy { get; init; }
    /// <summary>A K-step generator's share of carried noise between its steps as sampled (<see cref="OneStepGenerator.StepNoiseCarry"/>); null for other models.</summary>
    public double? StepNoiseCarry { get; init; }
}

/// <summary>
/// Draws N samples from any model and measures them: points against reference data (energy distance, precision/recall,
/// mode coverage), Fashion-MNIST-shaped images with the shipped classifier (FD-FMNIST, class accuracy, precision/recall).
/// </summary>
public static class Evaluation
{
    /// <summary>
    /// Samples <paramref name="count"/> (at least 10) with noise and labels from <paramref name="seed"/> and measures them.
    /// <paramref name="data"/> names the points' reference (null: the data of the model's run, see <see cref="RunData"/>).
    /// In an MPI job (<see cref="Mpi"/>) every rank draws the same noise and labels and samples its own contiguous slice of
    /// them: the same samples as one process draws. For images each rank also computes its slice's classifier features and
    /// logits, and those are gathered (128 + 10 numbers per image instead of the image); point samples are gathered as they are.
    /// </summary>
    public static EvalResult Run(ModelDraw m, int count, long seed, int? batch = null, string? data = null,
                                 Action<int, int>? onBatch = null, Action<string>? onMessage = null)
    {
        if (count < 10) throw new DmdInputException("--n must be at least 10");
        using var g = new Generator((ulong)seed);
        var z = Rng.Normal(new long[] { count }.Concat(m.Spec.SampleShape.Select(s => (long)s)).ToArray(), g);
        var y = Rng.OneHotLabels(m.Spec.LabelDim, count, g);
        var (part, lo, secs) = DrawShare(m, z, y, batch ?? (m.Spec.IsImage ? 64 : 500), onBatch, seed);

        var metrics = new Dictionary<string, double>();
        double[]? perClass = null, realPerClass = null;
        string? referenceName = null;
        if (m.Spec.IsImage)
        {
            using var fd = FdFmnist.Load();
            var gather = System.Diagnostics.Stopwatch.StartNew();
            using var features = Gather(fd.Features(part), lo, count);
            metrics["fd_fmnist"] = fd.DistanceOfFeatures(features);
            AddPrecisionRecall(fd, features, metrics, onMessage);
            if (y is not null && m.Spec.LabelDim == FmnistClassifier.NumClasses)
            {
                using var logits = Gather(fd.Logits(part), lo, count);
                var acc = FdFmnist.ClassAccuracyOfLogits(logits, y);
                metrics["class_accuracy"] = acc.Overall;
                perClass = acc.PerClass;
                realPerClass = fd.RealPerClassAccuracy();
            }
            if (Mpi.Size > 1) secs += gather.Elapsed.TotalSeconds; // a job's sampling rate counts the features' gathering
        }
        else
        {
            var x = Gather(part, lo, count);
            referenceName = data ?? RunData(m.Path)
                ?? throw new DmdInputException($"cannot tell which data {m.Path} learned (no run config.json beside it): name the reference with --data, e.g. --data ring8 or --data csv:PATH");
            onMessage?.Invoke($"reference: {referenceName}{(data is null ? " (the data of the model's run)" : "")}");
            var reference = DataSource.Parse(referenceName).LoadPoints(count, seed: 2, expectedDim: m.Spec.SampleShape[0]);
            var row = Toy2dExperiment.Evaluate(m.Title, x.reshape(count, -1), m.Nfe, reference, count / secs);
            metrics["energy_distance"] = row.EnergyDistance;
            metrics["precision"] = row.Precision;
            metrics["recall"] = row.Recall;
            if (row.ModesCovered is int mc) { metrics["modes_covered"] = mc; metrics["in_mode"] = row.HighQuality!.Value; }
        }
        return new EvalResult(m.Path, m.Sampler, m.Nfe, count, m.Guidance, count / secs, metrics, perClass, referenceName, realPerClass)
            { GuidanceInterval = m.GuidanceInterval?.ToString(),
              StepNoiseCarry = m.Generator is { Steps: > 1 } generator ? generator.StepNoiseCarry : null,
              FinishedBy = m.Finisher is null ? null : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{m.FinisherPath}, Heun {m.FinishSteps} from sigma {m.FinishSigma:G6}") };
    }

    /// <summary>Adds precision and recall in the judge's feature space (against as many test images) when Fashion-MNIST is installed.</summary>
    private static void AddPrecisionRecall(FdFmnist fd, Tensor features, Dictionary<string, double> metrics, Action<string>? onMessage)
    {
        var pr = fd.PrecisionRecallOfFeatures(features);
        if (pr is null) { onMessage?.Invoke("precision/recall skipped: Fashion-MNIST's test split is not installed (apt-get install dataset-fashion-mnist)"); return; }
        metrics["precision"] = pr.Precision;
        metrics["recall"] = pr.Recall;
    }

    /// <summary>
    /// Measures a text-to-image model the way <see cref="Run"/> measures a class-conditional one, with the shipped Fashion-MNIST
    /// classifier: <paramref name="classPrompts"/> holds one prompt per class (line i prompts class i), each sample's class is
    /// drawn uniformly with <paramref name="seed"/> after its initial latents (as <see cref="Run"/> draws noise and labels),
    /// the model makes an image from that class's prompt, and the images give FD-FMNIST and the prompt-following accuracy (the
    /// classifier's class equals the prompted one). <paramref name="generate"/> maps (prompts, unit-variance latents, index of
    /// the first sample) to images (B, 1, 32, 32) in [-1, 1]; it is called <paramref name="batch"/> samples at a time.
    /// </summary>
    public static EvalResult RunTextToImage(string modelPath, string sampler, int nfe, double guidance, IReadOnlyList<string> classPrompts, int[] latentShape,
                                            Func<IReadOnlyList<string>, Tensor, long, Tensor> generate, int count, long seed, int batch = 64,
                                            Action<int, int>? onBatch = null)
    {
        if (count < 10) throw new DmdInputException("--n must be at least 10");
        if (classPrompts.Count != FmnistClassifier.NumClasses)
            throw new DmdInputException($"the class prompts file has {classPrompts.Count} lines: the Fashion-MNIST judge needs {FmnistClassifier.NumClasses}, line i prompting class i (0 T-shirt/top ... 9 ankle boot)");
        using var g = new Generator((ulong)seed);
        var z = Rng.Normal(new long[] { count }.Concat(latentShape.Select(s => (long)s)).ToArray(), g);
        var classes = Rng.Integers(0, FmnistClassifier.NumClasses, count, g);
        var labels = classes.data<long>().ToArray();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var parts = new List<Tensor>();
        for (int i = 0; i < count; i += batch)
        {
            int j = Math.Min(count, i + batch);
            using var scope = NewDisposeScope();
            var prompts = labels[i..j].Select(c => classPrompts[(int)c]).ToArray();
            var images = generate(prompts, z[i..j], i);
            if (images.dim() != 4 || images.shape[1] != 1 || images.shape[2] != 32 || images.shape[3] != 32)
                throw new DmdInputException($"the model makes images of shape [{string.Join(", ", images.shape.Skip(1))}]: the Fashion-MNIST judge needs [1, 32, 32]");
            parts.Add(images.cpu().MoveToOuterDisposeScope());
            onBatch?.Invoke(j, count);
        }
        double secs = clock.Elapsed.TotalSeconds;
        var all = cat(parts);
        using var fd = FdFmnist.Load();
        using var features = fd.Features(all);
        var metrics = new Dictionary<string, double> { ["fd_fmnist"] = fd.DistanceOfFeatures(features) };
        AddPrecisionRecall(fd, features, metrics, null);
        var acc = FdFmnist.ClassAccuracyOfLogits(fd.Logits(all), Rng.OneHot(classes, FmnistClassifier.NumClasses));
        metrics["class_accuracy"] = acc.Overall;
        return new EvalResult(modelPath, sampler, nfe, count, guidance, count / secs, metrics, acc.PerClass, RealPerClassAccuracy: fd.RealPerClassAccuracy());
    }

    /// <summary>
    /// FID of a text-to-image model against a folder of reference images (CLIP-free: the Inception pool features alone):
    /// each sample's prompt is drawn uniformly from <paramref name="prompts"/> with <paramref name="seed"/> after the initial
    /// latents, <paramref name="generate"/> makes the images (as in <see cref="RunTextToImage"/>), and their FID Inception
    /// features are compared with those of <paramref name="reference"/> (images in [-1, 1], any count; more is better).
    /// The result's metric is <c>fid</c> with <c>reference_images</c>.
    /// </summary>
    public static EvalResult RunTextToImageFid(string modelPath, string sampler, int nfe, double guidance, IReadOnlyList<string> prompts, int[] latentShape,
                                               Func<IReadOnlyList<string>, Tensor, long, Tensor> generate, int count, long seed, Tensor reference,
                                               FidInceptionV3 inception, string referenceName, int batch = 64, Action<int, int>? onBatch = null)
    {
        if (count < 10) throw new DmdInputException("--n must be at least 10");
        if (prompts.Count == 0) throw new DmdInputException("no prompts: give a prompts file with at least one line");
        if (reference.shape[0] < 2) throw new DmdInputException($"{referenceName} holds {reference.shape[0]} image(s): FID needs at least two reference images");
        using var g = new Generator((ulong)seed);
        var z = Rng.Normal(new long[] { count }.Concat(latentShape.Select(s => (long)s)).ToArray(), g);
        var index = Rng.Integers(0, prompts.Count, count, g).data<long>().ToArray();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var features = new List<Tensor>();
        for (int i = 0; i < count; i += batch)
        {
            int j = Math.Min(count, i + batch);
            using var scope = NewDisposeScope();
            var images = generate(index[i..j].Select(k => prompts[(int)k]).ToArray(), z[i..j], i);
            features.Add(inception.Features(images.cpu()).MoveToOuterDisposeScope());
            onBatch?.Invoke(j, count);
        }
        double secs = clock.Elapsed.TotalSeconds;
        var (mu, sigma) = FrechetDistance.Statistics(cat(features));
        var (muRef, sigmaRef) = FrechetDistance.Statistics(inception.Features(reference));
        var metrics = new Dictionary<string, double>
        {
            ["fid"] = FrechetDistance.Compute(mu, sigma, muRef, sigmaRef),
            ["reference_images"] = reference.shape[0],
        };
        return new EvalResult(modelPath, sampler, nfe, count, guidance, count / secs, metrics, null, referenceName);
    }

    /// <summary>
    /// This rank's contiguous slice of the samples (all of them in one process), the index of its first row, and the wall
    /// time (in a job from a common start, so the slowest rank's). Sample i's noise between the steps of a K-step generator
    /// is seeded seed + i, so a slice from row lo starts at seed + lo.
    /// </summary>
    static (Tensor Part, long Lo, double Seconds) DrawShare(ModelDraw m, Tensor z, Tensor? y, int batch, Action<int, int>? onBatch, long seed)
    {
        if (Mpi.Size == 1) { var (x, secs) = m.Draw(z, y, batch, onBatch, seed); return (x, 0, secs); }
        long n = z.shape[0], lo = n * Mpi.Rank / Mpi.Size, hi = n * (Mpi.Rank + 1) / Mpi.Size;
        Mpi.Barrier();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (part, _) = m.Draw(z.narrow(0, lo, hi - lo), y?.narrow(0, lo, hi - lo), batch, onBatch, seed + lo);
        Mpi.Barrier();
        return (part, lo, clock.Elapsed.TotalSeconds);
    }

    /// <summary>Rows [lo, lo + part's rows) of an n-row tensor from every rank, on every rank (one process: the part itself).</summary>
    static Tensor Gather(Tensor part, long lo, long n)
    {
        if (Mpi.Size == 1) return part;
        var all = zeros(new long[] { n }.Concat(part.shape.Skip(1)).ToArray(), dtype: part.dtype);
        all.narrow(0, lo, part.shape[0]).copy_(part);
        return Mpi.AllreduceSum(all); // the other ranks add zeros to each slice: exact
    }

    /// <summary>
    /// The training data of a point model's run: a teacher run's config.json names it; a DMD run's names its teacher,
    /// whose run names it; a `dmd toy2d` run keeps it in experiment.json one folder up. Null when none of these is there.
    /// </summary>
    public static string? RunData(string modelPath, int depth = 0)
    {
        if (depth > 3) return null;
        var full = System.IO.Path.GetFullPath(modelPath);
        var folder = Directory.Exists(full) ? full : System.IO.Path.GetDirectoryName(full)!;
        foreach (var (file, key) in new[] { (System.IO.Path.Combine(folder, "config.json"), "Data"), (System.IO.Path.Combine(folder, "..", "experiment.json"), "Data") })
        {
            if (!File.Exists(file)) continue;
            try
            {
                var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file));
                if (node?[key]?.GetValue<string>() is string d) return d;
                if (node?["Teacher"]?.GetValue<string>() is string t && (File.Exists(t) || Directory.Exists(t))) return RunData(t, depth + 1);
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException) { }
        }
        return null;
    }

    /// <summary>runs/eval/NAME.json, NAME from the model's folder (and file, when it is not the folder's usual one).</summary>
    public static string DefaultOut(string modelPath)
    {
        var full = System.IO.Path.GetFullPath(modelPath).TrimEnd('/');
        string name = DistillCheckpoint.Locate(modelPath) is { } checkpoint ? checkpoint.DisplayName
            : Directory.Exists(full) ? System.IO.Path.GetFileName(full)
            : System.IO.Path.GetFileName(System.IO.Path.GetDirectoryName(full)!) + (System.IO.Path.GetFileNameWithoutExtension(full) is "teacher" or "generator" ? "" : "-" + System.IO.Path.GetFileNameWithoutExtension(full));
        return System.IO.Path.Combine("runs", "eval", name + ".json");
    }
}
