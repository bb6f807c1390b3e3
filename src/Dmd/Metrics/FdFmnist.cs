using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Metrics;

/// <summary>
/// FD-FMNIST: the Frechet distance between generated Fashion-MNIST images and the 10000 test images, in the 128-d
/// feature space of the shipped <see cref="FmnistClassifier"/>, plus the per-class accuracy of conditional samples
/// as judged by the same classifier. Everything comes from the models folder <c>models/fmnist-classifier/</c>
/// (<c>classifier.safetensors</c>, <c>test_stats.npz</c>, <c>MODEL_CARD.md</c>), so no dataset is needed at run time.
/// Like FID, the value is biased upwards for small sample counts: compare numbers computed from the same count.
/// </summary>
public sealed class FdFmnist : IDisposable
{
    /// <summary>The models folder relative to the repository root.</summary>
    public const string RelativeFolder = "models/fmnist-classifier";
    /// <summary>The classifier's weights in the models folder.</summary>
    public const string WeightsFile = "classifier.safetensors";
    /// <summary>The test split's feature statistics (mu, sigma) in the models folder.</summary>
    public const string StatsFile = "test_stats.npz";
    /// <summary>What the classifier's training run measured (written by the trainer), beside the weights.</summary>
    public const string TrainingFile = "training.json";

    /// <summary>The classifier, frozen, in eval mode.</summary>
    public FmnistClassifier Classifier { get; }
    /// <summary>Mean (128) of the test split's features, float64.</summary>
    public Tensor ReferenceMu { get; }
    /// <summary>Covariance (128, 128) of the test split's features, float64.</summary>
    public Tensor ReferenceSigma { get; }
    /// <summary>The folder everything was loaded from.</summary>
    public string Folder { get; }

    FdFmnist(FmnistClassifier classifier, Tensor mu, Tensor sigma, string folder)
    {
        Classifier = classifier; ReferenceMu = mu; ReferenceSigma = sigma; Folder = folder;
    }

    /// <summary>
    /// Loads the classifier and the test statistics from <paramref name="folder"/>, or, when null, from
    /// <c>models/fmnist-classifier</c> found by walking up from the application's folder (then from the current one).
    /// </summary>
    public static FdFmnist Load(string? folder = null)
    {
        folder = FindFolder(folder);
        var net = new FmnistClassifier();
        Checkpoint.LoadModule(net, Path.Combine(folder, WeightsFile));
        foreach (var p in net.parameters()) p.requires_grad = false;
        net.eval();
        var (mu, sigma) = FrechetDistance.LoadStatistics(Path.Combine(folder, StatsFile));
        if (mu.shape[0] != FmnistClassifier.FeatureDim)
            throw new DmdInputException($"{Path.Combine(folder, StatsFile)} holds {mu.shape[0]}-d statistics, but the classifier's features are " +
                                        $"{FmnistClassifier.FeatureDim}-d: recompute them with `dmd train-classifier`");
        return new FdFmnist(net, mu, sigma, folder);
    }

    /// <summary>
    /// The judge's own accuracy per class on Fashion-MNIST's test images, from the training.json beside its weights: what
    /// the per-class accuracy of conditional samples is read against (a class the judge confuses on real images, e.g.
    /// Shirt, cannot score near 100 % on samples either). Null when the folder has no training.json or it lacks the field.
    /// </summary>
    public double[]? RealPerClassAccuracy() => ReadRealPerClassAccuracy(Folder);

    /// <summary><see cref="RealPerClassAccuracy"/> of the judge in <paramref name="folder"/> (null: the shipped one, found as <see cref="Load"/> finds it), without loading its weights.</summary>
    public static double[]? ReadRealPerClassAccuracy(string? folder = null)
    {
        var file = Path.Combine(FindFolder(folder), TrainingFile);
        if (!File.Exists(file)) return null;
        var arr = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file))?["TestAccuracyPerClass"]?.AsArray();
        return arr is { Count: FmnistClassifier.NumClasses } ? arr.Select(v => v!.GetValue<double>()).ToArray() : null;
    }

    /// <summary>
    /// Improved precision and recall (<see cref="PrecisionRecall"/>, k = <paramref name="k"/>) of generated images'
    /// classifier <paramref name="features"/> (N, 128) against the features of the first N images of Fashion-MNIST's test
    /// split (at most all 10000): precision = share of samples inside the test images' manifold (quality), recall = share
    /// of test images inside the samples' manifold (coverage). Null when the test split is not installed
    /// (<see cref="Data.FashionMnist.IsAvailable"/>); the FD statistics need no data, this does.
    /// </summary>
    public PrecisionRecall.Result? PrecisionRecallOfFeatures(Tensor features, int k = 3)
    {
        if (!Data.FashionMnist.IsAvailable()) return null;
        using var scope = NewDisposeScope();
        var test = Data.FashionMnist.Load(test: true, padTo32: true);
        long n = Math.Min(features.shape[0], test.Count);
        var images = Data.ImageDataset.ToFloat(test.Images[..(int)n]);
        return PrecisionRecall.Compute(Features(images), features, k);
    }

    /// <summary>
    /// The folder holding the classifier: <paramref name="explicitFolder"/> when given (it must hold both files), else the
    /// first <c>models/fmnist-classifier</c> above <see cref="AppContext.BaseDirectory"/> or the current directory.
    /// </summary>
    public static string FindFolder(string? explicitFolder = null)
    {
        if (explicitFolder is not null)
        {
            var missing = new[] { WeightsFile, StatsFile }.Where(f => !File.Exists(Path.Combine(explicitFolder, f))).ToList();
            if (missing.Count > 0)
                throw new DmdInputException($"{explicitFolder} is not a Fashion-MNIST classifier folder: it lacks {string.Join(" and ", missing)} " +
                                            $"(the repository ships them in {RelativeFolder}/; `dmd train-classifier --out FOLDER` makes new ones)");
            return Path.GetFullPath(explicitFolder);
        }
        var starts = new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() };
        foreach (var start in starts)
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            {
                var candidate = Path.Combine(d.FullName, RelativeFolder);
                if (File.Exists(Path.Combine(candidate, WeightsFile)) && File.Exists(Path.Combine(candidate, StatsFile)))
                    return candidate;
            }
        throw new DmdInputException($"the Fashion-MNIST classifier was not found: no {RelativeFolder}/ with {WeightsFile} and {StatsFile} " +
                                    $"above {string.Join(" or ", starts.Distinct())}. Run from inside the repository, give the folder explicitly, " +
                                    $"or make one with `dmd train-classifier --out FOLDER`");
    }

    /// <summary>Features (N, 128), float32 on the CPU, of images (N, 1, 32, 32) in [-1, 1], <paramref name="batch"/> at a time.</summary>
    public Tensor Features(Tensor images, int batch = 500) => Map(images, batch, Classifier.Features);

    /// <summary>Class logits (N, 10) of images (N, 1, 32, 32) in [-1, 1].</summary>
    public Tensor Logits(Tensor images, int batch = 500) => Map(images, batch, Classifier.forward);

    /// <summary>
    /// The reference statistics as shipped in <c>test_stats.npz</c>: float64 mean and covariance (N-1) of the features of
    /// every image of <paramref name="data"/> (the test split, uint8 (N, 1, 32, 32), no flips), in eval mode.
    /// </summary>
    public static (Tensor Mu, Tensor Sigma) ReferenceStatistics(FmnistClassifier net, Data.ImageDataset data, int batch = 500)
    {
        net.eval();
        using var scope = NewDisposeScope();
        var features = Map(Data.ImageDataset.ToFloat(data.Images), batch, net.Features);
        var (mu, sigma) = FrechetDistance.Statistics(features);
        return (mu.MoveToOuterDisposeScope(), sigma.MoveToOuterDisposeScope());
    }

    static Tensor Map(Tensor images, int batch, Func<Tensor, Tensor> f)
    {
        if (images.dim() != 4 || images.shape[0] == 0)
            throw new DmdInputException($"expected a batch of images (N, 1, 32, 32) in [-1, 1], got [{string.Join(", ", images.shape)}]");
        if (!images.is_floating_point())
            throw new DmdInputException($"images must be floating point in [-1, 1], got {images.dtype} (convert uint8 with ImageDataset.ToFloat)");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var parts = new List<Tensor>();
        for (long i = 0; i < images.shape[0]; i += batch)
        {
            using var step = NewDisposeScope(); // frees each batch's activations before the next
            parts.Add(f(images.narrow(0, i, Math.Min(batch, images.shape[0] - i)).detach().cpu()).MoveToOuterDisposeScope());
        }
        return cat(parts, 0).MoveToOuterDisposeScope();
    }

    /// <summary>Feature statistics (mean, covariance; float64) of images, as stored in <c>test_stats.npz</c>.</summary>
    public (Tensor Mu, Tensor Sigma) Statistics(Tensor images, int batch = 500)
    {
        using var f = Features(images, batch);
        return FrechetDistance.Statistics(f);
    }

    /// <summary>FD-FMNIST of images (N, 1, 32, 32) in [-1, 1] against the test split.</summary>
    public double Distance(Tensor images, int batch = 500)
    {
        using var f = Features(images, batch);
        return DistanceOfFeatures(f);
    }

    /// <summary>FD-FMNIST of precomputed <see cref="Features"/> (N, 128) against the test split (e.g. gathered from the ranks of a job).</summary>
    public double DistanceOfFeatures(Tensor features)
    {
        var (mu, sigma) = FrechetDistance.Statistics(features);
        using (mu) using (sigma) return Distance(mu, sigma);
    }

    /// <summary>FD-FMNIST of precomputed feature statistics against the test split.</summary>
    public double Distance(Tensor mu, Tensor sigma) => FrechetDistance.Compute(mu, sigma, ReferenceMu, ReferenceSigma);

    /// <summary>
    /// How often the classifier assigns conditional samples to the class they were asked for: overall and per class.
    /// <paramref name="requested"/> is class indices (N) or one-hot labels (N, 10).
    /// </summary>
    public ClassAccuracy ClassAccuracy(Tensor images, Tensor requested, int batch = 500)
    {
        using var logits = Logits(images, batch);
        return ClassAccuracyOfLogits(logits, requested);
    }

    /// <summary>The same from precomputed <see cref="Logits"/> (N, 10).</summary>
    public static ClassAccuracy ClassAccuracyOfLogits(Tensor logits, Tensor requested)
    {
        var labels = requested.dim() == 2 ? requested.argmax(1) : requested;
        if (labels.dim() != 1 || labels.shape[0] != logits.shape[0])
            throw new DmdInputException($"requested labels must be class indices (N) or one-hot (N, 10) for N = {logits.shape[0]} images, " +
                                        $"got [{string.Join(", ", requested.shape)}]");
        using var predicted = logits.argmax(1);
        using var l = labels.to(ScalarType.Int64).cpu();
        if (l.numel() > 0 && (l.min().item<long>() < 0 || l.max().item<long>() >= FmnistClassifier.NumClasses))
            throw new DmdInputException($"requested labels must lie in [0, {FmnistClassifier.NumClasses})");
        return FmnistClassifierTrainer.Accuracy(predicted, l, FmnistClassifier.NumClasses);
    }

    /// <summary>Frees the classifier and the reference statistics.</summary>
    public void Dispose()
    {
        Classifier.Dispose();
        ReferenceMu.Dispose();
        ReferenceSigma.Dispose();
    }
}
