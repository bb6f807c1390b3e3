using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// A denoiser <c>D(x, sigma, labels) -> x0_hat</c> in the EDM formulation (DESIGN.md section 2).
/// Every network the project uses (teacher, fake denoiser, generator backbone) is reached
/// through this interface, whatever the shape of <c>x</c>.
/// </summary>
public interface IDenoiser
{
    /// <summary>Predicts clean data from <paramref name="x"/> = x0 + sigma * n.</summary>
    /// <param name="x">Noisy samples, shape (B, ...).</param>
    /// <param name="sigma">Noise level per sample, shape (B) (a scalar tensor broadcasts).</param>
    /// <param name="labels">One-hot class labels (B, C); an all-zero row means "no label"
    /// (the unconditional model used by classifier-free guidance). Null for unconditional models. A text-conditioned
    /// teacher (<see cref="EpsPredictionDenoiser"/>) takes its condition here instead: text contexts (B, tokens, C).</param>
    Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null);

    /// <summary>Number of classes the denoiser is conditioned on (0 = unconditional); for a text-conditioned one the
    /// channels of its condition (its guidance needs the unconditional context given, not zero rows: <see cref="GuidedDenoiser"/>).</summary>
    int LabelDim { get; }

    /// <summary>
    /// Where the denoiser computes (its weights' device; the CPU for one without weights): callers that draw noise on the
    /// host move each batch there before sampling and the results back (<see cref="ImageSampling.Generate"/>).
    /// </summary>
    Device Device => CPU;
}

/// <summary>Helpers shared by everything that calls a denoiser.</summary>
internal static class DenoiserExtensions
{
    /// <summary>Reshapes a per-sample sigma (B) to (B, 1, 1, ...) so it broadcasts against x.</summary>
    public static Tensor Broadcast(Tensor sigma, Tensor x)
    {
        if (sigma.dim() == 0) return sigma;
        var shape = new long[x.dim()];
        shape[0] = sigma.shape[0];
        for (int i = 1; i < shape.Length; i++) shape[i] = 1;
        return sigma.reshape(shape);
    }

    /// <summary>
    /// A constant as a 0-dim tensor of <paramref name="like"/>'s dtype and device. Hot paths use it instead of
    /// C# doubles: TorchSharp 0.107 turns a double operand into a Scalar that only a finalizer frees, and the
    /// finalizer can free it while the native op still reads it ("Unknown scalar type" under GC pressure).
    /// A tensor is owned by the current dispose scope, so it stays alive for the whole call.
    /// </summary>
    public static Tensor Const(double value, Tensor like) => torch.tensor(value, dtype: like.dtype, device: like.device);

    /// <summary>A per-sample sigma tensor of shape (B) filled with one value.</summary>
    public static Tensor Full(double sigma, Tensor like) =>
        Const(sigma, like).expand(like.shape[0]).contiguous();
}
