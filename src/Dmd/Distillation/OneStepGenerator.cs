using Dmd.Diffusion;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>
/// The one-step generator G(z, y) = D_gen(sigma_max z, sigma_max, y) (DESIGN.md section 3).
/// Initialised from the teacher, it is at first exactly the teacher's one-step prediction from pure noise.
/// </summary>
public sealed class OneStepGenerator
{
    /// <summary>The generator's denoiser network (trained by DMD).</summary>
    public EdmPrecond Net { get; }
    public double SigmaMax { get; }

    public OneStepGenerator(EdmPrecond net, double sigmaMax = KarrasSchedule.DefaultSigmaMax)
    {
        Net = net;
        SigmaMax = sigmaMax;
    }

    /// <summary>Maps standard normal noise <paramref name="z"/> (and labels) to samples in one network evaluation.</summary>
    public Tensor Generate(Tensor z, Tensor? labels = null) =>
        Net.Denoise(z * DenoiserExtensions.Const(SigmaMax, z), DenoiserExtensions.Full(SigmaMax, z), labels);
}
