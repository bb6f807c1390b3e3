using Dmd.Diffusion;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

public class DiffusionTests
{
    [Fact]
    public void KarrasScheduleMatchesFormula()
    {
        var s = KarrasSchedule.Sigmas(18);
        Assert.Equal(19, s.Length);
        Assert.Equal(80.0, s[0], 12);
        Assert.Equal(0.002, s[17], 12);
        Assert.Equal(0.0, s[18]);
        double a = Math.Pow(80, 1 / 7.0), b = Math.Pow(0.002, 1 / 7.0);
        Assert.Equal(Math.Pow(a + 5 / 17.0 * (b - a), 7), s[5], 12);
        for (int i = 0; i < 18; i++) Assert.True(s[i] > s[i + 1]);
        var grid = KarrasSchedule.AscendingGrid(1000).data<float>().ToArray();
        Assert.Equal(1000, grid.Length);
        Assert.Equal(0.002f, grid[0], 5);
        Assert.Equal(80f, grid[999], 3);
    }

    [Fact]
    public void HeunIsExactOnGaussianData()
    {
        // Data N(mu, s^2 I) with the analytic denoiser: the probability-flow ODE has the closed form
        // x(0) = mu + (x(T) - mu) s / sqrt(s^2 + T^2), so every sample has a known destination.
        var mu = tensor(new double[] { 0.7, -1.3 });
        double s = 0.4;
        var d = new GaussianDenoiser(mu, s);
        using var g = new Generator(0);
        var z = randn(new long[] { 512, 2 }, generator: g);
        double T = 80;
        var exact = (mu + (z.to(ScalarType.Float64) * T - mu) * s / Math.Sqrt(s * s + T * T)).to(ScalarType.Float32);

        // error relative to the spread of the samples: max |x - exact| / max |exact - mu|
        double spread = (exact - mu.to(ScalarType.Float32)).abs().max().item<float>();
        double Err(Tensor x) => (x - exact).abs().max().item<float>() / spread;
        var heun = Samplers.Heun(d, z, null, 18);
        Assert.Equal(35, heun.Nfe);
        Assert.Equal(35, d.Calls);
        // second order: doubling the steps divides the error by about four (Euler would halve it)
        double e18 = Err(heun.Samples), e36 = Err(Samplers.Heun(d, z, null, 36).Samples), e72 = Err(Samplers.Heun(d, z, null, 72).Samples);
        Assert.True(e18 < 0.08, $"18 steps: {e18}"); // 6 % for data std 0.4: the discretisation error of 18 steps
        Assert.True(e36 < 0.3 * e18 && e72 < 0.3 * e36, $"errors {e18} {e36} {e72}");
        // converged, it is exact to float32 precision
        double e400 = Err(Samplers.Heun(d, z, null, 400).Samples);
        Assert.True(e400 < 1e-4, $"400 steps: {e400}");
        // Euler with the same budget (35 NFE) is worse, and only first order
        double euler35 = Err(Samplers.Euler(d, z, null, 35).Samples), euler70 = Err(Samplers.Euler(d, z, null, 70).Samples);
        Assert.True(euler35 > e18, $"Euler {euler35} vs Heun {e18}");
        Assert.True(euler70 > 0.4 * euler35, $"Euler 35 steps {euler35}, 70 steps {euler70}");
    }

    [Fact]
    public void StochasticChurnStillSamplesTheGaussian()
    {
        var mu = tensor(new double[] { 1.0, -1.0 });
        var d = new GaussianDenoiser(mu, 0.5);
        using var g = new Generator(1);
        var z = randn(new long[] { 20000, 2 }, generator: g);
        var r = Samplers.Heun(d, z, null, 32, churn: new Churn(SChurn: 40, SMin: 0.05, SMax: 50, SNoise: 1.0), generator: g);
        var mean = r.Samples.mean(new long[] { 0 }).data<float>().ToArray();
        var std = r.Samples.std(0).data<float>().ToArray();
        Assert.Equal(1.0, mean[0], 1); Assert.Equal(-1.0, mean[1], 1);
        Assert.InRange(std[0], 0.47, 0.53); Assert.InRange(std[1], 0.47, 0.53);
    }

    [Fact]
    public void PreconditioningMatchesDesign()
    {
        // D(x) = c_skip x + c_out F(c_in x, c_noise): check against the formulas with a known F
        var spec = new MlpSpec { Shape = new[] { 3 }, LabelDim = 0, SigmaData = 0.5, Width = 32, Depth = 1 };
        var net = spec.Build();
        using var g = new Generator(3);
        var x = randn(new long[] { 4, 3 }, generator: g);
        var sigma = tensor(new float[] { 0.01f, 0.5f, 2f, 80f });
        var dOut = net.Denoise(x, sigma);
        var sd = 0.5;
        var sb = sigma.unsqueeze(1);
        var cSkip = sd * sd / (sb.square() + sd * sd);
        var cOut = sb * sd / (sb.square() + sd * sd).sqrt();
        var cIn = 1 / (sb.square() + sd * sd).sqrt();
        var f = net.Backbone.forward(cIn * x, sigma.log() / 4, null);
        Assert.True(allclose(dOut, cSkip * x + cOut * f, 1e-5, 1e-6));
    }

    [Fact]
    public void EdmLossWeightMatchesDesign()
    {
        var sigma = tensor(new double[] { 0.002, 0.3, 1, 80 });
        var w = EdmLoss.Weight(sigma, 0.5).data<double>().ToArray();
        var sv = new[] { 0.002, 0.3, 1, 80 };
        for (int i = 0; i < 4; i++) Assert.Equal((sv[i] * sv[i] + 0.25) / Math.Pow(sv[i] * 0.5, 2), w[i], 9);
        for (int i = 0; i < 4; i++) Assert.Equal(1 / (sv[i] * sv[i]) + 1 / 0.25, w[i], 6);
    }

    [Fact]
    public void GuidanceCombinesConditionalAndUnconditional()
    {
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.5, Width = 32, Depth = 1 };
        var net = spec.Build();
        using var g = new Generator(4);
        var x = randn(new long[] { 5, 2 }, generator: g);
        var sigma = full(5, 1.5f);
        var y = Rng.OneHotLabels(3, 5, g)!;
        using var _ = no_grad();
        var cond = net.Denoise(x, sigma, y);
        var uncond = net.Denoise(x, sigma, zeros_like(y));
        Assert.True(allclose(new GuidedDenoiser(net, 1.0).Denoise(x, sigma, y), cond, 1e-5, 1e-6));
        Assert.True(allclose(new GuidedDenoiser(net, 0.0).Denoise(x, sigma, y), uncond, 1e-5, 1e-6));
        Assert.True(allclose(new GuidedDenoiser(net, 2.5).Denoise(x, sigma, y), uncond + 2.5 * (cond - uncond), 1e-4, 1e-5));
    }

    [Fact]
    public void GuidanceIntervalGuidesOnlyTheSamplesInside()
    {
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.5, Width = 32, Depth = 1 };
        torch.manual_seed(5); // fixed weights: with some draws the labels move this small net's output by less than 1e-3
        var net = spec.Build();
        using var g = new Generator(5);
        var x = randn(new long[] { 5, 2 }, generator: g);
        var sigma = tensor(new float[] { 0.1f, 0.28f, 0.3f, 5.42f, 40f }); // the ends: 0.28 is outside, 5.42 inside
        var y = Rng.OneHotLabels(3, 5, g)!;
        using var _ = no_grad();
        var cond = net.Denoise(x, sigma, y);
        var full = new GuidedDenoiser(net, 2.5).Denoise(x, sigma, y);
        var limited = new GuidedDenoiser(net, 2.5, interval: new GuidanceInterval(0.28, 5.42)).Denoise(x, sigma, y);
        var expected = cat(new[] { cond[..2], full[2..4], cond[4..] });
        Assert.True((limited - expected).abs().max().item<float>() < 1e-5f);
        var moved = (full[2..4] - cond[2..4]).abs().max().item<float>();
        Assert.True(moved > 1e-3f, $"guidance moved the samples inside by {moved}"); // guidance does change them, so the test can tell
        // all outside: the conditional output (one pass); a scalar sigma too
        Assert.True(allclose(new GuidedDenoiser(net, 2.5, interval: new GuidanceInterval(50, 80)).Denoise(x, sigma, y), cond, 1e-5, 1e-6));
        var one = tensor(3.0f);
        Assert.True(allclose(new GuidedDenoiser(net, 2.5, interval: new GuidanceInterval(1, 5)).Denoise(x, one, y),
                             new GuidedDenoiser(net, 2.5).Denoise(x, one, y), 1e-5, 1e-6));
    }

    [Fact]
    public void AnOutsideScaleGuidesTheOtherLevelsWithItsOwnWeight()
    {
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.5, Width = 32, Depth = 1 };
        torch.manual_seed(6); // fixed weights, as above
        var net = spec.Build();
        using var g = new Generator(6);
        var x = randn(new long[] { 4, 2 }, generator: g);
        var sigma = tensor(new float[] { 0.1f, 0.3f, 5.42f, 40f });
        var y = Rng.OneHotLabels(3, 4, g)!;
        using var _ = no_grad();
        var inside = new GuidedDenoiser(net, 2.5).Denoise(x, sigma, y);
        var outside = new GuidedDenoiser(net, 0.6).Denoise(x, sigma, y);
        var both = new GuidedDenoiser(net, 2.5, interval: new GuidanceInterval(0.28, 5.42, 0.6)).Denoise(x, sigma, y);
        var expected = cat(new[] { outside[..1], inside[1..3], outside[3..] });
        Assert.True((both - expected).abs().max().item<float>() < 1e-5f);
        var moved = (outside[3..] - net.Denoise(x, sigma, y)[3..]).abs().max().item<float>();
        Assert.True(moved > 1e-3f, $"the outside scale moved the sample by {moved}"); // not the conditional output
        // guidance 1 inside with another scale outside still guides (the outside levels), and is wrapped
        var wrapped = GuidedDenoiser.Wrap(net, 1.0, new GuidanceInterval(0.28, 5.42, 0.6));
        Assert.IsType<GuidedDenoiser>(wrapped);
        Assert.True(allclose(wrapped.Denoise(x, sigma, y)[3..], outside[3..], 1e-5, 1e-6));
        Assert.Same(net, GuidedDenoiser.Wrap(net, 1.0, new GuidanceInterval(0.28, 5.42)));
        Assert.Equal("(0.28, 5.42], 0.6 elsewhere", new GuidanceInterval(0.28, 5.42, 0.6).ToString());
        Assert.Equal("(0.28, 5.42]", new GuidanceInterval(0.28, 5.42).ToString());
    }

    [Theory]
    [InlineData("0.28,5.42", 0.28, 5.42, 1)]
    [InlineData(" 0 , 80 ", 0, 80, 1)]
    [InlineData("0.28,5.42,0.8", 0.28, 5.42, 0.8)]
    public void GuidanceIntervalParses(string text, double lo, double hi, double outside) =>
        Assert.Equal(new GuidanceInterval(lo, hi, outside), GuidanceInterval.Parse(text, "--guidance-interval"));

    [Theory]
    [InlineData("5,1")]
    [InlineData("1")]
    [InlineData("a,b")]
    [InlineData("-1,2")]
    [InlineData("1,2,-1")]
    [InlineData("1,2,3,4")]
    public void GuidanceIntervalRefusesBadText(string text)
    {
        var e = Assert.Throws<DmdInputException>(() => GuidanceInterval.Parse(text, "--guidance-interval"));
        Assert.Contains("--guidance-interval", e.Message);
    }
}
