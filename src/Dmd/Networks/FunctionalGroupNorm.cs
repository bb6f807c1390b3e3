using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// <c>torch.nn.GroupNorm</c> (affine, parameters <c>weight</c> and <c>bias</c>, so checkpoints load by the same names)
/// computed with <c>nn.functional.group_norm</c>. TorchSharp 0.107's <c>nn.GroupNorm</c> module gives right forward values
/// but a broken backward on libtorch 2.10 here: the input gradient comes back zero and a layer after it that saves its input
/// (a convolution, a linear layer) sees zeros or NaN in float64 (read after free), so nothing before a GroupNorm module
/// learned. The functional form is right (<c>TextToImageTeacherTests</c> checks its gradients against a hand-written GroupNorm).
/// </summary>
internal sealed class FunctionalGroupNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter bias;
    private readonly long groups;
    private readonly double eps;

    /// <summary>GroupNorm of <paramref name="channels"/> channels in <paramref name="groups"/> groups; weight 1, bias 0 as PyTorch initialises them.</summary>
    public FunctionalGroupNorm(long groups, long channels, double eps = 1e-5, Device? device = null) : base("GroupNorm")
    {
        this.groups = groups;
        this.eps = eps;
        weight = new Parameter(ones(channels, device: device));
        bias = new Parameter(zeros(channels, device: device));
        RegisterComponents();
    }

    /// <summary>Normalises x [B, C, ...] over each group of channels and the remaining dimensions, then scales and shifts per channel.</summary>
    public override Tensor forward(Tensor x) => nn.functional.group_norm(x, groups, weight, bias, eps);
}
