using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Metrics;

/// <summary>
/// Mode statistics for samples from a known Gaussian mixture (the classic GAN mode-collapse check):
/// a sample is "high quality" when it lies within 3 standard deviations of its nearest centre; a mode is
/// "covered" when it receives at least a quarter of the share a uniform mixture would give it.
/// </summary>
public static class ModeCoverage
{
    /// <summary>Mode statistics of one sample set.</summary>
    /// <param name="ModesCovered">Modes whose high-quality samples reach a quarter of the uniform share (N / Modes).</param>
    /// <param name="Modes">Number of mixture components.</param>
    /// <param name="HighQualityFraction">Share of samples within 3 standard deviations of their nearest centre, in [0, 1].</param>
    /// <param name="ModeKl">KL divergence (nats) of the high-quality samples' histogram over modes from the uniform one; 0 = balanced.</param>
    public sealed record Result(int ModesCovered, int Modes, double HighQualityFraction, double ModeKl);

    /// <summary>
    /// Mode statistics of <paramref name="samples"/> (N, D) for the mixture with centres <paramref name="centres"/>
    /// (M rows of D values) and component standard deviation <paramref name="std"/>.
    /// </summary>
    public static Result Compute(Tensor samples, double[][] centres, double std)
    {
        using var scope = NewDisposeScope();
        var c = torch.tensor(centres.SelectMany(r => r).ToArray(), new long[] { centres.Length, centres[0].Length });
        var x = samples.to(ScalarType.Float64).cpu();
        var d = cdist(x, c);
        var (minD, nearest) = d.min(1);
        var good = minD <= 3 * std;
        long n = x.shape[0];
        int m = centres.Length;
        var counts = new double[m];
        var goodIdx = nearest.masked_select(good).data<long>().ToArray();
        foreach (var i in goodIdx) counts[i]++;
        int covered = counts.Count(v => v >= 0.25 * n / m);
        // KL(empirical mode histogram of good samples || uniform), 0 when perfectly balanced
        double total = counts.Sum(), kl = 0;
        if (total > 0) foreach (var v in counts) if (v > 0) kl += v / total * Math.Log(v / total * m);
        return new Result(covered, m, goodIdx.Length / (double)n, kl);
    }
}
