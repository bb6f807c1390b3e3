using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

// The low-level layers of NVlabs/edm training/networks.py (Linear, Conv2d, GroupNorm and the unified
// weight initialisation), with EDM's parameter and buffer names so that converted EDM checkpoints
// load by name. Prefixed "Edm" only to keep them apart from TorchSharp's own nn.Linear etc.

/// <summary>EDM's <c>weight_init</c> modes.</summary>
internal enum InitMode { XavierUniform, XavierNormal, KaimingUniform, KaimingNormal }

/// <summary>
/// One of EDM's init dictionaries (<c>init</c>, <c>init_zero</c>, <c>init_attn</c>): a mode and the
/// scales applied to the sampled weight and bias (<c>init_weight</c>, <c>init_bias</c>).
/// </summary>
internal sealed record EdmInit(InitMode Mode = InitMode.KaimingNormal, double Weight = 1, double Bias = 0)
{
    /// <summary>EDM's defaults: kaiming_normal, init_weight 1, init_bias 0.</summary>
    public static readonly EdmInit Default = new();

    /// <summary>
    /// <c>weight_init(shape, mode, fan_in, fan_out) * scale</c>. Sampled in place, so building a
    /// 300 M-parameter network allocates each tensor once.
    /// </summary>
    internal static Tensor Sample(long[] shape, InitMode mode, long fanIn, long fanOut, double scale)
    {
        if (scale == 0) return zeros(shape);
        return mode switch
        {
            InitMode.XavierUniform => rand(shape).mul_(2).sub_(1).mul_(Math.Sqrt(6.0 / (fanIn + fanOut)) * scale),
            InitMode.XavierNormal => randn(shape).mul_(Math.Sqrt(2.0 / (fanIn + fanOut)) * scale),
            InitMode.KaimingUniform => rand(shape).mul_(2).sub_(1).mul_(Math.Sqrt(3.0 / fanIn) * scale),
            InitMode.KaimingNormal => randn(shape).mul_(Math.Sqrt(1.0 / fanIn) * scale),
            _ => throw new ArgumentOutOfRangeException(nameof(mode)),
        };
    }

    internal Parameter NewWeight(long[] shape, long fanIn, long fanOut) =>
        new(Sample(shape, Mode, fanIn, fanOut, Weight));

    internal Parameter NewBias(long size, long fanIn, long fanOut) =>
        new(Sample(new[] { size }, Mode, fanIn, fanOut, Bias));
}

/// <summary>EDM <c>Linear</c>: fully-connected layer, weight (out, in), optional bias (out).</summary>
internal sealed class EdmLinear : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter? bias;

    public EdmLinear(long inFeatures, long outFeatures, bool bias = true, EdmInit? init = null) : base(nameof(EdmLinear))
    {
        init ??= EdmInit.Default;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        weight = init.NewWeight(new[] { outFeatures, inFeatures }, inFeatures, outFeatures);
        this.bias = bias ? init.NewBias(outFeatures, inFeatures, outFeatures) : null;
        RegisterComponents();
    }

    public long InFeatures { get; }
    public long OutFeatures { get; }

    public override Tensor forward(Tensor x)
    {
        var y = nn.functional.linear(x, weight, bias);
        if (FlopCounter.On) FlopCounter.Add(2 * y.numel() * InFeatures, x, weight);
        return y;
    }
}

/// <summary>
/// EDM <c>Conv2d</c>: square convolution with optional 2x up/downsampling by a separable FIR filter.
/// <c>kernel = 0</c> gives a pure resampling layer (no weight, no bias). The filter is the persistent
/// buffer <c>resample_filter</c> of shape (1, 1, k, k), present only where up or down is set.
/// </summary>
internal sealed class EdmConv2d : nn.Module<Tensor, Tensor>
{
    private readonly Parameter? weight;
    private readonly Parameter? bias;
    private readonly Tensor? resample_filter;
    private readonly bool up, down, fusedResample;

    public EdmConv2d(long inChannels, long outChannels, int kernel, bool bias = true, bool up = false, bool down = false,
        double[]? resampleFilter = null, bool fusedResample = false, EdmInit? init = null) : base(nameof(EdmConv2d))
    {
        if (up && down) throw new ArgumentException("a convolution cannot both upsample and downsample");
        init ??= EdmInit.Default;
        InChannels = inChannels;
        OutChannels = outChannels;
        this.up = up;
        this.down = down;
        this.fusedResample = fusedResample;
        long fanIn = inChannels * kernel * kernel, fanOut = outChannels * kernel * kernel;
        weight = kernel > 0 ? init.NewWeight(new[] { outChannels, inChannels, kernel, kernel }, fanIn, fanOut) : null;
        this.bias = kernel > 0 && bias ? init.NewBias(outChannels, fanIn, fanOut) : null;
        if (up || down)
        {
            var f = tensor(resampleFilter ?? new[] { 1.0, 1.0 }, ScalarType.Float32);
            resample_filter = f.outer(f).unsqueeze(0).unsqueeze(1).div_(f.sum().square());
        }
        RegisterComponents();
    }

    public long InChannels { get; }
    public long OutChannels { get; }

    public override Tensor forward(Tensor x)
    {
        var w = weight;
        var f = resample_filter;
        long wPad = w is null ? 0 : w.shape[^1] / 2;
        long fPad = f is null ? 0 : (f.shape[^1] - 1) / 2;
        var two = new long[] { 2, 2 };

        if (fusedResample && up && w is not null)
        {
            x = nn.functional.conv_transpose2d(x, f!.mul(4).tile(new[] { InChannels, 1, 1, 1 }), groups: InChannels,
                strides: two, padding: Pad(Math.Max(fPad - wPad, 0)));
            x = Conv(x, w, Pad(Math.Max(wPad - fPad, 0)));
        }
        else if (fusedResample && down && w is not null)
        {
            x = Conv(x, w, Pad(wPad + fPad));
            x = nn.functional.conv2d(x, f!.tile(new[] { OutChannels, 1, 1, 1 }), groups: OutChannels, strides: two);
        }
        else
        {
            if (up)
                x = nn.functional.conv_transpose2d(x, f!.mul(4).tile(new[] { InChannels, 1, 1, 1 }), groups: InChannels,
                    strides: two, padding: Pad(fPad));
            if (down)
                x = nn.functional.conv2d(x, f!.tile(new[] { InChannels, 1, 1, 1 }), groups: InChannels,
                    strides: two, padding: Pad(fPad));
            if (w is not null)
                x = Conv(x, w, Pad(wPad));
        }
        if (bias is not null)
            x = x + bias.reshape(1, -1, 1, 1);
        return x;
    }

    private static long[] Pad(long p) => new[] { p, p };

    /// <summary>The layer's own convolution, counted by <see cref="FlopCounter"/> when it counts.</summary>
    private static Tensor Conv(Tensor x, Tensor w, long[] padding)
    {
        var y = nn.functional.conv2d(x, w, padding: padding);
        if (FlopCounter.On) FlopCounter.Add(2 * y.numel() * w.shape[1] * w.shape[2] * w.shape[3], x, w);
        return y;
    }
}

/// <summary>
/// EDM <c>GroupNorm</c>: <c>min(num_groups, C / min_channels_per_group)</c> groups (32 and 4 by default),
/// so narrow layers get fewer, wider groups than a plain GroupNorm(32, C).
/// </summary>
internal sealed class EdmGroupNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter bias;
    private readonly double eps;

    public EdmGroupNorm(long numChannels, int numGroups = 32, int minChannelsPerGroup = 4, double eps = 1e-5) : base(nameof(EdmGroupNorm))
    {
        NumGroups = Math.Min(numGroups, numChannels / minChannelsPerGroup);
        if (NumGroups < 1)
            throw new ArgumentException($"GroupNorm over {numChannels} channels needs at least {minChannelsPerGroup} channels");
        this.eps = eps;
        weight = new Parameter(ones(numChannels));
        bias = new Parameter(zeros(numChannels));
        RegisterComponents();
    }

    public long NumGroups { get; }

    public override Tensor forward(Tensor x) => nn.functional.group_norm(x, NumGroups, weight, bias, eps);
}
