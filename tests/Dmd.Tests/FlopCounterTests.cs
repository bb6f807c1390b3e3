using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>The FLOP counter behind `bench --distill`'s achieved GFLOP/s.</summary>
public class FlopCounterTests
{
    [Fact]
    public void AConvolutionCountsTwoMultiplyAddsPerOutputAndItsBackwardByWhatNeedsGradients()
    {
        var conv = new EdmConv2d(4, 5, kernel: 3);
        var x = randn(2, 4, 8, 8);
        const long fwd = 2L * 2 * 5 * 8 * 8 * 4 * 9; // 2 x batch x out channels x pixels x in channels x kernel
        using (FlopCounter.Count()) using (no_grad()) conv.forward(x);
        Assert.Equal((fwd, 0L), (FlopCounter.Forward, FlopCounter.Backward));
        using (FlopCounter.Count()) conv.forward(x);                       // weight trains, input needs no gradient
        Assert.Equal((fwd, fwd), (FlopCounter.Forward, FlopCounter.Backward));
        using (FlopCounter.Count()) conv.forward(x.requires_grad_(true));  // both
        Assert.Equal(3 * fwd, FlopCounter.Total);
        long before = FlopCounter.Total;
        conv.forward(x);                                                   // not counting
        Assert.Equal(before, FlopCounter.Total);
    }

    /// <summary>The shipped 441k-parameter DDPM++ U-Net: about 0.21 GFLOP per 32x32 image forward (the team's hand count).</summary>
    [Fact]
    public void TheFashionMnistUNetCostsAboutAFifthOfAGflopPerImage()
    {
        var (net, _) = DenoiserFile.Load(Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-teacher"));
        using (FlopCounter.Count()) using (no_grad()) net.Denoise(randn(4, 1, 32, 32), full(4, 1.0), Dmd.Rng.OneHot(tensor(new long[] { 0, 1, 2, 3 }), 10));
        double perImage = FlopCounter.Forward / 4 / 1e9;
        Assert.InRange(perImage, 0.18, 0.24);
    }
}
