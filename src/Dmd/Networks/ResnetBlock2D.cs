using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

// diffusers' models/resnet.py and upsampling.py/downsampling.py, as Stable Diffusion v1.5's UNet and VAE use them
// (SiLU, "default" time-embedding norm, output scale 1), with diffusers' parameter names.

/// <summary>
/// diffusers <c>ResnetBlock2D</c>: GroupNorm-SiLU-conv3x3, plus the projected time embedding when there is one
/// (<c>time_emb_proj</c>; the VAE has none), GroupNorm-SiLU-conv3x3, and a 1x1 <c>conv_shortcut</c> when the width changes.
/// </summary>
internal sealed class ResnetBlock2D : nn.Module<Tensor, Tensor?, Tensor>
{
    private readonly FunctionalGroupNorm norm1;
    private readonly Conv2d conv1;
    private readonly Linear? time_emb_proj;
    private readonly FunctionalGroupNorm norm2;
    private readonly Conv2d conv2;
    private readonly Conv2d? conv_shortcut;

    public ResnetBlock2D(long inChannels, long outChannels, long? tembChannels, int groups, double eps, Device? device = null)
        : base(nameof(ResnetBlock2D))
    {
        norm1 = new FunctionalGroupNorm(groups, inChannels, eps, device: device);
        conv1 = nn.Conv2d(inChannels, outChannels, 3, padding: 1, device: device);
        time_emb_proj = tembChannels is long t ? nn.Linear(t, outChannels, device: device) : null;
        norm2 = new FunctionalGroupNorm(groups, outChannels, eps, device: device);
        conv2 = nn.Conv2d(outChannels, outChannels, 3, padding: 1, device: device);
        conv_shortcut = inChannels != outChannels ? nn.Conv2d(inChannels, outChannels, 1, device: device) : null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor? temb)
    {
        using var scope = NewDisposeScope();   // frees the intermediates (autograd keeps what it needs)
        var h = conv1.forward(nn.functional.silu(norm1.forward(x)));
        if (time_emb_proj is not null && temb is not null)
            h = h + time_emb_proj.forward(nn.functional.silu(temb)).unsqueeze(-1).unsqueeze(-1);
        h = conv2.forward(nn.functional.silu(norm2.forward(h)));   // dropout 0 in SD v1.5
        return ((conv_shortcut is null ? x : conv_shortcut.forward(x)) + h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// diffusers <c>Downsample2D</c> with a convolution: 3x3, stride 2. <c>padding</c> 1 in the UNet; 0 in the VAE,
/// where the input is first padded by one zero row and column at the bottom and right (asymmetric, as in LDM).
/// </summary>
internal sealed class Downsample2D : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv;
    private readonly long padding;

    public Downsample2D(long channels, long padding, Device? device = null) : base(nameof(Downsample2D))
    {
        this.padding = padding;
        conv = nn.Conv2d(channels, channels, 3, stride: 2, padding: padding, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (padding == 0)
        {
            using var padded = nn.functional.pad(x, new long[] { 0, 1, 0, 1 });
            return conv.forward(padded);
        }
        return conv.forward(x);
    }
}

/// <summary>
/// diffusers <c>Upsample2D</c> with a convolution: nearest-neighbour 2x (or to <c>size</c>, the skip connection's size
/// when the input's size was odd), then a 3x3 convolution.
/// </summary>
internal sealed class Upsample2D : nn.Module<Tensor, long[]?, Tensor>
{
    private readonly Conv2d conv;

    public Upsample2D(long channels, Device? device = null) : base(nameof(Upsample2D))
    {
        conv = nn.Conv2d(channels, channels, 3, padding: 1, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, long[]? size)
    {
        using var up = size is null
            ? nn.functional.interpolate(x, scale_factor: new[] { 2.0, 2.0 }, mode: InterpolationMode.Nearest)
            : nn.functional.interpolate(x, size: size, mode: InterpolationMode.Nearest);
        return conv.forward(up);
    }
}
