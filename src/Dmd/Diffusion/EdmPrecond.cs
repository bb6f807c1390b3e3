using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// The raw network F of the EDM preconditioning: F(c_in * x, c_noise, labels).
/// Implemented by the MLP for point data and by the U-Nets for images.
/// </summary>
public abstract class EdmBackbone : nn.Module<Tensor, Tensor, Tensor?, Tensor>
{
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

    public EdmPrecond(EdmBackbone model, double sigmaData = 0.5) : base(nameof(EdmPrecond))
    {
        this.model = model;
        SigmaData = sigmaData;
        RegisterComponents();
    }

    /// <summary>The wrapped network F.</summary>
    public EdmBackbone Backbone => model;

    public int LabelDim => model.LabelDim;

    public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null) => forward(x, sigma, labels);

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
