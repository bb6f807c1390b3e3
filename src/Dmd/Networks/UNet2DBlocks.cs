using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

// diffusers' models/unets/unet_2d_blocks.py: the blocks Stable Diffusion v1.5 uses, with diffusers' parameter names
// (resnets.{i}, attentions.{i}, downsamplers.0, upsamplers.0). UNet: CrossAttnDownBlock2D, DownBlock2D,
// UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D. VAE: DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D.

/// <summary>A block of the UNet's encoder: returns the new feature map and appends each of its outputs to the skips.</summary>
internal abstract class UNetDownBlock : nn.Module
{
    protected UNetDownBlock(string name) : base(name) { }

    /// <summary>Runs the block on <paramref name="h"/>; every resnet (and downsampler) output is appended to <paramref name="skips"/>.</summary>
    public abstract Tensor Forward(Tensor h, Tensor temb, Tensor context, List<Tensor> skips);
}

/// <summary>A block of the UNet's decoder: consumes one skip (popped from the end) per resnet.</summary>
internal abstract class UNetUpBlock : nn.Module
{
    protected UNetUpBlock(string name) : base(name) { }

    /// <summary>Runs the block; <paramref name="upsampleSize"/> is the size to upsample to (null: 2x, or no upsampler).</summary>
    public abstract Tensor Forward(Tensor h, List<Tensor> skips, Tensor temb, Tensor context, long[]? upsampleSize);

    internal static Tensor PopSkip(Tensor h, List<Tensor> skips)
    {
        var s = skips[^1];
        skips.RemoveAt(skips.Count - 1);
        return cat(new[] { h, s }, 1);
    }
}

/// <summary>Channel widths and norms shared by a UNet's blocks.</summary>
internal sealed record UNetBlockShape(long TembChannels, int Groups, double Eps, long CrossAttentionDim, Device? Device);

/// <summary>diffusers <c>CrossAttnDownBlock2D</c>: (resnet, transformer) x layers, then a stride-2 downsampler unless last.</summary>
internal sealed class CrossAttnDownBlock2D : UNetDownBlock
{
    private readonly ModuleList<ResnetBlock2D> resnets = new();
    private readonly ModuleList<Transformer2DModel> attentions = new();
    private readonly ModuleList<Downsample2D>? downsamplers;

    public CrossAttnDownBlock2D(long inChannels, long outChannels, int layers, int heads, bool addDownsample, long downsamplePadding, UNetBlockShape s)
        : base(nameof(CrossAttnDownBlock2D))
    {
        for (int i = 0; i < layers; i++)
        {
            resnets.Add(new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, s.TembChannels, s.Groups, s.Eps, s.Device));
            attentions.Add(new Transformer2DModel(heads, outChannels / heads, outChannels, s.CrossAttentionDim, s.Groups, s.Device));
        }
        downsamplers = addDownsample ? nn.ModuleList(new Downsample2D(outChannels, downsamplePadding, s.Device)) : null;
        RegisterComponents();
    }

    public override Tensor Forward(Tensor h, Tensor temb, Tensor context, List<Tensor> skips)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            h = attentions[i].forward(resnets[i].forward(h, temb), context);
            skips.Add(h);
        }
        if (downsamplers is not null)
        {
            h = downsamplers[0].forward(h);
            skips.Add(h);
        }
        return h;
    }
}

/// <summary>diffusers <c>DownBlock2D</c>: resnets only, then a stride-2 downsampler unless last.</summary>
internal sealed class DownBlock2D : UNetDownBlock
{
    private readonly ModuleList<ResnetBlock2D> resnets = new();
    private readonly ModuleList<Downsample2D>? downsamplers;

    public DownBlock2D(long inChannels, long outChannels, int layers, bool addDownsample, long downsamplePadding, UNetBlockShape s)
        : base(nameof(DownBlock2D))
    {
        for (int i = 0; i < layers; i++)
            resnets.Add(new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, s.TembChannels, s.Groups, s.Eps, s.Device));
        downsamplers = addDownsample ? nn.ModuleList(new Downsample2D(outChannels, downsamplePadding, s.Device)) : null;
        RegisterComponents();
    }

    public override Tensor Forward(Tensor h, Tensor temb, Tensor context, List<Tensor> skips)
    {
        foreach (var r in resnets)
        {
            h = r.forward(h, temb);
            skips.Add(h);
        }
        if (downsamplers is not null)
        {
            h = downsamplers[0].forward(h);
            skips.Add(h);
        }
        return h;
    }
}

/// <summary>diffusers <c>UNetMidBlock2DCrossAttn</c> (one transformer layer): resnet, transformer, resnet at constant width.</summary>
internal sealed class UNetMidBlock2DCrossAttn : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Transformer2DModel> attentions;

    public UNetMidBlock2DCrossAttn(long channels, int heads, UNetBlockShape s) : base(nameof(UNetMidBlock2DCrossAttn))
    {
        resnets = nn.ModuleList(
            new ResnetBlock2D(channels, channels, s.TembChannels, s.Groups, s.Eps, s.Device),
            new ResnetBlock2D(channels, channels, s.TembChannels, s.Groups, s.Eps, s.Device));
        attentions = nn.ModuleList(new Transformer2DModel(heads, channels / heads, channels, s.CrossAttentionDim, s.Groups, s.Device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor h, Tensor temb, Tensor context)
    {
        h = resnets[0].forward(h, temb);
        h = attentions[0].forward(h, context);
        return resnets[1].forward(h, temb);
    }
}

/// <summary>
/// diffusers <c>CrossAttnUpBlock2D</c>: (concatenate a skip, resnet, transformer) x layers, then a nearest-2x
/// upsampler unless last. Resnet i takes <c>prev</c> (i = 0) or <c>out</c> channels plus the skip's: <c>in</c> for the
/// last resnet, <c>out</c> for the others.
/// </summary>
internal sealed class CrossAttnUpBlock2D : UNetUpBlock
{
    private readonly ModuleList<ResnetBlock2D> resnets = new();
    private readonly ModuleList<Transformer2DModel> attentions = new();
    private readonly ModuleList<Upsample2D>? upsamplers;

    public CrossAttnUpBlock2D(long inChannels, long outChannels, long prevOutputChannels, int layers, int heads, bool addUpsample, UNetBlockShape s)
        : base(nameof(CrossAttnUpBlock2D))
    {
        for (int i = 0; i < layers; i++)
        {
            long skip = i == layers - 1 ? inChannels : outChannels, cin = i == 0 ? prevOutputChannels : outChannels;
            resnets.Add(new ResnetBlock2D(cin + skip, outChannels, s.TembChannels, s.Groups, s.Eps, s.Device));
            attentions.Add(new Transformer2DModel(heads, outChannels / heads, outChannels, s.CrossAttentionDim, s.Groups, s.Device));
        }
        upsamplers = addUpsample ? nn.ModuleList(new Upsample2D(outChannels, s.Device)) : null;
        RegisterComponents();
    }

    public override Tensor Forward(Tensor h, List<Tensor> skips, Tensor temb, Tensor context, long[]? upsampleSize)
    {
        for (int i = 0; i < resnets.Count; i++)
            h = attentions[i].forward(resnets[i].forward(PopSkip(h, skips), temb), context);
        return upsamplers is null ? h : upsamplers[0].forward(h, upsampleSize);
    }
}

/// <summary>diffusers <c>UpBlock2D</c>: (concatenate a skip, resnet) x layers, then a nearest-2x upsampler unless last.</summary>
internal sealed class UpBlock2D : UNetUpBlock
{
    private readonly ModuleList<ResnetBlock2D> resnets = new();
    private readonly ModuleList<Upsample2D>? upsamplers;

    public UpBlock2D(long inChannels, long outChannels, long prevOutputChannels, int layers, bool addUpsample, UNetBlockShape s)
        : base(nameof(UpBlock2D))
    {
        for (int i = 0; i < layers; i++)
        {
            long skip = i == layers - 1 ? inChannels : outChannels, cin = i == 0 ? prevOutputChannels : outChannels;
            resnets.Add(new ResnetBlock2D(cin + skip, outChannels, s.TembChannels, s.Groups, s.Eps, s.Device));
        }
        upsamplers = addUpsample ? nn.ModuleList(new Upsample2D(outChannels, s.Device)) : null;
        RegisterComponents();
    }

    public override Tensor Forward(Tensor h, List<Tensor> skips, Tensor temb, Tensor context, long[]? upsampleSize)
    {
        foreach (var r in resnets) h = r.forward(PopSkip(h, skips), temb);
        return upsamplers is null ? h : upsamplers[0].forward(h, upsampleSize);
    }
}

/// <summary>diffusers <c>DownEncoderBlock2D</c> (VAE encoder): resnets without time embedding, then a padded stride-2 downsampler unless last.</summary>
internal sealed class DownEncoderBlock2D : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<ResnetBlock2D> resnets = new();
    private readonly ModuleList<Downsample2D>? downsamplers;

    public DownEncoderBlock2D(long inChannels, long outChannels, int layers, bool addDownsample, int groups, Device? device)
        : base(nameof(DownEncoderBlock2D))
    {
        for (int i = 0; i < layers; i++)
            resnets.Add(new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, null, groups, 1e-6, device));
        downsamplers = addDownsample ? nn.ModuleList(new Downsample2D(outChannels, padding: 0, device)) : null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        using var scope = NewDisposeScope();
        foreach (var r in resnets) h = r.forward(h, null);
        return (downsamplers is null ? h : downsamplers[0].forward(h)).MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers <c>UpDecoderBlock2D</c> (VAE decoder): resnets without time embedding, then a nearest-2x upsampler unless last.</summary>
internal sealed class UpDecoderBlock2D : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<ResnetBlock2D> resnets = new();
    private readonly ModuleList<Upsample2D>? upsamplers;

    public UpDecoderBlock2D(long inChannels, long outChannels, int layers, bool addUpsample, int groups, Device? device)
        : base(nameof(UpDecoderBlock2D))
    {
        for (int i = 0; i < layers; i++)
            resnets.Add(new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, null, groups, 1e-6, device));
        upsamplers = addUpsample ? nn.ModuleList(new Upsample2D(outChannels, device)) : null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        using var scope = NewDisposeScope();
        foreach (var r in resnets) h = r.forward(h, null);
        return (upsamplers is null ? h : upsamplers[0].forward(h, null)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// diffusers <c>UNetMidBlock2D</c> as the VAE uses it: resnet, single-head self-attention over the pixels
/// (GroupNorm first, residual; <c>attention_head_dim</c> = the width), resnet; no time embedding, eps 1e-6.
/// </summary>
internal sealed class UNetMidBlock2D : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Attention> attentions;

    public UNetMidBlock2D(long channels, int groups, Device? device) : base(nameof(UNetMidBlock2D))
    {
        resnets = nn.ModuleList(
            new ResnetBlock2D(channels, channels, null, groups, 1e-6, device),
            new ResnetBlock2D(channels, channels, null, groups, 1e-6, device));
        attentions = nn.ModuleList(new Attention(channels, null, heads: 1, dimHead: channels, bias: true, normGroups: groups, eps: 1e-6,
            residualConnection: true, device: device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        h = resnets[0].forward(h, null);
        h = attentions[0].forward(h, null);
        return resnets[1].forward(h, null);
    }
}
