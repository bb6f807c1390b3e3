using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// The float32 gradients this machine's libtorch computes, against float64 (which finite differences confirm). With
/// oneDNN's AVX2/AVX-512 kernels (libtorch 2.10, measured on this project's machine) the input gradient of a 3x3
/// convolution with fewer than 8 output channels came out wrong (relative error 0.8-0.97, or NaN): every U-Net here ends
/// in one, so every training step's gradients were wrong while its loss was right (<c>Dmd.NativeSetup</c> now caps oneDNN
/// at AVX). These tests fail on a machine whose kernels do that, whatever ONEDNN_MAX_CPU_ISA says.
/// </summary>
public class ConvolutionGradientTests
{
    static double Rel(Tensor a, Tensor b) => (a.to(ScalarType.Float64) - b).norm().item<double>() / b.norm().item<double>();

    [Theory]
    [InlineData(16, 1, 32, 3)]   // the Fashion-MNIST U-Nets' last layer
    [InlineData(16, 3, 32, 3)]   // an RGB U-Net's last layer
    [InlineData(16, 4, 16, 3)]   // a latent (SD) U-Net's last layer
    [InlineData(16, 16, 32, 3)]
    [InlineData(32, 32, 16, 3)]
    [InlineData(16, 1, 32, 1)]
    public void Float32ConvolutionGradientsAgreeWithFloat64(int cin, int cout, int side, int k)
    {
        using var g = new Generator(7);
        var x = randn(new long[] { 8, cin, side, side }, generator: g);
        var w = randn(new long[] { cout, cin, k, k }, generator: g) * 0.1;
        var b = randn(new long[] { cout }, generator: g);
        var up = randn(new long[] { 8, cout, side, side }, generator: g);
        (Tensor, Tensor, Tensor) Grads(ScalarType dt)
        {
            var (xx, ww, bb) = (x.to(dt).detach().requires_grad_(), w.to(dt).detach().requires_grad_(), b.to(dt).detach().requires_grad_());
            (nn.functional.conv2d(xx, ww, bb, padding: new long[] { k / 2, k / 2 }) * up.to(dt)).sum().backward();
            return (xx.grad!, ww.grad!, bb.grad!);
        }
        var (dx32, dw32, db32) = Grads(ScalarType.Float32);
        var (dx64, dw64, db64) = Grads(ScalarType.Float64);
        // float32 sums of a few thousand terms: ~1e-6 relative; a broken kernel is off by order 1 (or NaN)
        Assert.True(Rel(dx32, dx64) < 1e-4, $"input gradient off by {Rel(dx32, dx64):G3} (relative)");
        Assert.True(Rel(dw32, dw64) < 1e-4, $"weight gradient off by {Rel(dw32, dw64):G3} (relative)");
        Assert.True(Rel(db32, db64) < 1e-3, $"bias gradient off by {Rel(db32, db64):G3} (relative)");
    }

    [Fact]
    public void TheUNetsGradientsAgreeWithFloat64()
    {
        // the whole network: a DDPM++ U-Net on 1-channel images (its last convolution has one output channel)
        var spec = new DdpmppSpec { Shape = new[] { 1, 16, 16 }, LabelDim = 3, SigmaData = 0.5, ModelChannels = 8, ChannelMult = new[] { 1, 2 }, NumBlocks = 1, AttnResolutions = new[] { 8 } };
        var unet = spec.Build().Backbone;
        unet.eval();
        using var g = new Generator(3);
        // zero-initialised output layers (EDM's init) would hide the gradient below them: perturb every weight
        using (no_grad()) foreach (var p in unet.parameters()) p.add_(randn(p.shape, generator: g) * 0.05);
        var x = randn(new long[] { 4, 1, 16, 16 }, generator: g);
        var noise = randn(new long[] { 4 }, generator: g) * 0.5;
        var labels = Rng.OneHot(tensor(new long[] { 0, 1, 2, 1 }), 3);
        var target = randn(new long[] { 4, 1, 16, 16 }, generator: g);
        List<Tensor> Grads(ScalarType dt)
        {
            unet.to(dt);
            unet.zero_grad();
            (unet.forward(x.to(dt), noise.to(dt), labels.to(dt)) - target.to(dt)).square().mean().backward();
            return unet.parameters().Select(p => p.grad!.to(ScalarType.Float64).clone()).ToList();
        }
        var g32 = Grads(ScalarType.Float32);
        var g64 = Grads(ScalarType.Float64);
        double num = g32.Zip(g64, (a, b) => (a - b).square().sum().item<double>()).Sum();
        double den = g64.Sum(b => b.square().sum().item<double>());
        Assert.True(Math.Sqrt(num / den) < 1e-4, $"the U-Net's float32 gradients are off by {Math.Sqrt(num / den):G3} (relative to float64)");
    }
}
