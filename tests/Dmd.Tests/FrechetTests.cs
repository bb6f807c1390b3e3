using System.Text.Json;
using Dmd.IO;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Frechet distance against reference values in TestData/frechet_cases.json (made by TestData/make_testdata.py:
/// pytorch-fid's scipy-sqrtm formula, and the same formula in 60-digit arithmetic via the eigenvalues of S1 S2).
/// </summary>
public class FrechetTests
{
    static string DataPath(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    static JsonElement Cases() => JsonDocument.Parse(File.ReadAllText(DataPath("frechet_cases.json"))).RootElement;

    static Tensor Vector(JsonElement e) => tensor(e.EnumerateArray().Select(v => v.GetDouble()).ToArray(), ScalarType.Float64);

    static Tensor Matrix(JsonElement e)
    {
        var rows = e.EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetDouble()).ToArray()).ToArray();
        return tensor(rows.SelectMany(r => r).ToArray(), new long[] { rows.Length, rows[0].Length }, ScalarType.Float64);
    }

    static void AssertClose(Tensor actual, Tensor expected, double rtol, double atol)
    {
        Assert.Equal(expected.shape, actual.shape);
        var excess = (actual - expected).abs() - (atol + rtol * expected.abs());
        Assert.True(excess.max().item<double>() <= 0,
            $"max |difference| {(actual - expected).abs().max().item<double>():G3} exceeds {atol} + {rtol} |expected|");
    }

    static (Tensor Mu, Tensor Sigma) RandomStatistics(int n, int d, long seed)
    {
        var g = new Generator((ulong)seed);
        var x = randn(n, d, dtype: ScalarType.Float64, generator: g).matmul(randn(d, d, dtype: ScalarType.Float64, generator: g));
        return FrechetDistance.Statistics(x + randn(d, dtype: ScalarType.Float64, generator: g));
    }

    // relExact: tolerance against the 60-digit value; relPytorchFid: against pytorch-fid's own (sqrtm) result,
    // which is itself off by 3e-10 (ill-conditioned), 2e-8 (singular) and 2e-3 (a distance of 2e-11) relative.
    [Theory]
    [InlineData("random_d16", 1e-13, 1e-13)]
    [InlineData("ill_conditioned_d24", 1e-13, 1e-9)]
    [InlineData("rank_deficient_d24", 1e-13, 1e-7)]
    [InlineData("nearly_identical_d16", 1e-2, 1e-2)]
    public void DistanceMatchesIndependentlyComputedValues(string name, double relExact, double relPytorchFid)
    {
        var c = Cases().GetProperty("cases").EnumerateArray().Single(e => e.GetProperty("name").GetString() == name);
        using var scope = NewDisposeScope();
        double fid = FrechetDistance.Compute(Vector(c.GetProperty("mu1")), Matrix(c.GetProperty("sigma1")),
                                             Vector(c.GetProperty("mu2")), Matrix(c.GetProperty("sigma2")));
        double exact = c.GetProperty("exact").GetDouble(), reference = c.GetProperty("pytorch_fid").GetDouble();
        Assert.True(Math.Abs(fid - exact) <= relExact * Math.Abs(exact), $"{name}: {fid:R} vs exact {exact:R}");
        Assert.True(Math.Abs(fid - reference) <= relPytorchFid * Math.Abs(exact), $"{name}: {fid:R} vs pytorch-fid {reference:R}");
    }

    [Fact]
    public void NearlyIdenticalStatisticsKeepAbsoluteAccuracy()
    {
        // traces are ~16, the distance ~2e-11: cancellation must leave an absolute error far below 1e-12
        var c = Cases().GetProperty("cases").EnumerateArray().Single(e => e.GetProperty("name").GetString() == "nearly_identical_d16");
        using var scope = NewDisposeScope();
        double fid = FrechetDistance.Compute(Vector(c.GetProperty("mu1")), Matrix(c.GetProperty("sigma1")),
                                             Vector(c.GetProperty("mu2")), Matrix(c.GetProperty("sigma2")));
        Assert.InRange(fid - c.GetProperty("exact").GetDouble(), -1e-12, 1e-12);
    }

    [Fact]
    public void StatisticsMatchNumpyMeanAndUnbiasedCovariance()
    {
        var s = Cases().GetProperty("statistics");
        using var scope = NewDisposeScope();
        var (mu, sigma) = FrechetDistance.Statistics(Matrix(s.GetProperty("features")), chunk: 7); // several chunks
        Assert.Equal(ScalarType.Float64, sigma.dtype);
        AssertClose(mu, Vector(s.GetProperty("mu")), 1e-13, 1e-13);
        AssertClose(sigma, Matrix(s.GetProperty("sigma")), 1e-12, 1e-13);
    }

    [Fact]
    public void StatisticsOfFloat32FeaturesAreComputedInFloat64()
    {
        using var scope = NewDisposeScope();
        // a large offset: float32 accumulation would lose the small spread, float64 keeps it
        var x = (randn(1000, 4, generator: new Generator(3)) * 1e-2 + 1e4).to(ScalarType.Float32);
        var (mu, sigma) = FrechetDistance.Statistics(x, chunk: 300);
        var x64 = x.to(ScalarType.Float64);
        var centred = x64 - x64.mean(new long[] { 0 });
        AssertClose(mu, x64.mean(new long[] { 0 }), 1e-14, 0);
        AssertClose(sigma, centred.mT.matmul(centred) / 999, 1e-9, 1e-15);
    }

    [Fact]
    public void DiagonalCovariancesGiveTheClosedForm()
    {
        // for diagonal S1, S2: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2, zeros included
        using var scope = NewDisposeScope();
        double[] a = { 4, 1, 0, 9, 2.5 }, b = { 1, 1, 3, 0, 0.5 };
        var mu1 = tensor(new double[] { 1, 2, 3, 4, 5 });
        var mu2 = tensor(new double[] { 0, 2, 5, 4, 4 });
        double expected = 1 + 0 + 4 + 0 + 1 + a.Zip(b, (x, y) => Math.Pow(Math.Sqrt(x) - Math.Sqrt(y), 2)).Sum();
        double fid = FrechetDistance.Compute(mu1, diag(tensor(a)), mu2, diag(tensor(b)));
        Assert.Equal(expected, fid, 1e-12);
    }

    [Theory]
    [InlineData(500, 32)]  // full rank
    [InlineData(20, 64)]   // singular covariances
    public void DistanceIsZeroForIdenticalStatistics(int n, int d)
    {
        using var scope = NewDisposeScope();
        var (mu, sigma) = RandomStatistics(n, d, seed: 1);
        double fid = FrechetDistance.Compute(mu, sigma, mu.clone(), sigma.clone());
        Assert.InRange(fid, -1e-9 * sigma.trace().item<double>(), 1e-9 * sigma.trace().item<double>());
    }

    [Fact]
    public void DistanceIsSymmetricAndPositive()
    {
        using var scope = NewDisposeScope();
        var (mu1, s1) = RandomStatistics(200, 24, seed: 2);
        var (mu2, s2) = RandomStatistics(300, 24, seed: 3);
        double ab = FrechetDistance.Compute(mu1, s1, mu2, s2), ba = FrechetDistance.Compute(mu2, s2, mu1, s1);
        Assert.True(ab > 0);
        Assert.Equal(ab, ba, 1e-10 * ab);
    }

    [Fact]
    public void MismatchedOrMalformedStatisticsGiveClearErrors()
    {
        using var scope = NewDisposeScope();
        var (mu1, s1) = RandomStatistics(50, 8, seed: 4);
        var (mu2, s2) = RandomStatistics(50, 6, seed: 5);
        var e = Assert.Throws<DmdInputException>(() => FrechetDistance.Compute(mu1, s1, mu2, s2));
        Assert.Contains("8 vs 6", e.Message);
        Assert.Throws<DmdInputException>(() => FrechetDistance.Compute(mu1, s1, mu1, s1[.., ..4]));
        var nan = s1.clone(); nan[0, 0] = tensor(double.NaN);
        Assert.Throws<DmdInputException>(() => FrechetDistance.Compute(mu1, s1, mu1, nan));
    }

    [Fact]
    public void SingularProductOfOrthogonalCovariancesGivesTheExactDistance()
    {
        // covariances of rank 1 with orthogonal ranges: S1 S2 = 0, the most singular product there is
        using var scope = NewDisposeScope();
        var s1 = diag(tensor(new double[] { 1, 0 }));
        var s2 = diag(tensor(new double[] { 0, 1 }));
        double fid = FrechetDistance.Compute(zeros(2, dtype: ScalarType.Float64), s1, zeros(2, dtype: ScalarType.Float64), s2);
        Assert.Equal(2.0, fid, 1e-12);
    }
}
