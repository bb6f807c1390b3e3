using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// The EDM training loss (Karras et al. 2022, Eq. 8 with Table 1 choices; DESIGN.md section 2):
/// ln sigma ~ N(P_mean, P_std^2), weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2,
/// loss = lambda |D(x0 + sigma n) - x0|^2, averaged over elements and batch.
/// </summary>
public static class EdmLoss
{
    /// <summary>EDM's training noise levels: ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2 (Karras et al. 2022, Table 1).</summary>
    public const double PMean = -1.2, PStd = 1.2;

    /// <summary>lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1/sigma^2 + 1/sd^2.</summary>
    public static Tensor Weight(Tensor sigma, double sigmaData)
    {
        var sd = DenoiserExtensions.Const(sigmaData, sigma);
        return (sigma.square() + sd.square()) / (sigma * sd).square();
    }

    /// <summary>Denoising loss at given noise levels (used by the teacher and by DMD's fake denoiser).</summary>
    public static Tensor AtSigma(IDenoiser net, Tensor x0, Tensor sigma, Tensor? labels, double sigmaData, Generator? generator = null) =>
        AtSigma(net, x0, sigma, labels, s => Weight(s, sigmaData), generator);

    /// <summary>Denoising loss at given noise levels with the weight <paramref name="weight"/>(sigma) (e.g. <see cref="EdmPrecond.LossWeight"/>).</summary>
    public static Tensor AtSigma(IDenoiser net, Tensor x0, Tensor sigma, Tensor? labels, Func<Tensor, Tensor> weight, Generator? generator = null)
    {
        var sb = DenoiserExtensions.Broadcast(sigma, x0);
        var n = Rng.NormalLike(x0, generator);
        var pred = net.Denoise(x0 + sb * n, sigma, labels);
        return (weight(sb) * (pred - x0).square()).mean();
    }

    /// <summary>The teacher's loss with log-normal noise levels.</summary>
    public static Tensor Compute(IDenoiser net, Tensor x0, Tensor? labels, double sigmaData, Generator? generator = null,
                                 double pMean = PMean, double pStd = PStd)
    {
        var rnd = Rng.Normal(new long[] { x0.shape[0] }, generator, x0.device);
        var sigma = (rnd * DenoiserExtensions.Const(pStd, rnd) + DenoiserExtensions.Const(pMean, rnd)).exp();
        return AtSigma(net, x0, sigma, labels, sigmaData, generator);
    }
}
