using TorchSharp;

namespace Dmd.Networks;

/// <summary>
/// Counts the floating-point work of the EDM U-Nets while switched on (<see cref="Count"/>): every convolution and linear
/// layer (2 x multiply-adds) and the attention products, forward, plus the backward work each call will cost under
/// autograd's current mode: one more forward's worth for the input's gradient when its input needs one, and one for the
/// weight's gradient when its weight trains (the usual 1 + 1 + 1 rule). GroupNorm, activations, the resampling filters'
/// depthwise convolutions and the GAN head's (at most about 1 % of a U-Net pass) are not counted. For `bench`: achieved
/// GFLOP/s of a training step. Off, each layer pays one flag check.
/// </summary>
public static class FlopCounter
{
    static bool on;
    static long forward, backward;

    /// <summary>Forward FLOPs counted since <see cref="Count"/>.</summary>
    public static long Forward => forward;
    /// <summary>Backward FLOPs the counted calls cost (input and weight gradients).</summary>
    public static long Backward => backward;
    /// <summary>Forward plus backward FLOPs.</summary>
    public static long Total => forward + backward;

    /// <summary>Resets the counts and counts until the returned object is disposed (one counting scope at a time).</summary>
    public static IDisposable Count()
    {
        if (on) throw new InvalidOperationException("the FLOP counter is already counting");
        (forward, backward, on) = (0, 0, true);
        return new Stop();
    }

    sealed class Stop : IDisposable { public void Dispose() => on = false; }

    /// <summary>Adds one layer call: <paramref name="flops"/> forward; its backward from whether
    /// <paramref name="input"/> and <paramref name="weight"/> (a parameter, or the second operand of a product) need gradients.</summary>
    internal static void Add(long flops, torch.Tensor input, torch.Tensor? weight)
    {
        if (!on) return;
        forward += flops;
        if (!torch.is_grad_enabled()) return;
        if (input.requires_grad) backward += flops;
        if (weight is not null && weight.requires_grad) backward += flops;
    }

    /// <summary>Whether counting is on (layers skip computing their count otherwise).</summary>
    internal static bool On => on;
}
