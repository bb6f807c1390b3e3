using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Metrics;

/// <summary>
/// Energy distance (Szekely and Rizzo) between two samples, in float64:
/// ED(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, X, X' ~ P, Y, Y' ~ Q, with Euclidean norms.
/// The within-sample terms are U-statistics (the zero diagonal excluded), so the estimate is unbiased
/// and near zero, possibly slightly negative, when both samples come from the same distribution.
/// It is zero iff P = Q and scales linearly with the data.
/// </summary>
public static class EnergyDistance
{
    /// <summary>
    /// The energy distance between samples <paramref name="x"/> (N, ...) and <paramref name="y"/> (M, ...), each sample
    /// flattened to a vector; N and M must be at least 2. Distances are computed <paramref name="chunk"/> rows at a time.
    /// </summary>
    public static double Compute(Tensor x, Tensor y, int chunk = 2048)
    {
        using var scope = NewDisposeScope();
        var a = Flat(x); var b = Flat(y);
        long n = a.shape[0], m = b.shape[0];
        if (n < 2 || m < 2) throw new ArgumentException("energy distance needs at least two samples on each side");
        double xy = MeanDistance(a, b, chunk, false);
        double xx = MeanDistance(a, a, chunk, true);
        double yy = MeanDistance(b, b, chunk, true);
        return 2 * xy - xx - yy;
    }

    static Tensor Flat(Tensor t) => t.reshape(t.shape[0], -1).to(ScalarType.Float64).cpu();

    /// <summary>Mean pairwise Euclidean distance; with <paramref name="excludeDiagonal"/> over i != j only.</summary>
    internal static double MeanDistance(Tensor a, Tensor b, int chunk, bool excludeDiagonal)
    {
        double sum = 0;
        long n = a.shape[0], m = b.shape[0];
        for (long i = 0; i < n; i += chunk)
        {
            using var s = NewDisposeScope();
            var d = cdist(a.narrow(0, i, Math.Min(chunk, n - i)), b);
            sum += d.sum().item<double>();
        }
        return excludeDiagonal ? sum / (n * (double)(m - 1)) : sum / (n * (double)m);
    }
}
