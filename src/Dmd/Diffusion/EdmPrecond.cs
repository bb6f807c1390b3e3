using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// The raw network F of the EDM preconditioning: F(c_in * x, c_noise, labels).
/// Implemented by the MLP for point data and by the U-Nets for images.
/// </summary>
public abstract class EdmBackbone : nn.Module<Tensor, Tensor, Tensor?, Tensor>
{
    /// <summary>Creates the module under the TorchSharp module name <paramref name="name"/>.</summary>
    protected EdmBackbone(string name) : base(name) { }

    /// <summary>Number of classes (0 = unconditional).</summary>
    public abstract int LabelDim { get; }
}

/// <summary>
/// A raw network F that exposes internal features, for a discriminator head on the fake denoiser (DMD2's
/// <c>gan_classifier</c>): the U-Nets' bottleneck (the encoder's output, what DMD2's <c>return_bottleneck</c> gives),
/// the MLP's last hidden layer. Reached through <see cref="EdmPrecond.Features"/>, which applies the preconditioning.
/// </summary>
public interface IFeatureBackbone
{
    /// <summary>Shape of one sample's features (no batch dimension): (C, r, r) for a U-Net, (width) for the MLP.</summary>
    long[] FeatureShape { get; }

    /// <summary>The features for F's inputs: x already scaled by c_in, c_noise (B), one-hot labels (B, LabelDim) or null.</summary>
    Tensor Features(Tensor x, Tensor cNoise, Tensor? labels);
}

/// <summary>
/// A raw network F with features at several levels (the U-Nets: every resolution of encoder and decoder), for a
/// discriminator with a head on each (not in DMD2). Reached through <see cref="EdmPrecond.LevelFeatures"/>.
/// </summary>
public interface ILevelFeatureBackbone
{
    /// <summary>The shapes of one sample's features at each level, in the order <see cref="LevelFeatures"/> gives them.</summary>
    long[][] LevelFeatureShapes();

    /// <summary>The features at each level for F's inputs: x already scaled by c_in, c_noise (B), one-hot labels or null.</summary>
    Tensor[] LevelFeatures(Tensor x, Tensor cNoise, Tensor? labels);
}

/// <summary>
/// EDM preconditioning (Karras et al. 2022, Table 1; DESIGN.md section 2):
/// <c>D(x) = c_skip x + c_out F(c_in x, c_noise, labels)</c> with
/// c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd / sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
/// c_noise = ln(sigma)/4. The submodule is called <c>model</c> as in EDM's checkpoints.
/// </summary>
public sealed class EdmPrecond : nn.Module<Tensor, Tensor, Tensor?, Tensor>, IDenoiser
{
    private readonly EdmBackbone model;

    /// <summary>sigma_data of the preconditioning (0.5 for images, the data's std for points; 1 for a VP teacher's latents).</summary>
    public double SigmaData { get; }

    /// <summary>
    /// The discrete VP schedule of an eps-prediction network (Stable Diffusion's UNet), or null for EDM's preconditioning.
    /// With it the preconditioning is EDM's VP one on that schedule: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1),
    /// c_noise = t(sigma) (<see cref="DiscreteVpSchedule.TimestepOf"/>), i.e. <c>D = x - sigma eps(x/sqrt(1 + sigma^2), t(sigma), c)</c>,
    /// what <see cref="EpsPredictionDenoiser"/> computes, as a trainable module.
    /// </summary>
    public DiscreteVpSchedule? Schedule { get; }

    /// <summary>Wraps the raw network <paramref name="model"/> in the preconditioning with sigma_data = <paramref name="sigmaData"/> (0.5 for images in [-1, 1]).</summary>
    public EdmPrecond(EdmBackbone model, double sigmaData = 0.5) : base(nameof(EdmPrecond))
    {
        this.model = model;
        SigmaData = sigmaData;
        RegisterComponents();
    }

    /// <summary>
    /// Wraps an eps-prediction network <paramref name="model"/> trained on <paramref name="schedule"/> (Stable Diffusion's
    /// UNet) in the VP preconditioning (<see cref="Schedule"/>); sigma_data 1 (SD's latents are scaled to unit variance).
    /// </summary>
    public EdmPrecond(EdmBackbone model, DiscreteVpSchedule schedule) : this(model, 1.0) => Schedule = schedule;

    /// <summary>The wrapped network F.</summary>
    public EdmBackbone Backbone => model;

    /// <summary>Number of classes of the wrapped network (0 = unconditional).</summary>
    public int LabelDim => model.LabelDim;

    /// <summary>The device of the network's weights (where <c>Module.to</c> last moved it).</summary>
    public Device Device => parameters().FirstOrDefault()?.device ?? CPU;

    /// <summary>D(x, sigma, labels): the same as <c>forward</c>.</summary>
    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null) => forward(x, sigma, labels);

    /// <summary>
    /// D(x) = c_skip x + c_out F(c_in x, c_noise, labels), computed in float32: x (B, ...), sigma (B) or a scalar,
    /// labels one-hot (B, LabelDim) or null. Returns the estimate of the clean x0, float32 of x's shape.
    /// </summary>
    public override Tensor forward(Tensor x, Tensor sigma, Tensor? labels)
    {
        using var scope = NewDisposeScope();
        var (xf, cSkip, cOut, cIn, cNoise) = Coefficients(x, sigma);
        var f = model.forward(cIn * xf, cNoise, labels);
        return (cSkip * xf + cOut * f).MoveToOuterDisposeScope();
    }

    /// <summary>Shape of one sample's features (see <see cref="Features"/>), or null when the wrapped network exposes none.</summary>
    public long[]? FeatureShape => (model as IFeatureBackbone)?.FeatureShape;

    /// <summary>
    /// The wrapped network's features at the preconditioned input: <c>F.Features(c_in x, c_noise, labels)</c> (float32,
    /// (B, ...<see cref="FeatureShape"/>)), what DMD2's fake denoiser returns with <c>return_bottleneck=True</c>.
    /// A network without features (not an <see cref="IFeatureBackbone"/>) is a <see cref="DmdInputException"/>.
    /// </summary>
    public Tensor Features(Tensor x, Tensor sigma, Tensor? labels)
    {
        if (model is not IFeatureBackbone fb)
            throw new DmdInputException($"the {model.GetType().Name} network exposes no features for a GAN head; use an mlp, ddpmpp or adm network or set gan-weight 0");
        using var scope = NewDisposeScope();
        var (xf, _, _, cIn, cNoise) = Coefficients(x, sigma);
        return fb.Features(cIn * xf, cNoise, labels).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The wrapped network's features at every level (<see cref="ILevelFeatureBackbone"/>: the EDM U-Nets) at the
    /// preconditioned input <c>c_in x</c>, c_noise: what a discriminator with a head on each level reads (the GAN probe).
    /// </summary>
    public Tensor[] LevelFeatures(Tensor x, Tensor sigma, Tensor? labels)
    {
        if (model is not ILevelFeatureBackbone lb)
            throw new DmdInputException($"the {model.GetType().Name} network has no feature levels; heads on every level need a ddpmpp or adm U-Net");
        using var scope = NewDisposeScope();
        var (xf, _, _, cIn, cNoise) = Coefficients(x, sigma);
        return lb.LevelFeatures(cIn * xf, cNoise, labels).Select(t => t.MoveToOuterDisposeScope()).ToArray();
    }

    /// <summary>
    /// The weight of the denoising loss |D - x0|^2 at noise levels <paramref name="sigma"/> (any shape): EDM's
    /// lambda = 1/sigma^2 + 1/sd^2, or for a VP eps-prediction network 1/sigma^2, which makes it the eps MSE
    /// |eps_hat - n|^2 that Stable Diffusion (and DMD's fake score for it) trains with.
    /// </summary>
    public Tensor LossWeight(Tensor sigma) => Schedule is null ? EdmLoss.Weight(sigma, SigmaData) : sigma.square().reciprocal();

    /// <summary>x as float32 and c_skip, c_out, c_in (broadcast over x) and c_noise (B) for noise levels sigma (B) or a scalar.</summary>
    (Tensor X, Tensor CSkip, Tensor COut, Tensor CIn, Tensor CNoise) Coefficients(Tensor x, Tensor sigma)
    {
        var xf = x.to(ScalarType.Float32);
        var s = sigma.to(ScalarType.Float32);
        if (s.dim() == 0) s = s.expand(x.shape[0]);
        if (Schedule is not null)
        {
            var sbv = DenoiserExtensions.Broadcast(s, xf);
            var one = DenoiserExtensions.Const(1, xf);
            return (xf, one, -sbv, (sbv.square() + one).rsqrt(), Schedule.Timesteps(s));
        }
        var sd = DenoiserExtensions.Const(SigmaData, xf);
        var sb = DenoiserExtensions.Broadcast(s, xf);
        var v = sb.square() + sd.square();                 // sigma^2 + sd^2
        var cSkip = sd.square() / v;
        var cOut = sb * sd / v.sqrt();
        var cIn = v.rsqrt();
        var cNoise = s.log() / DenoiserExtensions.Const(4, s);
        return (xf, cSkip, cOut, cIn, cNoise);
    }
}
