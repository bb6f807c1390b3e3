using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>Settings of EDM's stochastic churn (Algorithm 2). All zero/default = deterministic Heun (Algorithm 1).</summary>
public sealed record Churn(double SChurn = 0, double SMin = 0, double SMax = double.PositiveInfinity, double SNoise = 1);

/// <summary>Output of a sampler: the samples and the number of denoiser evaluations spent (NFE).</summary>
public sealed record SampleResult(Tensor Samples, int Nfe);

/// <summary>
/// ODE/SDE samplers over any <see cref="IDenoiser"/> (DESIGN.md section 2). Noise levels follow
/// <see cref="KarrasSchedule"/>; state is kept in float64 as in EDM's generate.py, the network sees float32.
/// </summary>
public static class Samplers
{
    /// <summary>
    /// EDM Algorithm 1 (deterministic Heun) with the optional churn of Algorithm 2:
    /// N steps cost 2N-1 network evaluations (the last step has no correction); N = 18 gives 35 NFE.
    /// </summary>
    public static SampleResult Heun(IDenoiser net, Tensor z, Tensor? labels, int steps,
                                    double sigmaMin = KarrasSchedule.DefaultSigmaMin,
                                    double sigmaMax = KarrasSchedule.DefaultSigmaMax,
                                    double rho = KarrasSchedule.DefaultRho,
                                    Churn? churn = null, Generator? generator = null)
    {
        Settings.AtLeast("steps", steps, 1);
        var t = KarrasSchedule.Sigmas(steps, sigmaMin, sigmaMax, rho);
        using var scope = NewDisposeScope();
        var res = Heun(net, z.to(ScalarType.Float64) * C(t[0], z.to(ScalarType.Float64)), labels, t, churn, generator);
        return res with { Samples = res.Samples.MoveToOuterDisposeScope() };
    }

    /// <summary>
    /// EDM's Heun sampler (Algorithm 1, optional churn of Algorithm 2) on given noise levels: <paramref name="x"/> is at
    /// noise level <c>sigmas[0]</c> (x0 + sigmas[0] n), <paramref name="sigmas"/> descend to a final 0; N = sigmas - 1 steps
    /// cost 2N-1 network evaluations. Stable Diffusion samples on its scheduler's sigmas this way.
    /// </summary>
    public static SampleResult Heun(IDenoiser net, Tensor x, Tensor? labels, IReadOnlyList<double> sigmas, Churn? churn = null, Generator? generator = null)
    {
        int steps = sigmas.Count - 1;
        Settings.AtLeast("steps", steps, 1);
        churn ??= new Churn();
        var t = sigmas;
        int nfe = 0;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var xNext = x.to(ScalarType.Float64);
        for (int i = 0; i < steps; i++)
        {
            double tCur = t[i], tNext = t[i + 1];
            var xCur = xNext;
            // Increase noise temporarily (churn): gamma = min(S_churn/N, sqrt(2)-1) inside [S_min, S_max].
            double gamma = churn.SChurn > 0 && tCur >= churn.SMin && tCur <= churn.SMax ? Math.Min(churn.SChurn / steps, Math.Sqrt(2) - 1) : 0;
            double tHat = tCur + gamma * tCur;
            var xHat = gamma > 0
                ? xCur + C(Math.Sqrt(tHat * tHat - tCur * tCur) * churn.SNoise, xCur) * Rng.NormalLike(xCur, generator)
                : xCur;
            // Euler step.
            var denoised = Eval(net, xHat, tHat, labels); nfe++;
            var dCur = (xHat - denoised) / C(tHat, xHat);
            xNext = xHat + C(tNext - tHat, xHat) * dCur;
            // Second-order (trapezoid) correction, except on the last step.
            if (i < steps - 1)
            {
                denoised = Eval(net, xNext, tNext, labels); nfe++;
                var dPrime = (xNext - denoised) / C(tNext, xNext);
                xNext = xHat + C(tNext - tHat, xHat) * (dCur + dPrime) / C(2, xHat);
            }
        }
        return new SampleResult(xNext.to(ScalarType.Float32).MoveToOuterDisposeScope(), nfe);
    }

    /// <summary>First-order Euler ODE sampler on the same schedule: N steps, N network evaluations.</summary>
    public static SampleResult Euler(IDenoiser net, Tensor z, Tensor? labels, int steps,
                                     double sigmaMin = KarrasSchedule.DefaultSigmaMin,
                                     double sigmaMax = KarrasSchedule.DefaultSigmaMax,
                                     double rho = KarrasSchedule.DefaultRho)
    {
        Settings.AtLeast("steps", steps, 1);
        var t = KarrasSchedule.Sigmas(steps, sigmaMin, sigmaMax, rho);
        using var scope = NewDisposeScope();
        var x = z.to(ScalarType.Float64);
        var res = Euler(net, x * C(t[0], x), labels, t);
        return res with { Samples = res.Samples.MoveToOuterDisposeScope() };
    }

    /// <summary>
    /// The Euler ODE sampler on given noise levels: <paramref name="x"/> is at noise level <c>sigmas[0]</c>, and each step is
    /// <c>x += (sigma_{i+1} - sigma_i) (x - D(x, sigma_i)) / sigma_i</c>, which is diffusers' <c>EulerDiscreteScheduler.step</c>
    /// (without churn) in EDM's variables. N = sigmas - 1 steps, N network evaluations.
    /// </summary>
    public static SampleResult Euler(IDenoiser net, Tensor x, Tensor? labels, IReadOnlyList<double> sigmas)
    {
        int steps = sigmas.Count - 1;
        Settings.AtLeast("steps", steps, 1);
        var t = sigmas;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        x = x.to(ScalarType.Float64);
        for (int i = 0; i < steps; i++)
        {
            var d = (x - Eval(net, x, t[i], labels)) / C(t[i], x);
            x = x + C(t[i + 1] - t[i], x) * d;
        }
        return new SampleResult(x.to(ScalarType.Float32).MoveToOuterDisposeScope(), steps);
    }

    /// <summary>Runs a sampler by name ("heun" or "euler").</summary>
    public static SampleResult Run(string sampler, IDenoiser net, Tensor z, Tensor? labels, int steps, Generator? generator = null) =>
        sampler.ToLowerInvariant() switch
        {
            "heun" => Heun(net, z, labels, steps, generator: generator),
            "euler" => Euler(net, z, labels, steps),
            _ => throw new ArgumentException($"unknown sampler '{sampler}': use heun or euler"),
        };

    static Tensor C(double v, Tensor like) => DenoiserExtensions.Const(v, like);

    static Tensor Eval(IDenoiser net, Tensor x, double sigma, Tensor? labels)
    {
        var x32 = x.to(ScalarType.Float32);
        var s = DenoiserExtensions.Full(sigma, x32);
        return net.Denoise(x32, s, labels).to(ScalarType.Float64);
    }
}
