using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// Classifier-free guidance (DESIGN.md section 2): D_cfg = D(x, sigma, none) + w (D(x, sigma, y) - D(x, sigma, none)).
/// Both branches run as one batch of twice the size; it counts as one NFE, as in the papers.
/// </summary>
public sealed class GuidedDenoiser : IDenoiser
{
    private readonly IDenoiser inner;
    /// <summary>Guidance scale w (1 = plain conditional model).</summary>
    public double Scale { get; }

    /// <summary>Wraps a class-conditional denoiser with guidance scale <paramref name="scale"/>; an unconditional one is an <see cref="ArgumentException"/>.</summary>
    public GuidedDenoiser(IDenoiser inner, double scale)
    {
        if (inner.LabelDim == 0) throw new ArgumentException("classifier-free guidance needs a class-conditional denoiser");
        this.inner = inner;
        Scale = scale;
    }

    /// <summary>Number of classes of the wrapped denoiser.</summary>
    public int LabelDim => inner.LabelDim;

    /// <summary>The wrapped denoiser's device.</summary>
    public Device Device => inner.Device;

    /// <summary>
    /// D_cfg(x, sigma, labels), the unconditional branch fed all-zero label rows. Without labels, or with scale 1, it is the
    /// wrapped denoiser's output (one pass of batch B).
    /// </summary>
    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
    {
        if (labels is null || Scale == 1.0) return inner.Denoise(x, sigma, labels);
        using var scope = NewDisposeScope();
        long b = x.shape[0];
        var s = sigma.dim() == 0 ? sigma.expand(b) : sigma;
        var both = inner.Denoise(cat(new[] { x, x }), cat(new[] { s, s }), cat(new[] { zeros_like(labels), labels }));
        var uncond = both[..(int)b];
        var cond = both[(int)b..];
        return (uncond + DenoiserExtensions.Const(Scale, uncond) * (cond - uncond)).MoveToOuterDisposeScope();
    }

    /// <summary>Wraps a denoiser with guidance when it is conditional and the scale is not 1.</summary>
    public static IDenoiser Wrap(IDenoiser d, double scale) => d.LabelDim > 0 && scale != 1.0 ? new GuidedDenoiser(d, scale) : d;
}
