using Dmd.Diffusion;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>
/// The three losses of Distribution Matching Distillation (Yin et al. 2024; DESIGN.md section 4), and DMD2's GAN
/// losses (Yin et al. NeurIPS 2024), written to read like the papers. Shape-generic: x is (B, ...).
/// </summary>
public static class DmdLoss
{
    /// <summary>
    /// Eq. 7-8: the distribution matching gradient for generated samples <paramref name="x"/>, given the
    /// real and fake denoisers' predictions at the noised samples.
    /// k = mean over non-batch dims of |x - p_real| (per-sample weight), grad = nan_to_num((p_fake - p_real) / k).
    /// Following -grad moves x toward the real distribution, away from the fake one.
    /// </summary>
    public static Tensor DmGradient(Tensor x, Tensor pReal, Tensor pFake)
    {
        var k = Weighting(x, pReal);
        return ((pFake - pReal) / k).nan_to_num();
    }

    /// <summary>Per-sample weight k = mean over all non-batch dims of |x - p_real|, shape (B, 1, ...).</summary>
    public static Tensor Weighting(Tensor x, Tensor pReal)
    {
        var dims = Enumerable.Range(1, (int)x.dim() - 1).Select(i => (long)i).ToArray();
        return (x - pReal).abs().mean(dims, keepdim: true);
    }

    /// <summary>
    /// The distribution matching loss for a generated batch: noise it at the given levels, ask both
    /// denoisers (no gradient), and return loss_dm = 0.5 mean((x - stopgrad(x - grad))^2), whose gradient
    /// with respect to x is grad / numel. <paramref name="real"/> carries the CFG scale when asked for.
    /// <paramref name="sampleWeights"/>, given the noised samples and their levels, gives f-distill's weight h(r) of each
    /// sample's gradient (called without gradient; see <see cref="DivergenceWeights"/>); null = 1 each (DMD's reverse KL).
    /// </summary>
    public static Tensor DistributionMatching(Tensor x, IDenoiser real, IDenoiser fake, Tensor sigma, Tensor? labels, Generator? g,
                                              Func<Tensor, Tensor, Tensor>? sampleWeights = null)
    {
        Tensor grad;
        using (no_grad())
        {
            var xd = x.detach();
            var xt = xd + DenoiserExtensions.Broadcast(sigma, xd) * Rng.NormalLike(xd, g);
            var pReal = real.Denoise(xt, sigma, labels);
            var pFake = fake.Denoise(xt, sigma, labels);
            grad = DmGradient(xd, pReal, pFake);
            if (sampleWeights is not null) grad = grad * DenoiserExtensions.Broadcast(sampleWeights(xt, sigma), xd);
        }
        return nn.functional.mse_loss(x, (x - grad).detach()) / DenoiserExtensions.Const(2, x);
    }

    /// <summary>
    /// SiD's generator loss (Score identity Distillation, Zhou et al. ICML 2024, the official code's <c>generator_loss</c>)
    /// for a generated batch: noise it at the given levels, ask both denoisers <b>with</b> gradient (through their inputs:
    /// the caller keeps their weights out of it), and return mean[(p_real - p_fake) ((p_real - x) - alpha (p_real - p_fake)) / k],
    /// k the per-sample weight of DMD (mean |x - p_real|, no gradient, at least 1e-5). Its gradient's explicit part, through
    /// x alone, is DMD's grad / numel; the rest comes through the two denoisers, and alpha (SiD: 1.2) sets how much of
    /// |p_real - p_fake|^2 it subtracts. Costs a backward pass through both denoisers, which DMD's loss does not.
    /// </summary>
    public static Tensor ScoreIdentity(Tensor x, IDenoiser real, IDenoiser fake, Tensor sigma, Tensor? labels, Generator? g, double alpha)
    {
        var xt = x + DenoiserExtensions.Broadcast(sigma, x) * Rng.NormalLike(x, g);
        var pReal = real.Denoise(xt, sigma, labels);
        var pFake = fake.Denoise(xt, sigma, labels);
        Tensor k;
        using (no_grad()) k = Weighting(x.detach(), pReal.detach()).clamp_min(1e-5);
        var d = pReal - pFake;
        return (d * ((pReal - x) - DenoiserExtensions.Const(alpha, d) * d) / k).mean();
    }

    /// <summary>
    /// f-distill's weights h(r) of the DM gradient (Xu, Nie and Vahdat 2025), one per sample (B), from the GAN head's
    /// logits (B) at the noised samples: its optimum is log(p_real / p_fake), so r = exp(logit). ReverseKl: h = 1 (DMD);
    /// JensenShannon: h = r / (1 + r) = sigmoid(logit); ForwardKl: h = r. Divided by their batch mean (f-distill's
    /// normalisation of the weights, beside DMD's of the score difference), so that only how the samples share the
    /// gradient changes, not its scale: ForwardKl's are B softmax(logits), which is also how they are computed.
    /// </summary>
    public static Tensor DivergenceWeights(Tensor logits, DmDivergence divergence) => divergence switch
    {
        DmDivergence.ReverseKl => ones_like(logits),
        DmDivergence.JensenShannon => Normalised(sigmoid(logits)),
        DmDivergence.ForwardKl => softmax(logits, 0) * DenoiserExtensions.Const(logits.shape[0], logits),
        _ => throw new ArgumentOutOfRangeException(nameof(divergence), divergence, null),
    };

    static Tensor Normalised(Tensor h) => h / h.mean();

    /// <summary>
    /// The fake denoiser's loss: denoising score matching on generated samples (detached), EDM weighting
    /// 1/sigma^2 + 1/sd^2, noise levels from the whole grid.
    /// </summary>
    public static Tensor FakeDenoising(IDenoiser fake, Tensor xGenerated, Tensor sigma, Tensor? labels, double sigmaData, Generator? g) =>
        EdmLoss.AtSigma(fake, xGenerated.detach(), sigma, labels, sigmaData, g);

    /// <summary>
    /// The fake denoiser's loss with its own preconditioning's weight (<see cref="EdmPrecond.LossWeight"/>): EDM's for an
    /// EDM network, 1/sigma^2 (the eps MSE, as DMD trains Stable Diffusion's fake score) for a VP eps-prediction one.
    /// </summary>
    public static Tensor FakeDenoising(EdmPrecond fake, Tensor xGenerated, Tensor sigma, Tensor? labels, Generator? g) =>
        EdmLoss.AtSigma(fake, xGenerated.detach(), sigma, labels, fake.LossWeight, g);

    /// <summary>Regression loss with L2 distance: mean squared error between G(z_ref) and the teacher's x_ref.</summary>
    public static Tensor RegressionL2(Tensor generated, Tensor target) => nn.functional.mse_loss(generated, target);

    /// <summary>
    /// Regression loss with the pseudo-Huber distance of Song and Dhariwal (2023, iCT):
    /// mean over samples of sqrt(|a - b|^2 + c^2) - c, with c = 0.00054 sqrt(d) for d values per sample.
    /// </summary>
    public static Tensor RegressionPseudoHuber(Tensor generated, Tensor target)
    {
        long d = generated[0].numel();
        var c = DenoiserExtensions.Const(0.00054 * Math.Sqrt(d), generated);
        var sq = (generated - target).square().reshape(generated.shape[0], -1).sum(1);
        return ((sq + c * c).sqrt() - c).mean();
    }

    /// <summary>
    /// DMD2's diffusion GAN classifier (edm_guidance.py <c>compute_cls_logits</c>): samples <paramref name="x"/> noised at
    /// <paramref name="sigma"/> (B) with fresh noise from <paramref name="g"/> (unless <paramref name="addNoise"/> is false:
    /// clean samples, DMD2 without <c>--diffusion_gan</c>), the fake denoiser's features there (gradients flow to x), and the
    /// head's logit per sample (B).
    /// </summary>
    public static Tensor GanLogits(EdmPrecond fake, GanClassifier head, Tensor x, Tensor sigma, Tensor? labels, Generator? g, bool addNoise = true)
    {
        var xt = addNoise ? x + DenoiserExtensions.Broadcast(sigma, x) * Rng.NormalLike(x, g) : x;
        return head.forward(fake.Features(xt, sigma, labels));
    }

    /// <summary>The generator's non-saturating GAN loss: mean softplus(-D(fake)) = -mean log sigmoid(D(fake)) (DMD2 <c>gen_cls_loss</c>).</summary>
    public static Tensor GanGenerator(Tensor logitsFake) => nn.functional.softplus(-logitsFake).mean();

    /// <summary>
    /// The classifier's loss: mean [softplus(-D(real)) + softplus(D(fake))] = -mean [log sigmoid(D(real)) + log(1 - sigmoid(D(fake)))]
    /// (DMD2 <c>guidance_cls_loss</c>), over pairs of real and generated samples.
    /// </summary>
    public static Tensor GanDiscriminator(Tensor logitsReal, Tensor logitsFake) =>
        (nn.functional.softplus(-logitsReal) + nn.functional.softplus(logitsFake)).mean();

    /// <summary>
    /// The energy distance between two sets of feature vectors (n, D) and (m, D), n, m &gt;= 2, divided by the second set's
    /// mean distance (taken as a constant): [2 mean_ij |g_i - r_j| - mean_{i!=j} |g_i - g_j| - mean_{i!=j} |r_i - r_j|] /
    /// mean_{i!=j} |r_i - r_j| (Szekely and Rizzo; the within-set means over distinct pairs, so that its expectation is
    /// the distributions' energy distance, 0 for the same distribution). Its gradient draws each g to the r's and pushes
    /// the g's apart. Given groups of sets, (G, n, D) and (G, m, D), it is the mean over the groups of each pair's value.
    /// </summary>
    public static Tensor FeatureEnergy(Tensor fGen, Tensor fReal)
    {
        if (fGen.dim() != fReal.dim() || fGen.dim() is not (2 or 3) || (fGen.dim() == 3 && fGen.shape[0] != fReal.shape[0]))
            throw new ArgumentException($"feature sets (n, D) and (m, D), or groups of them (G, n, D) and (G, m, D), not [{string.Join(", ", fGen.shape)}] and [{string.Join(", ", fReal.shape)}]");
        long n = fGen.shape[^2], m = fReal.shape[^2];
        if (n < 2 || m < 2) throw new DmdInputException($"the feature energy term needs at least 2 samples in each set, not {n} and {m}: raise batch-size (or feature-energy-group)");
        using var scope = NewDisposeScope();
        // pairwise Euclidean distances (..., n, m); the 1e-12 keeps the square root's gradient finite on the diagonal, where it is 0
        static Tensor Dist(Tensor a, Tensor b) => (a.unsqueeze(-2) - b.unsqueeze(-3)).square().sum(-1).add(1e-12).sqrt();
        var pairs = new long[] { -2, -1 };
        var cross = Dist(fGen, fReal).mean(pairs);
        var gen = Dist(fGen, fGen).sum(pairs) / (n * (n - 1));
        var real = (Dist(fReal, fReal).sum(pairs) / (m * (m - 1))).detach();
        return ((2 * cross - gen - real) / real).mean().MoveToOuterDisposeScope();
    }
}
