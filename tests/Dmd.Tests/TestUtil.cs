using Dmd.Diffusion;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>The exact denoiser of Gaussian data N(mu, s^2 I): D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2).</summary>
internal sealed class GaussianDenoiser : IDenoiser
{
    public Tensor Mu { get; }
    public double S { get; }
    public int LabelDim => 0;
    public int Calls { get; private set; }

    public GaussianDenoiser(Tensor mu, double s) { Mu = mu; S = s; }

    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
    {
        Calls++;
        var s2 = DenoiserExtensions.Broadcast(sigma, x).to(x.dtype).square();
        return (S * S * x + s2 * Mu.to(x.dtype)) / (S * S + s2);
    }
}

internal static class TestUtil
{
    /// <summary>The repository's root (the folder holding models/), found upwards from the test binaries.</summary>
    public static string RepoRoot
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
                if (Directory.Exists(Path.Combine(d.FullName, "models", "fashion-mnist-teacher"))) return d.FullName;
            throw new DirectoryNotFoundException("the repository root (with models/) was not found above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>The folder of a run's latest checkpoint (verified against its manifest).</summary>
    public static string CheckpointFolder(string runDir) => new Dmd.Training.CheckpointStore(runDir).Open()!.Folder;

    /// <summary>The step of a run's latest checkpoint.</summary>
    public static int CheckpointStep(string runDir) => new Dmd.Training.CheckpointStore(runDir).Open()!.Step;

    /// <summary>Same shape and bit-identical values.</summary>
    public static bool Same(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && (a.numel() == 0 || (a == b).all().item<bool>());

    /// <summary>
    /// TestData/make_testdata.py's uniform(): deterministic values in [0, 1) that Python and C# both compute, so
    /// fixtures can hold inputs and expected outputs but not large weights: splitmix64 of
    /// (fnv1a64(name) + k * golden), k = 1..n, top 53 bits.
    /// </summary>
    public static double[] Uniform(string name, long n)
    {
        ulong seed = 0xCBF29CE484222325;
        foreach (char c in name) seed = (seed ^ c) * 0x100000001B3;
        var u = new double[n];
        for (long k = 0; k < n; k++)
        {
            ulong z = seed + (ulong)(k + 1) * 0x9E3779B97F4A7C15;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
            z ^= z >> 31;
            u[k] = (z >> 11) * (1.0 / (1L << 53));
        }
        return u;
    }

    /// <summary>The tiny labelled point MLP of the DMD wiring and GAN tests: 2-D, 3 classes, width 32, depth 2, no dropout.</summary>
    public static readonly Dmd.Networks.MlpSpec TinyPointSpec = new() { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.5, Width = 32, Depth = 2 };

    /// <summary>Adds seeded N(0, scale^2) noise to every parameter (so zero-initialised layers carry signal).</summary>
    public static void Perturb(nn.Module m, long seed, double scale)
    {
        using var g = new Generator((ulong)seed);
        using var _ = no_grad();
        foreach (var p in m.parameters()) p.add_(randn(p.shape, generator: g) * scale);
    }

    /// <summary>
    /// The gradients left on <paramref name="actual"/> equal those of <paramref name="expected"/> (computed by hand) to 2e-4
    /// of each parameter's largest; with <paramref name="requireGradient"/> every parameter must have one.
    /// </summary>
    public static void AssertSameGradients(nn.Module expected, nn.Module actual, string what, bool requireGradient = false)
    {
        var a = actual.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in expected.named_parameters())
        {
            var ge = p.grad ?? zeros_like(p);
            var ga = a[name].grad ?? zeros_like(p);
            double scale = Math.Max(ge.abs().max().item<float>(), 1e-12);
            double err = (ge - ga).abs().max().item<float>();
            if (requireGradient) Assert.True(scale > 1e-9, $"{what}: {name} has no gradient in the hand computation");
            Assert.True(err <= 2e-4 * scale + 1e-9, $"{what}: gradient of {name} differs by {err:G3} (largest {scale:G3})");
        }
    }

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "dmd-tests-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }
}

/// <summary>
/// A test that needs the Fashion-MNIST files of the Debian package: reported as skipped, with the reason and the
/// fix, where they are not installed (a green run never hides that it did not run).
/// </summary>
internal sealed class FashionMnistFactAttribute : FactAttribute
{
    public FashionMnistFactAttribute()
    {
        if (!Dmd.Data.FashionMnist.IsAvailable())
            Skip = $"Fashion-MNIST is not installed in {Dmd.Data.FashionMnist.DebianFolder} (apt-get install dataset-fashion-mnist)";
    }
}
