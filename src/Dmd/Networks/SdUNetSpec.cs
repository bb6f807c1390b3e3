using Dmd.Diffusion;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// The training schedule of an eps-prediction teacher as a spec records it (diffusers' scheduler_config.json fields):
/// <see cref="DiscreteVpSchedule"/> rebuilt from it. The sampling timestep spacing is not part of it: DMD and the
/// distilled generator use the training timesteps.
/// </summary>
public sealed record VpScheduleSpec(int NumTrainTimesteps = 1000, string BetaSchedule = "scaled_linear", double BetaStart = 0.00085, double BetaEnd = 0.012)
{
    /// <summary>The fields of <paramref name="s"/>.</summary>
    public static VpScheduleSpec Of(DiscreteVpSchedule s) => new(s.NumTrainTimesteps, s.BetaSchedule, s.BetaStart, s.BetaEnd);

    /// <summary>The schedule these fields describe.</summary>
    public DiscreteVpSchedule Build() => new(NumTrainTimesteps, BetaSchedule, BetaStart, BetaEnd);
}

/// <summary>
/// A Stable-Diffusion-style latent denoiser: diffusers' <see cref="UNet2DConditionModel"/> (eps prediction on a discrete
/// VP schedule, conditioned on text contexts) in the VP preconditioning of <see cref="EdmPrecond(EdmBackbone, DiscreteVpSchedule)"/>,
/// so that DMD trains its fake denoiser and generator as it trains EDM networks. <see cref="NetworkSpec.Shape"/> is the
/// latent shape [C, H, W], <see cref="NetworkSpec.LabelDim"/> the condition's channels (the UNet's cross_attention_dim),
/// sigma_data 1. Kind "sd-unet".
/// </summary>
public sealed record SdUNetSpec : NetworkSpec
{
    /// <summary>The UNet's architecture (diffusers' config, as <see cref="UNet2DConditionConfig.Load"/> reads it).</summary>
    public UNet2DConditionConfig UNet { get; init; } = new();

    /// <summary>The teacher's training schedule.</summary>
    public VpScheduleSpec Schedule { get; init; } = new();

    /// <summary>The spec of a loaded UNet on its schedule: latents [in_channels, sample_size, sample_size] unless <paramref name="latentSize"/> is given.</summary>
    public static SdUNetSpec For(UNet2DConditionModel unet, DiscreteVpSchedule schedule, int? latentSize = null)
    {
        int size = latentSize ?? unet.Config.SampleSize;
        return new SdUNetSpec
        {
            Shape = new[] { unet.Config.InChannels, size, size },
            LabelDim = unet.Config.CrossAttentionDim,
            SigmaData = 1.0,
            UNet = unet.Config,
            Schedule = VpScheduleSpec.Of(schedule),
        };
    }

    /// <summary>The UNet (freshly initialised) wrapped for the VP preconditioning.</summary>
    public override EdmBackbone BuildBackbone() => new SdUNetBackbone(new UNet2DConditionModel(UNet), SampleShape);

    /// <summary>The VP-preconditioned denoiser on <see cref="Schedule"/>.</summary>
    public override EdmPrecond Build() => new(BuildBackbone(), Schedule.Build());

    /// <summary>Value equality, the UNet's arrays compared element by element.</summary>
    public bool Equals(SdUNetSpec? other) =>
        base.Equals(other) && Schedule == other!.Schedule &&
        System.Text.Json.JsonSerializer.Serialize(UNet) == System.Text.Json.JsonSerializer.Serialize(other.UNet);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(base.GetHashCode(), Schedule, UNet.BlockOutChannels.Length);

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Kind} latents [{string.Join(",", SampleShape)}], context {LabelDim}, blocks {List(UNet.BlockOutChannels)}, " +
        $"{Schedule.BetaSchedule} {Schedule.BetaStart:G}..{Schedule.BetaEnd:G} over {Schedule.NumTrainTimesteps} steps";
}

/// <summary>
/// A <see cref="UNet2DConditionModel"/> as the raw network F of <see cref="EdmPrecond"/>'s VP preconditioning:
/// F(c_in x, c_noise = t(sigma), context) = eps. The condition (<c>labels</c>) is the text context (B, tokens, C).
/// Its features for a GAN head are the UNet's bottleneck (the mid block's output), as in DMD2's Stable Diffusion code.
/// </summary>
public sealed class SdUNetBackbone : EdmBackbone, IFeatureBackbone
{
    private readonly UNet2DConditionModel unet;
    private readonly int[] sampleShape;

    /// <summary>Wraps <paramref name="unet"/> for latents of shape <paramref name="sampleShape"/> [C, H, W].</summary>
    public SdUNetBackbone(UNet2DConditionModel unet, int[] sampleShape) : base(nameof(SdUNetBackbone))
    {
        this.unet = unet;
        this.sampleShape = sampleShape;
        RegisterComponents();
    }

    /// <summary>The wrapped UNet (its parameters are diffusers' names under <c>unet.</c>).</summary>
    public UNet2DConditionModel UNet => unet;

    /// <summary>The condition's channels: the UNet's cross_attention_dim.</summary>
    public override int LabelDim => unet.Config.CrossAttentionDim;

    /// <summary>eps of the VP-scaled latents <paramref name="x"/> at timesteps <paramref name="t"/> for contexts <paramref name="labels"/>.</summary>
    public override Tensor forward(Tensor x, Tensor t, Tensor? labels) =>
        unet.forward(x, t, labels ?? throw new ArgumentException("a text-conditioned UNet needs its condition (the text context) as labels"));

    /// <summary>The mid block's output shape for one sample.</summary>
    public long[] FeatureShape => unet.BottleneckShape(sampleShape[1], sampleShape[2]);

    /// <summary>The UNet's bottleneck for F's inputs.</summary>
    public Tensor Features(Tensor x, Tensor cNoise, Tensor? labels) =>
        unet.Bottleneck(x, cNoise, labels ?? throw new ArgumentException("a text-conditioned UNet needs its condition (the text context) as labels"));
}
