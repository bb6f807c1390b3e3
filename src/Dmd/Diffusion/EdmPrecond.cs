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
/// EDM preconditioning (Karras et al. 2022, Table 1; DESIGN.md section 2):
/// <c>D(x) = c_skip x + c_out F(c_in x, c_noise, labels)</c> with
/// c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd / sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
/// c_noise = ln(sigma)/4. The submodule is called <c>model</c> as in EDM's checkpoints.
/// </summary>
public sealed class EdmPrecond : nn.Module<Tensor, Tensor, Tensor?, Tensor>, IDenoiser
{
    private readonly EdmBackbone model;

    /// <summary>sigma_data of the preconditioning (0.5 for images, the data's std for points).</summary>
    public double SigmaData { get; }

    /// <summary>Wraps the raw network <paramref name="model"/> in the preconditioning with sigma_data = <paramref name="sigmaData"/> (0.5 for images in [-1, 1]).</summary>
    public EdmPrecond(EdmBackbone model, double sigmaData = 0.5) : base(nameof(EdmPrecond))
    {
        this.model = model;
        SigmaData = sigmaData;
        RegisterComponents();
    }

    /// <summary>The wrapped network F.</summary>
    public EdmBackbone Backbone => model;

    /// <summary>Number of classes of the wrapped network (0 = unconditional).</summary>
    public int LabelDim => model.LabelDim;

    /// <summary>D(x, sigma, labels): the same as <c>forward</c>.</summary>
    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null) => forward(x, sigma, labels);

    /// <summary>
    /// D(x) = c_skip x + c_out F(c_in x, c_noise, labels), computed in float32: x (B, ...), sigma (B) or a scalar,
    /// labels one-hot (B, LabelDim) or null. Returns the estimate of the clean x0, float32 of x's shape.
    /// </summary>
    public override Tensor forward(Tensor x, Tensor sigma, Tensor? labels)
    {
        using var scope = NewDisposeScope();
        var xf = x.to(ScalarType.Float32);
        var s = sigma.to(ScalarType.Float32);
        if (s.dim() == 0) s = s.expand(x.shape[0]);
        var sd = DenoiserExtensions.Const(SigmaData, xf);
        var sb = DenoiserExtensions.Broadcast(s, xf);
        var v = sb.square() + sd.square();                 // sigma^2 + sd^2
        var cSkip = sd.square() / v;
        var cOut = sb * sd / v.sqrt();
        var cIn = v.rsqrt();
        var cNoise = s.log() / DenoiserExtensions.Const(4, s);
        var f = model.forward(cIn * xf, cNoise, labels);
        return (cSkip * xf + cOut * f).MoveToOuterDisposeScope();
    }
}
