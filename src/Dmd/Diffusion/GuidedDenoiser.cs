using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// Classifier-free guidance (DESIGN.md section 2): D_cfg = D(x, sigma, none) + w (D(x, sigma, y) - D(x, sigma, none)).
/// Both branches run as one batch of twice the size, the unconditional half first; it counts as one NFE, as in the papers.
/// "none" is an all-zero label row for a class-conditional teacher, or a given unconditional condition (Stable
/// Diffusion: the empty prompt's text context, or a negative prompt's, as diffusers' pipelines use). With a
/// <see cref="GuidanceInterval"/> the combination applies only to samples whose sigma lies in it; the others get D(x, sigma, y),
/// or the combination with the interval's outside scale when that is not 1.
/// </summary>
public sealed class GuidedDenoiser : IDenoiser
{
    private readonly IDenoiser inner;
    private readonly Tensor? unconditional;
    /// <summary>Guidance scale w (1 = plain conditional model).</summary>
    public double Scale { get; }
    /// <summary>The noise levels where guidance applies; null = all.</summary>
    public GuidanceInterval? Interval { get; }

    /// <summary>Wraps a class-conditional denoiser with guidance scale <paramref name="scale"/>; an unconditional one is an <see cref="ArgumentException"/>.</summary>
    /// <param name="inner">The conditional denoiser.</param>
    /// <param name="scale">Guidance scale w.</param>
    /// <param name="unconditional">The condition of the unconditional branch, one row (1, ...) for every sample or one per
    /// sample (B, ...); null: all-zero label rows.</param>
    /// <param name="interval">The noise levels where guidance applies (null = all).</param>
    public GuidedDenoiser(IDenoiser inner, double scale, Tensor? unconditional = null, GuidanceInterval? interval = null)
    {
        if (inner.LabelDim == 0) throw new ArgumentException("classifier-free guidance needs a class-conditional denoiser");
        this.inner = inner;
        this.unconditional = unconditional;
        Scale = scale;
        Interval = interval;
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
        if (labels is null || !GuidanceInterval.Guides(Scale, Interval)) return inner.Denoise(x, sigma, labels);
        using var scope = NewDisposeScope();
        long b = x.shape[0];
        var s = sigma.dim() == 0 ? sigma.expand(b) : sigma;
        Tensor? inside = null;
        if (Interval is { } iv)
        {
            var levels = s; // the ends rounded to sigma's own precision, so "0.28,5.42" means the float levels 0.28 and 5.42
            inside = levels.gt(DenoiserExtensions.Const(iv.Lo, levels)).logical_and(levels.le(DenoiserExtensions.Const(iv.Hi, levels)));
            if (iv.Outside == 1 && !inside.any().item<bool>()) return inner.Denoise(x, sigma, labels).MoveToOuterDisposeScope(); // one conditional pass
        }
        var none = unconditional is null ? zeros_like(labels) : unconditional.to(labels.dtype).to(labels.device).expand(labels.shape);
        var both = inner.Denoise(cat(new[] { x, x }), cat(new[] { s, s }), cat(new[] { none, labels }));
        var uncond = both[..(int)b];
        var cond = both[(int)b..];
        var guided = uncond + DenoiserExtensions.Const(Scale, uncond) * (cond - uncond);
        if (inside is not null)
        {
            var outside = Interval!.Outside == 1 ? cond : uncond + DenoiserExtensions.Const(Interval.Outside, uncond) * (cond - uncond);
            guided = where(DenoiserExtensions.Broadcast(inside, guided), guided, outside);
        }
        return guided.MoveToOuterDisposeScope();
    }

    /// <summary>Wraps a denoiser with guidance when it is conditional and the scale is not 1 (only within <paramref name="interval"/> when given,
    /// or the interval's outside scale is not 1).</summary>
    public static IDenoiser Wrap(IDenoiser d, double scale, GuidanceInterval? interval = null) =>
        d.LabelDim > 0 && GuidanceInterval.Guides(scale, interval) ? new GuidedDenoiser(d, scale, interval: interval) : d;
}
