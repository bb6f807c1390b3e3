using Dmd.Diffusion;

namespace Dmd.Networks;

/// <summary>
/// Everything needed to rebuild a network from its checkpoint: saved as JSON beside the weights.
/// </summary>
/// <param name="Kind">Architecture: "mlp" (vector data).</param>
/// <param name="Shape">Shape of one sample without the batch dimension, e.g. [2] for 2-D points.</param>
/// <param name="LabelDim">Number of classes (0 = unconditional).</param>
/// <param name="SigmaData">sigma_data of the EDM preconditioning.</param>
/// <param name="Width">Hidden width (mlp).</param>
/// <param name="Depth">Number of residual blocks (mlp).</param>
public sealed record NetworkSpec(
    string Kind = "mlp",
    int[]? Shape = null,
    int LabelDim = 0,
    double SigmaData = 0.5,
    int Width = 256,
    int Depth = 4)
{
    public int[] SampleShape => Shape ?? new[] { 2 };

    /// <summary>Builds the preconditioned denoiser this spec describes (freshly initialised).</summary>
    public EdmPrecond Build() => Kind switch
    {
        "mlp" when SampleShape.Length == 1 => new EdmPrecond(new MlpBackbone(SampleShape[0], Width, Depth, LabelDim), SigmaData),
        "mlp" => throw new ArgumentException($"the mlp network takes vectors, not samples of shape [{string.Join(",", SampleShape)}]"),
        _ => throw new ArgumentException($"unknown network kind '{Kind}'"),
    };
}
