using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// EDM <c>PositionalEmbedding</c> of the noise condition (DDPM++ and ADM): frequencies
/// <c>(1/max_positions)^(i / (C/2 - endpoint))</c>, output <c>[cos | sin]</c>. No state.
/// </summary>
internal sealed class PositionalEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly int numChannels, maxPositions;
    private readonly bool endpoint;

    public PositionalEmbedding(int numChannels, int maxPositions = 10000, bool endpoint = false) : base(nameof(PositionalEmbedding))
    {
        this.numChannels = numChannels;
        this.maxPositions = maxPositions;
        this.endpoint = endpoint;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        int half = numChannels / 2;
        var freqs = arange(0, half, dtype: ScalarType.Float32, device: x.device) / (half - (endpoint ? 1 : 0));
        freqs = tensor(1.0f / maxPositions, device: x.device).pow(freqs);
        var y = x.outer(freqs.to(x.dtype));
        return cat(new[] { y.cos(), y.sin() }, 1).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// EDM <c>FourierEmbedding</c> of the noise condition (NCSN++): random frequencies drawn once,
/// <c>freqs ~ N(0, scale^2)</c>, kept in the persistent buffer <c>freqs</c>; output
/// <c>[cos(2 pi f x) | sin(2 pi f x)]</c>.
/// </summary>
internal sealed class FourierEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Tensor freqs;

    public FourierEmbedding(int numChannels, double scale = 16) : base(nameof(FourierEmbedding))
    {
        freqs = randn(numChannels / 2).mul_(scale);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var y = x.outer((freqs * (2 * Math.PI)).to(x.dtype));
        return cat(new[] { y.cos(), y.sin() }, 1).MoveToOuterDisposeScope();
    }
}
