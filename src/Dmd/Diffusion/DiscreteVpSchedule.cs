using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// The discrete DDPM (variance-preserving) schedule of a Stable Diffusion teacher, read from a diffusers
/// <c>scheduler/scheduler_config.json</c>, seen in EDM's variance-exploding terms (DESIGN.md, "Text-to-image"):
/// <c>abar_t = prod_{s &lt;= t} (1 - beta_s)</c>, <c>sigma_t = sqrt((1 - abar_t) / abar_t)</c>, and a VP sample
/// <c>x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n</c> is the EDM sample <c>x = x_t / sqrt(abar_t) = x0 + sigma_t n</c>.
/// The sampling sigmas and timesteps are diffusers' <c>EulerDiscreteScheduler.set_timesteps</c>; the timestep of any other
/// sigma is k-diffusion's <c>sigma_to_t</c> (log-sigma interpolation), which EulerDiscreteScheduler also uses.
/// </summary>
public sealed class DiscreteVpSchedule
{
    private readonly double[] logSigmas;

    /// <summary>The schedule of the given fields (diffusers' names in the comments; SD v1.5's values as defaults).</summary>
    /// <param name="numTrainTimesteps"><c>num_train_timesteps</c>.</param>
    /// <param name="betaSchedule"><c>beta_schedule</c>: <c>scaled_linear</c> or <c>linear</c>.</param>
    /// <param name="betaStart"><c>beta_start</c>.</param>
    /// <param name="betaEnd"><c>beta_end</c>.</param>
    /// <param name="timestepSpacing"><c>timestep_spacing</c>: <c>linspace</c>, <c>leading</c> or <c>trailing</c>.</param>
    /// <param name="stepsOffset"><c>steps_offset</c> (added to the timesteps of the leading spacing).</param>
    public DiscreteVpSchedule(int numTrainTimesteps = 1000, string betaSchedule = "scaled_linear", double betaStart = 0.00085,
                              double betaEnd = 0.012, string timestepSpacing = "linspace", int stepsOffset = 1)
    {
        if (numTrainTimesteps < 2) throw new DmdInputException($"num_train_timesteps {numTrainTimesteps}: must be at least 2");
        if (betaSchedule is not ("scaled_linear" or "linear"))
            throw new DmdInputException($"beta_schedule \"{betaSchedule}\" is not implemented (use scaled_linear or linear)");
        if (timestepSpacing is not ("linspace" or "leading" or "trailing"))
            throw new DmdInputException($"timestep_spacing \"{timestepSpacing}\" is not implemented (use linspace, leading or trailing)");
        NumTrainTimesteps = numTrainTimesteps;
        BetaSchedule = betaSchedule;
        BetaStart = betaStart;
        BetaEnd = betaEnd;
        TimestepSpacing = timestepSpacing;
        StepsOffset = stepsOffset;

        // diffusers computes the betas, their cumulative product and the sigmas in float32 torch arithmetic: so do we
        using var scope = NewDisposeScope();
        var betas = betaSchedule == "scaled_linear"
            ? linspace(Math.Sqrt(betaStart), Math.Sqrt(betaEnd), numTrainTimesteps, dtype: ScalarType.Float32).pow(2)
            : linspace(betaStart, betaEnd, numTrainTimesteps, dtype: ScalarType.Float32);
        var abar = (1 - betas).cumprod(0);
        var sigmas = ((1 - abar) / abar).pow(0.5);
        AlphasCumprod = abar.to(ScalarType.Float64).data<double>().ToArray();
        TrainSigmas = sigmas.to(ScalarType.Float64).data<double>().ToArray();
        logSigmas = TrainSigmas.Select(v => Math.Log(v)).ToArray();
    }

    /// <summary>Stable Diffusion v1.5's schedule: scaled-linear betas 0.00085..0.012 over 1000 steps, steps_offset 1.</summary>
    public static DiscreteVpSchedule StableDiffusion15 { get; } = new();

    /// <summary><c>num_train_timesteps</c>.</summary>
    public int NumTrainTimesteps { get; }
    /// <summary><c>beta_schedule</c>.</summary>
    public string BetaSchedule { get; }
    /// <summary><c>beta_start</c>.</summary>
    public double BetaStart { get; }
    /// <summary><c>beta_end</c>.</summary>
    public double BetaEnd { get; }
    /// <summary><c>timestep_spacing</c> of the sampling timesteps.</summary>
    public string TimestepSpacing { get; }
    /// <summary><c>steps_offset</c>.</summary>
    public int StepsOffset { get; }

    /// <summary><c>alphas_cumprod</c>: abar_t for t = 0..N-1 (float32 values, as diffusers computes them).</summary>
    public IReadOnlyList<double> AlphasCumprod { get; }

    /// <summary>sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..N-1, ascending (float32 values).</summary>
    public IReadOnlyList<double> TrainSigmas { get; }

    /// <summary>The smallest and largest training sigma (t = 0 and t = N-1): 0.0292 and 14.61 for SD v1.5.</summary>
    public double SigmaMin => TrainSigmas[0];

    /// <inheritdoc cref="SigmaMin"/>
    public double SigmaMax => TrainSigmas[^1];

    /// <summary>
    /// Reads a diffusers <c>scheduler_config.json</c> (or the <c>scheduler/</c> folder holding it), whatever scheduler class
    /// it names: only the training schedule and the timestep spacing are used. Fields are read as
    /// <c>EulerDiscreteScheduler.from_config</c> reads them: a missing <c>timestep_spacing</c> is EulerDiscreteScheduler's
    /// default <c>linspace</c> (SD v1.5's published config has none), a missing <c>steps_offset</c> is 0. A teacher other than
    /// an eps-prediction one on this schedule (prediction_type, trained_betas, karras sigmas, zero-SNR rescaling, ...) is a
    /// one-line <see cref="DmdInputException"/> naming the field.
    /// </summary>
    public static DiscreteVpSchedule Load(string folderOrFile)
    {
        var path = Directory.Exists(folderOrFile) ? Path.Combine(folderOrFile, "scheduler_config.json") : folderOrFile;
        if (!File.Exists(path))
            throw new DmdInputException($"scheduler config not found: {path} (pass the scheduler/ folder of a Stable Diffusion model)");
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new DmdInputException($"{path} does not hold a JSON object"); }
        catch (System.Text.Json.JsonException e) { throw new DmdInputException($"{path} is not valid JSON: {e.Message}", e); }

        T Get<T>(string name, T fallback)
        {
            if (!json.TryGetPropertyValue(name, out var n) || n is null) return fallback;
            try { return n.GetValue<T>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new DmdInputException($"{path}: {name} = {n.ToJsonString()} should be {(typeof(T) == typeof(string) ? "a string" : typeof(T) == typeof(bool) ? "true or false" : "a number")}", e);
            }
        }
        void Refuse<T>(string name, T implemented, string fix)
        {
            if (json.TryGetPropertyValue(name, out var n) && n is not null && !EqualityComparer<T>.Default.Equals(Get(name, implemented), implemented))
                throw new DmdInputException($"{path}: {name} = {n.ToJsonString()} is not supported ({fix})");
        }

        Refuse("prediction_type", "epsilon", "only eps-prediction teachers are implemented: use an SD v1.x model; v_prediction ones such as SD 2.x 768 are not");
        if (json.TryGetPropertyValue("trained_betas", out var tb) && tb is not null)
            throw new DmdInputException($"{path}: trained_betas is not supported (set beta_schedule, beta_start and beta_end instead)");
        Refuse("interpolation_type", "linear", "only linear interpolation of the sigmas, diffusers' default, is implemented");
        Refuse("use_karras_sigmas", false, "the Karras sigmas of this sampler are not implemented; remove the field");
        Refuse("rescale_betas_zero_snr", false, "zero-terminal-SNR schedules are not implemented");
        Refuse("timestep_type", "discrete", "only discrete timesteps are implemented");
        try
        {
            return new DiscreteVpSchedule(Get("num_train_timesteps", 1000), Get("beta_schedule", "linear"), Get("beta_start", 0.0001),
                                          Get("beta_end", 0.02), Get("timestep_spacing", "linspace"), Get("steps_offset", 0));
        }
        catch (DmdInputException e) { throw new DmdInputException($"{path}: {e.Message}", e); }
    }

    /// <summary>
    /// The sampling noise levels and timesteps of <paramref name="steps"/> steps, exactly as diffusers'
    /// <c>EulerDiscreteScheduler.set_timesteps</c> computes them (interpolation_type linear, no Karras sigmas):
    /// linspace: <c>t = linspace(0, N-1, steps)</c> descending; leading: <c>t = round(i * (N // steps)) + steps_offset</c>
    /// descending; trailing: <c>t = round(arange(N, 0, -N/steps)) - 1</c>. Then <c>sigma = interp(t, 0..N-1, sigma_t)</c>,
    /// both rounded to float32, and a final sigma 0. Returns steps + 1 sigmas (descending, last 0) and steps timesteps.
    /// </summary>
    public (double[] Sigmas, double[] Timesteps) SamplingSigmas(int steps)
    {
        Settings.AtLeast("steps", steps, 1);
        int n = NumTrainTimesteps;
        var t = new double[steps];
        switch (TimestepSpacing)
        {
            case "linspace":   // np.linspace(0, N-1, steps, dtype=float32)[::-1]
                double step = steps > 1 ? (n - 1.0) / (steps - 1) : 0;
                for (int i = 0; i < steps; i++) t[steps - 1 - i] = (float)(i == steps - 1 && steps > 1 ? n - 1.0 : i * step);
                break;
            case "leading":    // (np.arange(steps) * (N // steps)).round()[::-1].astype(float32) + steps_offset
                int ratio = n / steps;
                for (int i = 0; i < steps; i++) t[steps - 1 - i] = (float)((double)i * ratio) + StepsOffset;
                break;
            default:           // trailing: np.arange(N, 0, -N / steps).round() - 1
                double r = (double)n / steps;
                for (int i = 0; i < steps; i++) t[i] = (float)Math.Round(n - i * r, MidpointRounding.ToEven) - 1;
                break;
        }
        var sigmas = new double[steps + 1];
        for (int i = 0; i < steps; i++) sigmas[i] = (float)Interp(t[i]);
        sigmas[steps] = 0;
        return (sigmas, t);
    }

    /// <summary>
    /// The standard deviation of the initial latents in EDM's form, diffusers' <c>init_noise_sigma</c>: sigma_0 for the
    /// linspace and trailing spacings, <c>sqrt(sigma_0^2 + 1)</c> for leading (the VP prior N(0, 1) at abar_T seen as
    /// x_T / sqrt(abar_T)). The sampler starts from <c>z * InitNoiseSigma</c> with z ~ N(0, I).
    /// </summary>
    public double InitNoiseSigma(IReadOnlyList<double> sigmas)
    {
        double max = sigmas.Max();
        return TimestepSpacing is "linspace" or "trailing" ? max : (float)Math.Sqrt((float)((float)(max * max) + 1.0)); // float32, as diffusers
    }

    /// <summary>np.interp of sigma_t at a (fractional) timestep, clamped to [0, N-1].</summary>
    public double Interp(double t)
    {
        if (t <= 0) return TrainSigmas[0];
        if (t >= NumTrainTimesteps - 1) return TrainSigmas[^1];
        int j = (int)Math.Floor(t);
        double slope = TrainSigmas[j + 1] - TrainSigmas[j];
        return slope * (t - j) + TrainSigmas[j];
    }

    /// <summary>The timesteps <see cref="TimestepOf"/> of noise levels <paramref name="sigma"/> (B), float32 on sigma's device.</summary>
    public Tensor Timesteps(Tensor sigma)
    {
        var s = sigma.to(ScalarType.Float64).cpu().data<double>().ToArray();
        return torch.tensor(s.Select(TimestepOf).ToArray(), dtype: ScalarType.Float32, device: sigma.device);
    }

    /// <summary>
    /// k-diffusion's <c>DiscreteSchedule.sigma_to_t</c> (diffusers' <c>_sigma_to_t</c>): the continuous timestep whose
    /// log-sigma lies between those of two neighbouring training timesteps, linearly interpolated; clamped to [0, N-1].
    /// </summary>
    public double TimestepOf(double sigma)
    {
        double ls = Math.Log(Math.Max(sigma, 1e-10));
        int low = Array.BinarySearch(logSigmas, ls);
        low = low >= 0 ? low : ~low - 1;
        low = Math.Clamp(low, 0, logSigmas.Length - 2);
        double w = Math.Clamp((logSigmas[low] - ls) / (logSigmas[low] - logSigmas[low + 1]), 0, 1);
        return (1 - w) * low + w * (low + 1);
    }
}
