using Dmd.Data;
using Dmd.IO;
using Dmd.Metrics;
using Dmd.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>FD-FMNIST: the shipped Fashion-MNIST classifier and the test split's reference statistics.</summary>
public class FdFmnistTests
{
    readonly ITestOutputHelper log;
    public FdFmnistTests(ITestOutputHelper log) => this.log = log;

    /// <summary>The test split, padded to 32x32, loaded once for the tests that need it.</summary>
    static readonly Lazy<ImageDataset> TestSplit = new(() => FashionMnist.Load(test: true, padTo32: true));

    /// <summary>Images of the same shape as Fashion-MNIST's, N(0, 0.5^2) clamped to [-1, 1].</summary>
    static Tensor Noise(long n, ulong seed)
    {
        using var g = new Generator(seed);
        return (randn(new long[] { n, 1, 32, 32 }, generator: g) * 0.5).clamp(-1, 1);
    }

    [Fact]
    public void TheShippedJudgesPerClassAccuracyOnRealImagesIsItsRecordedTestAccuracyPerClass()
    {
        using var fd = FdFmnist.Load();
        var real = fd.RealPerClassAccuracy();
        Assert.NotNull(real);
        Assert.Equal(FmnistClassifier.NumClasses, real!.Length);
        // the test split has 1000 images per class, so the per-class mean is the overall accuracy (both rounded to 3 places)
        var info = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(fd.Folder, "training.json")))!;
        Assert.InRange(Math.Abs(info["TestAccuracy"]!.GetValue<double>() - real.Average()), 0, 0.001);
        // and the model card quotes them
        var card = File.ReadAllText(Path.Combine(fd.Folder, "MODEL_CARD.md"));
        Assert.Contains(FormattableString.Invariant($"Shirt {100 * real[6]:F1}"), card);
        Assert.Contains(FormattableString.Invariant($"Sneaker {100 * real[7]:F1}"), card);

        // a folder without training.json (a classifier copied without it) has no reference, and says so by null
        var bare = TestUtil.TempDir();
        foreach (var f in new[] { FdFmnist.WeightsFile, FdFmnist.StatsFile }) File.Copy(Path.Combine(fd.Folder, f), Path.Combine(bare, f));
        using var fdBare = FdFmnist.Load(bare);
        Assert.Null(fdBare.RealPerClassAccuracy());
    }

    [Fact]
    public void ShippedClassifierLoadsWithTheDocumentedParameterCountAndFeatureSize()
    {
        using var fd = FdFmnist.Load();
        Assert.Equal(FmnistClassifier.ParameterCount, TrainingUtils.ParameterCount(fd.Classifier));
        Assert.Equal(new long[] { FmnistClassifier.FeatureDim }, fd.ReferenceMu.shape);
        Assert.Equal(new long[] { FmnistClassifier.FeatureDim, FmnistClassifier.FeatureDim }, fd.ReferenceSigma.shape);

        // the model card states the same numbers as the code
        var card = File.ReadAllText(Path.Combine(fd.Folder, "MODEL_CARD.md"));
        Assert.Contains(FmnistClassifier.ParameterCount.ToString("N0", System.Globalization.CultureInfo.InvariantCulture), card);
        Assert.Contains($"{FmnistClassifier.FeatureDim}-d", card);

        // the shipped files stay small
        Assert.True(new FileInfo(Path.Combine(fd.Folder, FdFmnist.WeightsFile)).Length < 1_000_000);
        Assert.True(new FileInfo(Path.Combine(fd.Folder, FdFmnist.StatsFile)).Length < 1_000_000);

        // 28x28 images are padded to 32x32 with background, so both sizes give the same features
        using var x28 = Noise(4, 3)[.., .., 2..30, 2..30];
        using var x32 = nn.functional.pad(x28, new long[] { 2, 2, 2, 2 }, value: -1);
        using var f28 = fd.Features(x28);
        using var f32 = fd.Features(x32);
        Assert.Equal(new long[] { 4, FmnistClassifier.FeatureDim }, f32.shape);
        Assert.True(f28.allclose(f32));
    }

    [Fact]
    public void ShippedStatisticsAreAtZeroDistanceFromThemselvesAndFarFromNoise()
    {
        using var fd = FdFmnist.Load();
        double self = fd.Distance(fd.ReferenceMu, fd.ReferenceSigma);
        Assert.True(Math.Abs(self) < 1e-6, $"FD of the test statistics against themselves = {self}");

        using var noise = Noise(1000, 1);
        double noiseFd = fd.Distance(noise);
        double spread = fd.ReferenceSigma.trace().item<double>();
        log.WriteLine($"FD-FMNIST: Gaussian noise {noiseFd:F2}; trace of the test covariance {spread:F2}");
        Assert.True(noiseFd > spread, $"noise FD {noiseFd} should exceed the test features' total variance {spread}");
    }

    [Fact]
    public void MissingModelsFolderIsAClearInputError()
    {
        var dir = TestUtil.TempDir();
        var e = Assert.Throws<DmdInputException>(() => FdFmnist.Load(dir));
        Assert.Contains(FdFmnist.WeightsFile, e.Message);
        Assert.Contains("train-classifier", e.Message);
    }

    [Fact]
    public void TrainClassifierCommandNamesAMissingDataFolderAndTheFix()
    {
        var (code, output) = CliTests.Run("train-classifier", "--data", "fashion-mnist:/no/such/folder", "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("Fashion-MNIST not found: /no/such/folder does not exist", output);
        Assert.Contains("--data fashion-mnist:FOLDER", output);
        Assert.DoesNotContain("   at ", output);
    }

    [FashionMnistFact]
    public void RealTestImagesAreCloseToTheShippedStatisticsAndNoiseIsFar()
    {
        using var fd = FdFmnist.Load();
        var test = TestSplit.Value;
        using var real = ImageDataset.ToFloat(test.Images.narrow(0, 0, 2000));
        double realFd = fd.Distance(real);
        using var noise = Noise(2000, 2);
        double noiseFd = fd.Distance(noise);
        log.WriteLine($"FD-FMNIST of 2000 images: test {realFd:F3}, Gaussian noise {noiseFd:F1} (ratio {noiseFd / realFd:F0}x)");
        Assert.True(noiseFd > 10 * realFd, $"noise {noiseFd} vs real {realFd}");
    }

    [FashionMnistFact]
    public void PrecisionAndRecallAreOneForTheTestImagesThemselvesAndNoneForNoise()
    {
        using var fd = FdFmnist.Load();
        var test = TestSplit.Value;
        using var same = fd.Features(ImageDataset.ToFloat(test.Images.narrow(0, 0, 500)));
        var pr = fd.PrecisionRecallOfFeatures(same)!;
        Assert.Equal(1.0, pr.Precision);
        Assert.Equal(1.0, pr.Recall);
        // other test images: most inside each other's manifold, but not all (k = 3 balls of 500 points)
        using var others = fd.Features(ImageDataset.ToFloat(test.Images.narrow(0, 5000, 500)));
        var pro = fd.PrecisionRecallOfFeatures(others)!;
        using var noise = fd.Features(Noise(500, 3));
        var prn = fd.PrecisionRecallOfFeatures(noise)!;
        log.WriteLine($"precision/recall of 500 images against the first 500 test images: themselves {pr}, other test images {pro}, noise {prn}");
        Assert.True(pro.Precision > 0.5 && pro.Precision < 1 && pro.Recall > 0.5 && pro.Recall < 1, pro.ToString());
        Assert.True(prn.Precision < 0.05, prn.ToString());
    }

    [FashionMnistFact]
    public void ClassifierIsAtLeast90PercentAccurateOnTestImages()
    {
        using var fd = FdFmnist.Load();
        var test = TestSplit.Value;
        using var x = ImageDataset.ToFloat(test.Images.narrow(0, 0, 1000));
        using var y = test.ClassIndex!.narrow(0, 0, 1000);
        var acc = fd.ClassAccuracy(x, y);
        log.WriteLine($"classifier accuracy on 1000 test images: {acc}");
        Assert.True(acc.Overall >= 0.90, acc.ToString());
        Assert.Equal(1000, acc.CountPerClass.Sum());

        // one-hot labels give the same answer; asking for the wrong class gives (nearly) none right
        var same = fd.ClassAccuracy(x, Rng.OneHot(y, 10));
        Assert.Equal(acc.Overall, same.Overall);
        using var wrong = (y + 1).remainder(10);
        Assert.True(fd.ClassAccuracy(x, wrong).Overall < 0.1);
    }
}
