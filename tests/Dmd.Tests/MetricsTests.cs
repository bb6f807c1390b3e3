using Dmd.Data;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

public class MetricsTests
{
    [Fact]
    public void EnergyDistanceOfPointMassesIsTwiceTheirDistance()
    {
        var a = zeros(50, 2);
        var b = zeros(60, 2) + tensor(new float[] { 3, 4 });
        Assert.Equal(10.0, EnergyDistance.Compute(a, b, chunk: 7), 9);
        Assert.Equal(0.0, EnergyDistance.Compute(a, a.clone()), 12);
    }

    [Fact]
    public void EnergyDistanceSeparatesDistributionsAndIsSymmetric()
    {
        var p = PointDistributions.Sample("ring8", 3000, 1).Points;
        var q = PointDistributions.Sample("ring8", 3000, 2).Points;
        var shifted = q + 0.5f;
        double same = EnergyDistance.Compute(p, q), diff = EnergyDistance.Compute(p, shifted);
        Assert.True(Math.Abs(same) < 0.01, $"same distribution: {same}");
        Assert.True(diff > 0.1, $"shifted: {diff}");
        Assert.Equal(diff, EnergyDistance.Compute(shifted, p), 9);
        // the estimate scales linearly with the data
        Assert.Equal(2 * diff, EnergyDistance.Compute(2 * p, 2 * shifted), 6);
    }

    [Fact]
    public void PrecisionAndRecallSeparateQualityFromCoverage()
    {
        var real = PointDistributions.Sample("ring8", 2000, 1);
        var other = PointDistributions.Sample("ring8", 2000, 2);
        var same = PrecisionRecall.Compute(real.Points, other.Points);
        Assert.True(same.Precision > 0.9 && same.Recall > 0.9, same.ToString());
        // half the modes, perfectly placed: high precision, recall about one half
        var half = other.Points.index_select(0, nonzero(other.ClassIndex! < 4).squeeze(1));
        var collapsed = PrecisionRecall.Compute(real.Points, half);
        Assert.True(collapsed.Precision > 0.9, collapsed.ToString());
        Assert.InRange(collapsed.Recall, 0.4, 0.6);
        // far away: nothing in either manifold
        var far = PrecisionRecall.Compute(real.Points, other.Points + 100);
        Assert.Equal(0, far.Precision); Assert.Equal(0, far.Recall);
    }

    [Fact]
    public void ModeCoverageCountsCoveredModes()
    {
        var s = PointDistributions.Sample("ring8", 4000, 3);
        var all = ModeCoverage.Compute(s.Points, s.Modes!.Centers, s.Modes.Std);
        Assert.Equal(8, all.ModesCovered);
        Assert.True(all.HighQualityFraction > 0.98);
        Assert.True(all.ModeKl < 0.01);
        var three = s.Points.index_select(0, nonzero(s.ClassIndex! < 3).squeeze(1));
        var part = ModeCoverage.Compute(three, s.Modes.Centers, s.Modes.Std);
        Assert.Equal(3, part.ModesCovered);
        var centre = ModeCoverage.Compute(zeros(100, 2), s.Modes.Centers, s.Modes.Std);
        Assert.Equal(0, centre.ModesCovered);
        Assert.Equal(0, centre.HighQualityFraction);
    }
}
