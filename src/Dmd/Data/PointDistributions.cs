using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>
/// Built-in 2-D distributions whose truth is known, for measuring distillation exactly.
/// Labels are the mixture component (ring8, grid25), the moon (moons) or the black square (checkerboard).
/// </summary>
public static class PointDistributions
{
    /// <summary>
    /// The names <see cref="Sample"/> accepts: ring8 (8 Gaussians, std 0.1, on a circle of radius 2), grid25 (5x5 Gaussians
    /// 1 apart, std 0.05), moons (two interleaved half-circles) and checkerboard (8 alternating squares of a 4x4 board on [-2, 2]^2).
    /// </summary>
    public static readonly string[] Names = { "ring8", "grid25", "moons", "checkerboard" };

    /// <summary>Draws <paramref name="n"/> points of a named distribution with a fixed seed.</summary>
    public static PointSet Sample(string name, int n, long seed)
    {
        using var g = new Generator((ulong)seed);
        return name.ToLowerInvariant() switch
        {
            "ring8" => Mixture(Ring(8, 2.0), 0.1, n, g),
            "grid25" => Mixture(Grid(5, 1.0), 0.05, n, g),
            "moons" => Moons(n, 0.05, g),
            "checkerboard" => Checkerboard(n, g),
            _ => throw new DmdInputException($"unknown distribution '{name}': use one of {string.Join(", ", Names)}, or csv:PATH for your own points"),
        };
    }

    static double[][] Ring(int k, double radius) =>
        Enumerable.Range(0, k).Select(i => new[] { radius * Math.Cos(2 * Math.PI * i / k), radius * Math.Sin(2 * Math.PI * i / k) }).ToArray();

    static double[][] Grid(int k, double spacing) =>
        (from i in Enumerable.Range(0, k) from j in Enumerable.Range(0, k)
         select new[] { (i - (k - 1) / 2.0) * spacing, (j - (k - 1) / 2.0) * spacing }).ToArray();

    static PointSet Mixture(double[][] centers, double std, int n, Generator g)
    {
        var c = torch.tensor(centers.SelectMany(r => r).ToArray(), new long[] { centers.Length, 2 }).to(ScalarType.Float32);
        var idx = randint(0, centers.Length, new long[] { n }, generator: g);
        var pts = c.index_select(0, idx) + std * randn(new long[] { n, 2 }, generator: g);
        return new PointSet(pts, idx, centers.Length, new ModeInfo(centers, std));
    }

    static PointSet Moons(int n, double noise, Generator g)
    {
        var which = randint(0, 2, new long[] { n }, generator: g);
        var t = rand(new long[] { n }, generator: g) * Math.PI;
        var upper = stack(new[] { t.cos(), t.sin() }, 1);
        var lower = stack(new[] { 1 - t.cos(), 0.5 - t.sin() }, 1);
        var w = which.unsqueeze(1).to(ScalarType.Float32);
        var pts = upper * (1 - w) + lower * w + noise * randn(new long[] { n, 2 }, generator: g);
        // centre and scale to about [-2, 2] like the other sets
        pts = (pts - torch.tensor(new float[] { 0.5f, 0.25f })) * 1.5f;
        return new PointSet(pts, which, 2);
    }

    static PointSet Checkerboard(int n, Generator g)
    {
        // 4x4 board on [-2, 2]^2; points fill the 8 squares where (i + j) is even.
        var sq = randint(0, 8, new long[] { n }, generator: g);
        var row = sq.div(2, rounding_mode: RoundingMode.floor);
        var col = sq.remainder(2) * 2 + row.remainder(2);
        var u = rand(new long[] { n, 2 }, generator: g);
        var pts = stack(new[] { col.to(ScalarType.Float32) + u[.., 0], row.to(ScalarType.Float32) + u[.., 1] }, 1) - 2.0f;
        return new PointSet(pts, sq, 8);
    }
}
