using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>The Karras et al. (2022) noise-level schedule, Eq. 5 (DESIGN.md section 2).</summary>
public static class KarrasSchedule
{
    /// <summary>EDM's defaults: sigma_min = 0.002, sigma_max = 80, rho = 7 (Karras et al. 2022, Table 1).</summary>
    public const double DefaultSigmaMin = 0.002, DefaultSigmaMax = 80.0, DefaultRho = 7.0;

    /// <summary>
    /// sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i = 0..N-1, then sigma_N = 0.
    /// Returns N+1 values in float64, descending, the last one zero.
    /// </summary>
    public static double[] Sigmas(int steps, double sigmaMin = DefaultSigmaMin, double sigmaMax = DefaultSigmaMax, double rho = DefaultRho)
    {
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), "need at least one step");
        var t = new double[steps + 1];
        double a = Math.Pow(sigmaMax, 1 / rho), b = Math.Pow(sigmaMin, 1 / rho);
        for (int i = 0; i < steps; i++)
            t[i] = steps == 1 ? sigmaMax : Math.Pow(a + i / (double)(steps - 1) * (b - a), rho);
        t[steps] = 0;
        return t;
    }

    /// <summary>
    /// The 1000-level grid DMD draws training noise levels from (DESIGN.md section 3): the Karras
    /// schedule with <paramref name="levels"/> values, in ascending order (index 0 = sigma_min).
    /// </summary>
    public static Tensor AscendingGrid(int levels = 1000, double sigmaMin = DefaultSigmaMin, double sigmaMax = DefaultSigmaMax, double rho = DefaultRho)
    {
        var s = Sigmas(levels, sigmaMin, sigmaMax, rho).Take(levels).Reverse().ToArray();
        return torch.tensor(s, dtype: ScalarType.Float32);
    }
}
