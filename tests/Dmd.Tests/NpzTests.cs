using System.IO.Compression;
using System.Text;
using Dmd.IO;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// .npz statistics I/O. TestData/stats_savez*.npz were written by numpy 1.24 (TestData/make_testdata.py):
/// mu = arange(5) / 3, sigma = 5x5 Hilbert matrix, feat32 = float32(arange(12).reshape(3, 4) / 7),
/// fortran = Fortran-ordered arange(12.).reshape(3, 4), labels = int64 arange(4).
/// </summary>
public class NpzTests : IDisposable
{
    readonly string dir = Path.Combine(Path.GetTempPath(), "dmd-npz-" + Guid.NewGuid().ToString("N"));

    public NpzTests() => Directory.CreateDirectory(dir);

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static string DataPath(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    static long[] Bits(Tensor t) => t.to(ScalarType.Float64).data<double>().ToArray().Select(BitConverter.DoubleToInt64Bits).ToArray();

    [Fact]
    public void RoundTripIsBitExact()
    {
        using var scope = NewDisposeScope();
        var special = tensor(new[] { 0.0, -0.0, double.Epsilon, double.MaxValue, double.NaN, double.NegativeInfinity, 1.0 / 3 });
        var arrays = new Dictionary<string, Tensor>
        {
            ["mu"] = randn(2048, dtype: ScalarType.Float64, generator: new Generator(1)),
            ["sigma"] = randn(64, 64, dtype: ScalarType.Float64, generator: new Generator(2)),
            ["special"] = special,
            ["cube32"] = randn(new long[] { 2, 3, 4 }, generator: new Generator(3)),
            ["scalar"] = tensor(Math.PI),
            ["empty"] = zeros(0, 3, dtype: ScalarType.Float64),
        };
        string path = Path.Combine(dir, "stats.npz");
        Npz.Save(path, arrays);
        var back = Npz.Load(path);
        Assert.Equal(arrays.Keys.Order(), back.Keys.Order());
        foreach (var (k, t) in arrays)
        {
            Assert.Equal(t.dtype, back[k].dtype);
            Assert.Equal(t.shape, back[k].shape);
            if (t.numel() == 0) continue;
            if (t.dtype == ScalarType.Float32)
                Assert.Equal(t.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits), back[k].data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));
            else
                Assert.Equal(Bits(t), Bits(back[k]));
        }
    }

    [Fact]
    public void FrechetStatisticsRoundTripExactly()
    {
        using var scope = NewDisposeScope();
        var (mu, sigma) = FrechetDistance.Statistics(randn(100, 16, generator: new Generator(4)));
        string path = Path.Combine(dir, "sub", "ref.npz");
        FrechetDistance.SaveStatistics(path, mu, sigma);
        var (mu2, sigma2) = FrechetDistance.LoadStatistics(path);
        Assert.Equal(Bits(mu), Bits(mu2));
        Assert.Equal(Bits(sigma), Bits(sigma2));
        Assert.Equal(0.0, FrechetDistance.Compute(mu, sigma, mu2, sigma2), 1e-9);
    }

    [Theory]
    [InlineData("stats_savez.npz")]
    [InlineData("stats_savez_compressed.npz")]
    public void ReadsStatisticsWrittenByNumpy(string file)
    {
        using var scope = NewDisposeScope();
        var (mu, sigma) = FrechetDistance.LoadStatistics(DataPath(file));
        Assert.Equal(new long[] { 5 }, mu.shape);
        Assert.Equal(new long[] { 5, 5 }, sigma.shape);
        Assert.Equal(Enumerable.Range(0, 5).Select(i => i / 3.0), mu.data<double>().ToArray());
        var expected = Enumerable.Range(0, 25).Select(k => 1.0 / (k / 5 + k % 5 + 1.0));
        Assert.Equal(expected, sigma.data<double>().ToArray());
    }

    [Fact]
    public void ReadsFloat32AndFortranOrderArraysWrittenByNumpy()
    {
        using var scope = NewDisposeScope();
        var d = Npz.Load(DataPath("stats_savez_compressed.npz"), "feat32", "fortran");
        Assert.Equal(ScalarType.Float32, d["feat32"].dtype);
        Assert.Equal(new long[] { 3, 4 }, d["feat32"].shape);
        Assert.Equal(Enumerable.Range(0, 12).Select(k => (float)(k / 7.0)), d["feat32"].data<float>().ToArray());
        Assert.Equal(new long[] { 3, 4 }, d["fortran"].shape);
        Assert.Equal(Enumerable.Range(0, 12).Select(k => (double)k), d["fortran"].contiguous().data<double>().ToArray());
    }

    [Fact]
    public void UnsupportedDtypeIsAClearError()
    {
        var e = Assert.Throws<DmdInputException>(() => Npz.Load(DataPath("stats_savez_compressed.npz"), "labels"));
        Assert.Contains("'<i8'", e.Message);
    }

    [Fact]
    public void MissingFileIsAClearError()
    {
        var e = Assert.Throws<DmdInputException>(() => FrechetDistance.LoadStatistics(Path.Combine(dir, "nope.npz")));
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void MissingKeyNamesWhatTheFileHas()
    {
        string path = Path.Combine(dir, "mu_only.npz");
        using (var mu = zeros(3, dtype: ScalarType.Float64)) Npz.Save(path, new Dictionary<string, Tensor> { ["mu"] = mu });
        var e = Assert.Throws<DmdInputException>(() => FrechetDistance.LoadStatistics(path));
        Assert.Contains("lacks array(s) sigma", e.Message);
        Assert.Contains("it has: mu", e.Message);
    }

    [Fact]
    public void NonZipFileIsAClearError()
    {
        string path = Path.Combine(dir, "text.npz");
        File.WriteAllText(path, "this is not a zip archive");
        var e = Assert.Throws<DmdInputException>(() => Npz.Load(path));
        Assert.Contains("not an .npz archive", e.Message);
    }

    [Fact]
    public void TruncatedArchiveIsAClearError()
    {
        string path = Path.Combine(dir, "truncated.npz");
        var bytes = File.ReadAllBytes(DataPath("stats_savez.npz"));
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        Assert.Throws<DmdInputException>(() => Npz.Load(path, "mu", "sigma"));
    }

    [Theory]
    [InlineData("bad magic")]
    [InlineData("short data")]
    [InlineData("no header fields")]
    public void CorruptArrayEntryIsAClearError(string kind)
    {
        string path = Path.Combine(dir, "corrupt.npz");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        using (var s = zip.CreateEntry("mu.npy").Open())
        {
            if (kind == "bad magic") s.Write(Encoding.ASCII.GetBytes("PK not an npy array at all"));
            else
            {
                using var ms = new MemoryStream();
                using (var t = zeros(100, dtype: ScalarType.Float64)) Npz.WriteNpy(ms, t);
                var npy = ms.ToArray();
                if (kind == "short data") s.Write(npy, 0, npy.Length - 8);
                else { npy[15] = (byte)'x'; s.Write(npy); }  // break the 'descr' key
            }
        }
        var e = Assert.Throws<DmdInputException>(() => Npz.Load(path, "mu"));
        Assert.Contains(path, e.Message);
    }
}
