using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Metrics;

/// <summary>
/// Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls
/// around its samples with radius the distance to the k-th nearest neighbour within the set.
/// Precision = share of generated samples inside the real manifold (quality);
/// recall = share of real samples inside the generated manifold (coverage). Works on any features (N, ...).
/// </summary>
public static class PrecisionRecall
{
    /// <summary>Improved precision and recall, each in [0, 1].</summary>
    /// <param name="Precision">Share of generated samples inside the real manifold (quality).</param>
    /// <param name="Recall">Share of real samples inside the generated manifold (coverage).</param>
    public sealed record Result(double Precision, double Recall);

    /// <summary>
    /// Precision and recall of <paramref name="generated"/> against <paramref name="real"/> (each (N, ...), flattened per sample,
    /// in float64), with balls of radius the distance to the <paramref name="k"/>-th nearest neighbour; each set needs more
    /// than k samples. Distances are computed <paramref name="chunk"/> rows at a time.
    /// </summary>
    public static Result Compute(Tensor real, Tensor generated, int k = 3, int chunk = 2048)
    {
        using var scope = NewDisposeScope();
        var r = real.reshape(real.shape[0], -1).to(ScalarType.Float64).cpu();
        var g = generated.reshape(generated.shape[0], -1).to(ScalarType.Float64).cpu();
        var rr = KthNeighbourRadius(r, k, chunk);
        var rg = KthNeighbourRadius(g, k, chunk);
        return new Result(Coverage(g, r, rr, chunk), Coverage(r, g, rg, chunk));
    }

    /// <summary>Distance from each sample to its k-th nearest other sample in the same set.</summary>
    internal static Tensor KthNeighbourRadius(Tensor x, int k, int chunk)
    {
        long n = x.shape[0];
        if (n <= k) throw new ArgumentException($"need more than k={k} samples, got {n}");
        var parts = new List<Tensor>();
        for (long i = 0; i < n; i += chunk)
        {
            var d = cdist(x.narrow(0, i, Math.Min(chunk, n - i)), x);
            // the smallest distance is the point itself (0): the k-th neighbour is at index k
            parts.Add(d.topk(k + 1, dim: 1, largest: false).values[.., k]);
        }
        return cat(parts.ToArray());
    }

    /// <summary>Share of <paramref name="queries"/> inside at least one ball (centre, radius) of the other set.</summary>
    internal static double Coverage(Tensor queries, Tensor centres, Tensor radii, int chunk)
    {
        long n = queries.shape[0], inside = 0;
        for (long i = 0; i < n; i += chunk)
        {
            using var s = NewDisposeScope();
            var d = cdist(queries.narrow(0, i, Math.Min(chunk, n - i)), centres);
            inside += (d <= radii.unsqueeze(0)).any(1).sum().item<long>();
        }
        return inside / (double)n;
    }
}
