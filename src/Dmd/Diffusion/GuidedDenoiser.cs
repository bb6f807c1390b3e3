using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// Classifier-free guidance (DESIGN.md section 2): D_cfg = D(x, sigma, none) + w (D(x, sigma, y) - D(x, sigma, none)).
/// Both branches run as one batch of twice the size, the unconditional half first; it counts as one NFE, as in the papers.
/// "none" is an all-zero label row for a class-conditional teacher, or a given unconditional condition (Stable
/// Diffusion: the empty prompt's text context, or a negative prompt's, as diffusers' pipelines use).
/// </summary>
public sealed class GuidedDenoiser : IDenoiser
{
    private readonly IDenoiser inner;
    private readonly Tensor? unconditional;
    /// <summary>Guidance scale w (1 = plain conditional model).</summary>
    public double Scale { get; }

    /// <summary>Wraps a class-conditional denoiser with guidance scale <paramref name="scale"/>; an unconditional one is an <see cref="ArgumentException"/>.</summary>
    /// <param name="inner">The conditional denoiser.</param>
    /// <param name="scale">Guidance scale w.</param>
    /// <param name="unconditional">The condition of the unconditional branch, one row (1, ...) for every sample or one per
    /// sample (B, ...); null: all-zero label rows.</param>
    public GuidedDenoiser(IDenoiser inner, double scale, Tensor? unconditional = null)
    {
        if (inner.LabelDim == 0) throw new ArgumentException("classifier-free guidance needs a class-conditional denoiser");
        this.inner = inner;
        this.unconditional = unconditional;
        Scale = scale;
    }

    /// <summary>Number of classes of the wrapped denoiser.</summary>
    public int LabelDim => inner.LabelDim;

    /// <summary>The wrapped denoiser's device.</summary>
    public Device Device => inner.Device;

    /// <summary>
    /// D_cfg(x, sigma, labels), the unconditional branch fed all-zero label rows (or the given unconditional condition).
    /// Without labels, or with scale 1, it is the wrapped denoiser's output (one pass of batch B).
    /// </summary>
    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
    {
        if (labels is null || Scale == 1.0) return inner.Denoise(x, sigma, labels);
        using var scope = NewDisposeScope();
        long b = x.shape[0];
        var s = sigma.dim() == 0 ? sigma.expand(b) : sigma;
        var none = unconditional is null ? zeros_like(labels) : unconditional.to(labels.dtype).to(labels.device).expand(labels.shape);
        var both = inner.Denoise(cat(new[] { x, x }), cat(new[] { s, s }), cat(new[] { none, labels }));
        var uncond = both[..(int)b];
        var cond = both[(int)b..];
        return (uncond + DenoiserExtensions.Const(Scale, uncond) * (cond - uncond)).MoveToOuterDisposeScope();
    }

    /// <summary>Wraps a denoiser with guidance when it is conditional and the scale is not 1.</summary>
    public static IDenoiser Wrap(IDenoiser d, double scale) => d.LabelDim > 0 && scale != 1.0 ? new GuidedDenoiser(d, scale) : d;
}
