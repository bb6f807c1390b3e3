// Shared by the measurements in docs/experiments (each project compiles this file in, see its .csproj): the noise and
// labels `dmd eval --seed` draws, and one line of the judge's measures.
using Dmd;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;

static class Judge
{
    /// <summary>The <paramref name="n"/> starting noises and one-hot labels that `dmd eval --seed SEED` draws for a
    /// class-conditional generator of this sample shape.</summary>
    public static (Tensor Z, Tensor Y) EvalDraw(int[] sampleShape, int labelDim, long seed, int n)
    {
        using var g = new Generator((ulong)seed);
        var z = Rng.Normal(new long[] { n }.Concat(sampleShape.Select(s => (long)s)).ToArray(), g);
        return (z, Rng.OneHotLabels(labelDim, n, g)!);
    }

    /// <summary>Prints "WHAT: FD-FMNIST d, class accuracy a %, precision p, recall r" for images
    /// <paramref name="x"/> drawn for <paramref name="labels"/>.</summary>
    public static void Report(FdFmnist judge, string what, Tensor x, Tensor labels)
    {
        var features = judge.Features(x);
        var accuracy = FdFmnist.ClassAccuracyOfLogits(judge.Logits(x), labels).Overall;
        var pr = judge.PrecisionRecallOfFeatures(features)!;
        Console.WriteLine($"{what}: FD-FMNIST {judge.DistanceOfFeatures(features):F3}, class accuracy {100 * accuracy:F1} %, " +
                          $"precision {pr.Precision:F2}, recall {pr.Recall:F2}");
    }
}
