using System.Runtime.InteropServices;
using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Metrics;

/// <summary>
/// Frechet distance between Gaussian fits of two feature sets (FID when the features are the
/// 2048-d pool features of <see cref="FidInceptionV3"/>), in float64:
/// d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).
/// Statistics files are .npz archives with arrays <c>mu</c> and <c>sigma</c>, the layout of
/// pytorch-fid's and EDM's published reference statistics.
/// </summary>
public static class FrechetDistance
{
    /// <summary>
    /// Mean (D) and covariance (D, D) of features (N, D), in float64 on the CPU; the covariance uses the
    /// unbiased N-1 normalisation of <c>np.cov</c>. Rows are processed <paramref name="chunk"/> at a time.
    /// </summary>
    public static (Tensor Mu, Tensor Sigma) Statistics(Tensor features, int chunk = 4096)
    {
        if (features.dim() != 2) throw new ArgumentException($"features must be (N, D), got [{string.Join(",", features.shape)}]");
        long n = features.shape[0], d = features.shape[1];
        if (n < 2) throw new ArgumentException($"a covariance needs at least two samples, got {n}");
        using var scope = NewDisposeScope();
        var sum = zeros(d, dtype: ScalarType.Float64);
        for (long i = 0; i < n; i += chunk)
        {
            using var s = NewDisposeScope();
            sum.add_(Rows(features, i, chunk).sum(new long[] { 0 }));
        }
        var mu = sum / n;
        var gram = zeros(d, d, dtype: ScalarType.Float64);
        for (long i = 0; i < n; i += chunk)
        {
            using var s = NewDisposeScope();
            var x = Rows(features, i, chunk) - mu;
            gram.add_(x.mT.matmul(x));
        }
        var sigma = gram / (n - 1);
        return (mu.MoveToOuterDisposeScope(), sigma.MoveToOuterDisposeScope());
    }

    static Tensor Rows(Tensor features, long start, int chunk) =>
        features.narrow(0, start, Math.Min(chunk, features.shape[0] - start)).to(ScalarType.Float64).cpu();

    /// <summary>
    /// Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.
    /// tr sqrt(S1 S2) is the sum of the singular values of sqrt(S1) sqrt(S2) (their squares are the
    /// eigenvalues of sqrt(S1) S2 sqrt(S1), which has the spectrum of S1 S2), with each square root from a
    /// symmetric eigendecomposition whose round-off negative eigenvalues are clamped to zero. Unlike a general
    /// matrix square root (scipy's sqrtm in pytorch-fid) or square roots of eigenvalues, this keeps full
    /// accuracy for singular covariances (fewer samples than dimensions) and ill-conditioned ones.
    /// Should the result still not be finite (an eigensolver that fails to converge), <paramref name="eps"/> I
    /// is added to both covariances and it is retried, as pytorch-fid does.
    /// </summary>
    public static double Compute(Tensor mu1, Tensor sigma1, Tensor mu2, Tensor sigma2, double eps = 1e-6)
    {
        using var scope = NewDisposeScope();
        var m1 = F64(mu1); var s1 = F64(sigma1);
        var m2 = F64(mu2); var s2 = F64(sigma2);
        CheckShapes(m1, s1, "first"); CheckShapes(m2, s2, "second");
        if (m1.shape[0] != m2.shape[0])
            throw new DmdInputException($"the two statistics have different feature dimensions ({m1.shape[0]} vs {m2.shape[0]}): " +
                                        "were they computed with the same feature network?");
        foreach (var t in new[] { m1, s1, m2, s2 })
            if (!t.isfinite().all().item<bool>()) throw new DmdInputException("the statistics contain NaN or infinite values");

        double trCovmean = TraceSqrtProduct(s1, s2);
        if (!double.IsFinite(trCovmean))
        {
            // an eigensolver failed (LAPACK may not converge on near-singular input): regularise both and retry
            var offset = eye(s1.shape[0], dtype: ScalarType.Float64) * eps;
            trCovmean = TraceSqrtProduct(s1 + offset, s2 + offset);
            if (!double.IsFinite(trCovmean))
                throw new ArithmeticException($"Frechet distance is not finite even with {eps} added to the covariance diagonals");
        }
        var diff = m1 - m2;
        return diff.dot(diff).item<double>() + s1.trace().item<double>() + s2.trace().item<double>() - 2 * trCovmean;
    }

    /// <summary>tr sqrt(S1 S2) for symmetric positive semi-definite S1, S2 (float64); NaN if an eigensolver fails.</summary>
    internal static double TraceSqrtProduct(Tensor s1, Tensor s2)
    {
        using var scope = NewDisposeScope();
        try { return linalg.svdvals(SqrtPsd(s1).matmul(SqrtPsd(s2))).sum().item<double>(); }
        catch (ExternalException) { return double.NaN; }  // LAPACK did not converge
    }

    /// <summary>Symmetric square root V diag(sqrt(max(w, 0))) V^T of a symmetric matrix with eigenpairs (w, V).</summary>
    static Tensor SqrtPsd(Tensor s)
    {
        var (w, v) = linalg.eigh((s + s.mT) * 0.5);
        return (v * w.clamp_min(0).sqrt().unsqueeze(0)).matmul(v.mT);
    }

    static Tensor F64(Tensor t) => t.detach().to(ScalarType.Float64).cpu();

    static void CheckShapes(Tensor mu, Tensor sigma, string which)
    {
        if (mu.dim() != 1 || sigma.dim() != 2 || sigma.shape[0] != mu.shape[0] || sigma.shape[1] != mu.shape[0])
            throw new DmdInputException($"the {which} statistics are malformed: mu must be (D) and sigma (D, D), " +
                                        $"got mu [{string.Join(",", mu.shape)}] and sigma [{string.Join(",", sigma.shape)}]");
    }

    /// <summary>Saves statistics as an .npz file with float64 arrays <c>mu</c> and <c>sigma</c> (numpy / pytorch-fid compatible).</summary>
    public static void SaveStatistics(string path, Tensor mu, Tensor sigma)
    {
        using var scope = NewDisposeScope();
        Npz.Save(path, new Dictionary<string, Tensor> { ["mu"] = F64(mu), ["sigma"] = F64(sigma) });
    }

    /// <summary>
    /// Loads statistics from an .npz file with arrays <c>mu</c> (D) and <c>sigma</c> (D, D), such as
    /// pytorch-fid's <c>--save-stats</c> output or EDM's reference statistics; returned in float64.
    /// </summary>
    public static (Tensor Mu, Tensor Sigma) LoadStatistics(string path)
    {
        var d = Npz.Load(path, "mu", "sigma");
        var mu = d["mu"].to(ScalarType.Float64);
        var sigma = d["sigma"].to(ScalarType.Float64);
        foreach (var t in d.Values) t.Dispose();
        try { CheckShapes(mu, sigma, path); }
        catch { mu.Dispose(); sigma.Dispose(); throw; }
        return (mu, sigma);
    }
}
