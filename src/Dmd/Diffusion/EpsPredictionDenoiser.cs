using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// A noise-prediction network of a discrete VP schedule: <c>eps(x_vp, t, c)</c> with <c>x_vp</c> the VP-scaled input
/// (B, ...), <c>t</c> the timesteps (B) on the 0..N-1 scale (float, fractional allowed) and <c>c</c> the condition
/// (a text context (B, tokens, C) for Stable Diffusion's UNet).
/// </summary>
public delegate Tensor EpsPrediction(Tensor x, Tensor t, Tensor condition);

/// <summary>
/// An eps-prediction teacher (Stable Diffusion's UNet on its <see cref="DiscreteVpSchedule"/>) seen as an EDM denoiser, so
/// that the project's samplers, guidance and DMD loss use it unchanged (DESIGN.md, "Text-to-image"):
/// <c>D(x, sigma, c) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma), c)</c> for <c>x = x0 + sigma n</c>.
/// This is diffusers' x0 prediction: its <c>scale_model_input</c> divides the VE sample by sqrt(sigma^2 + 1) and its
/// Euler step forms <c>sample - sigma * eps</c>. <c>t(sigma)</c> is <see cref="DiscreteVpSchedule.TimestepOf"/>
/// (log-sigma interpolation), except at sigmas pinned by <see cref="PinTimesteps"/>: there the scheduler's own timestep is
/// used, as diffusers' scheduler indexes its timesteps instead of inverting its sigmas.
/// The condition travels as the <see cref="IDenoiser"/> labels: <c>labels</c> = the text context (B, tokens, C).
/// </summary>
public sealed class EpsPredictionDenoiser : IDenoiser
{
    private readonly EpsPrediction eps;
    private readonly Dictionary<float, double> pinned = new();

    /// <summary>Wraps <paramref name="eps"/> on <paramref name="schedule"/>.</summary>
    /// <param name="eps">The network.</param>
    /// <param name="schedule">Its training schedule (timesteps and sigmas).</param>
    /// <param name="conditionDim">Channels of the condition (the UNet's cross_attention_dim); reported as <see cref="LabelDim"/>.</param>
    /// <param name="device">Where the network computes.</param>
    public EpsPredictionDenoiser(EpsPrediction eps, DiscreteVpSchedule schedule, int conditionDim, Device? device = null)
    {
        this.eps = eps;
        Schedule = schedule;
        LabelDim = conditionDim;
        Device = device ?? CPU;
    }

    /// <summary>The teacher's training schedule.</summary>
    public DiscreteVpSchedule Schedule { get; }

    /// <summary>Channels of the condition (for a text-conditioned UNet its cross_attention_dim; &gt; 0 means conditional).</summary>
    public int LabelDim { get; }

    /// <summary>Where the network computes.</summary>
    public Device Device { get; }

    /// <summary>
    /// Uses timestep <c>timesteps[i]</c> for noise level <c>sigmas[i]</c> (compared in float32, as samplers pass sigmas)
    /// instead of <see cref="DiscreteVpSchedule.TimestepOf"/>: a sampler on <see cref="DiscreteVpSchedule.SamplingSigmas"/>
    /// then calls the network with exactly the timesteps diffusers' EulerDiscreteScheduler passes.
    /// </summary>
    public EpsPredictionDenoiser PinTimesteps(IReadOnlyList<double> sigmas, IReadOnlyList<double> timesteps)
    {
        for (int i = 0; i < timesteps.Count; i++) pinned[(float)sigmas[i]] = timesteps[i];
        return this;
    }

    /// <summary>The network's timestep for each noise level of <paramref name="sigma"/> (B), as float32 on sigma's device.</summary>
    public Tensor Timesteps(Tensor sigma)
    {
        if (pinned.Count == 0) return Schedule.Timesteps(sigma);
        var s = sigma.to(ScalarType.Float64).cpu().data<double>().ToArray();
        var t = s.Select(v => pinned.TryGetValue((float)v, out var p) ? p : Schedule.TimestepOf(v)).ToArray();
        return torch.tensor(t, dtype: ScalarType.Float32, device: sigma.device);
    }

    /// <summary>D(x, sigma, c) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma), c), in x's dtype.</summary>
    /// <param name="x">Noisy latents x0 + sigma n, (B, C, H, W).</param>
    /// <param name="sigma">Noise levels (B) or a scalar.</param>
    /// <param name="labels">The condition (B, tokens, C): required.</param>
    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
    {
        if (labels is null) throw new ArgumentException("an eps-prediction teacher needs its condition (the text context) as labels");
        using var scope = NewDisposeScope();
        var s = (sigma.dim() == 0 ? sigma.expand(x.shape[0]) : sigma).to(x.dtype);
        var sb = DenoiserExtensions.Broadcast(s, x);
        var e = eps(x / (sb.square() + DenoiserExtensions.Const(1, x)).sqrt(), Timesteps(s), labels);   // scale_model_input
        return (x - sb * e.to(x.dtype)).MoveToOuterDisposeScope();
    }
}
