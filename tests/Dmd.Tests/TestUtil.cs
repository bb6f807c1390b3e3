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
    /// <summary>Same shape and bit-identical values.</summary>
    public static bool Same(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && (a.numel() == 0 || (a == b).all().item<bool>());

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "dmd-tests-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }
}
