using Dmd.Diffusion;
using TorchSharp;
using static TorchSharp.torch;
using Dmd.Networks;

namespace Dmd.Distillation;

/// <summary>
/// The DMD generator. One step (DESIGN.md section 3): G(z, y) = D_gen(sigma_max z, sigma_max, y), initialised from the
/// teacher, so at first exactly the teacher's one-step prediction from pure noise. K steps (DMD2 section 4.4): the same
/// network on K fixed noise levels sigma_max = s_0 &gt; s_1 &gt; ... &gt; s_(K-1): x = s_0 z; then K times x0 = D_gen(x, s_k, y)
/// and, before each further step, x = x0 + s_(k+1) n_k with fresh standard normal noise n_k; the last x0 is the sample.
/// With a step-noise carry c &gt; 0 part of that noise is the noise the step's own input carried instead,
/// n = c (x - x0) / s_k + sqrt(1 - c^2) n_k (c = 1 would be a DDIM-like deterministic chain; DMD2: 0).
/// With separate step networks (<see cref="StepNetworks"/>) step k runs its own copy of the network instead.
/// </summary>
public sealed class OneStepGenerator
{
    /// <summary>The generator's denoiser network (trained by DMD).</summary>
    public EdmPrecond Net { get; }
    /// <summary>The noise level the generator maps from: it denoises sigma_max z at noise level sigma_max (EDM's 80 by default).</summary>
    public double SigmaMax => Sigmas[0];
    /// <summary>The noise levels of its steps, from <see cref="SigmaMax"/> down: one for a one-step generator.</summary>
    public IReadOnlyList<double> Sigmas { get; }
    /// <summary>Network evaluations of a full sample: the number of noise levels it was trained on.</summary>
    public int Steps => Sigmas.Count;
    /// <summary>
    /// Share c in [0, 1) of the noise re-injected between steps that is carried over from the step's input rather than
    /// fresh: before step k + 1, x = x0 + s_(k+1) (c (x - x0) / s_k + sqrt(1 - c^2) n_k). 0 (DMD2's backward simulation):
    /// all fresh. The chain's inputs then keep more of the starting noise, and with it of the samples' variety.
    /// </summary>
    public double StepNoiseCarry { get; }
    /// <summary>The network's description (set by <see cref="Load"/>; needed by <see cref="Sample"/>).</summary>
    public Networks.NetworkSpec? Spec { get; init; }

    /// <summary>Wraps a denoiser as the one-step G(z, y) = net(sigma_max z, sigma_max, y); <see cref="Spec"/> stays null unless set.</summary>
    public OneStepGenerator(EdmPrecond net, double sigmaMax = KarrasSchedule.DefaultSigmaMax) : this(net, new[] { sigmaMax }) { }

    /// <summary>Wraps a denoiser as a generator on the given decreasing noise levels (the first is sigma_max), with
    /// <paramref name="stepNoiseCarry"/> (<see cref="StepNoiseCarry"/>) between its steps.</summary>
    public OneStepGenerator(EdmPrecond net, IReadOnlyList<double> sigmas, double stepNoiseCarry = 0)
    {
        if (sigmas.Count < 1 || sigmas.Any(s => !(s > 0)) || sigmas.Zip(sigmas.Skip(1)).Any(p => !(p.First > p.Second)))
            throw new DmdInputException($"generator noise levels [{string.Join(", ", sigmas)}]: need at least one, all positive and decreasing");
        if (!(stepNoiseCarry >= 0 && stepNoiseCarry < 1))
            throw new DmdInputException($"step-noise-carry {stepNoiseCarry}: must lie in [0, 1) (0: fresh noise between steps, as DMD2)");
        Net = net;
        Sigmas = sigmas.ToArray();
        StepNoiseCarry = stepNoiseCarry;
        if (net.Backbone is StepNetworks own) own.Bind(Sigmas);
    }

    /// <summary>Steps with a network each (<see cref="StepNetworks"/>): the number of steps; 0 when they share one.</summary>
    public int StepNetworkCount => (Net.Backbone as StepNetworks)?.Count ?? 0;

    /// <summary>
    /// A freshly initialised network for a generator of <paramref name="spec"/>: the spec's own, or with
    /// <paramref name="stepNetworks"/> of 2 or more, one copy of its raw network per step (<see cref="StepNetworks"/>).
    /// </summary>
    public static EdmPrecond BuildNet(NetworkSpec spec, int stepNetworks) =>
        stepNetworks >= 2 ? new EdmPrecond(new StepNetworks(spec, stepNetworks), spec.SigmaData) : spec.Build();

    /// <summary>
    /// Sets <paramref name="target"/>'s weights from <paramref name="source"/> of the same spec: a plain copy, or into every
    /// step network of <paramref name="target"/> when only it has them (starting separate step networks from the teacher
    /// or from a generator whose steps share one network).
    /// </summary>
    public static void CopyNet(EdmPrecond source, EdmPrecond target)
    {
        if (target.Backbone is StepNetworks own && source.Backbone is not StepNetworks) own.CopyToEach(source.Backbone);
        else if (source.Backbone is StepNetworks s && target.Backbone is StepNetworks t && s.Count != t.Count)
            throw new DmdInputException($"a generator with {s.Count} step networks cannot start one with {t.Count}: give it as many steps");
        else if (source.Backbone is StepNetworks && target.Backbone is not StepNetworks)
            throw new DmdInputException("a generator with separate step networks cannot start one whose steps share a network: add --separate-step-networks");
        else Training.TrainingUtils.CopyWeights(source, target);
    }

    /// <summary>
    /// The K noise levels of a K-step generator: geometric from <paramref name="sigmaMax"/> down to <paramref name="last"/>
    /// (4 steps from 80 to 1: 80, 18.6, 4.31, 1); one step: sigma_max alone.
    /// </summary>
    public static double[] Levels(double sigmaMax, double last, int steps) =>
        steps == 1 ? new[] { sigmaMax } : Enumerable.Range(0, steps).Select(k => sigmaMax * Math.Pow(last / sigmaMax, k / (double)(steps - 1))).ToArray();

    /// <summary>
    /// DMD2's K levels in EDM's terms: <paramref name="sigmaMax"/>, then the noise levels whose signal-to-noise ratio for
    /// data of standard deviation <paramref name="sigmaData"/> is that of DMD2's timesteps 999 - k (1000 / K) on Stable
    /// Diffusion's schedule for its unit-variance latents: sigma_data sigma_SD(t_k) (4 steps at sigma_data 0.5: 80, 2.04,
    /// 0.80, 0.35). DMD2's first step also starts from (almost) pure noise, here the EDM teacher's sigma_max.
    /// </summary>
    public static double[] Dmd2Levels(double sigmaMax, int steps, double sigmaData)
    {
        var sd = Diffusion.DiscreteVpSchedule.StableDiffusion15;
        int n = sd.NumTrainTimesteps;
        return Enumerable.Range(0, steps).Select(k => k == 0 ? sigmaMax : sigmaData * sd.TrainSigmas[n - 1 - k * (n / steps)]).ToArray();
    }

    /// <summary>
    /// Loads a distilled generator: a generator.safetensors (with its .json spec) or a folder holding one,
    /// e.g. <c>OneStepGenerator.Load("models/fashion-mnist-student")</c>; or a `dmd distill` run's checkpoint
    /// (<c>RUN/checkpoint</c> for the latest, <c>RUN/checkpoint/step-NNNNNNNN</c>, or a run folder without
    /// generator.safetensors yet), read as the generator the run would write if stopped there (<see cref="DistillCheckpoint"/>).
    /// </summary>
    public static OneStepGenerator Load(string path)
    {
        if (DistillCheckpoint.Locate(path) is { } checkpoint) return checkpoint.Load();
        var file = Networks.DenoiserFile.Resolve(path, FileName);
        var spec = Networks.DenoiserFile.LoadSpec(file);
        var net = BuildNet(spec, (int)(Networks.DenoiserFile.ReadExtra(file, StepNetworksKey) ?? 0)); // older files: shared
        IO.Checkpoint.LoadModule(net, file);
        net.eval();
        Training.TrainingUtils.Freeze(net);
        double sigmaMax = Networks.DenoiserFile.ReadExtra(file, SigmaMaxKey) ?? KarrasSchedule.DefaultSigmaMax; // older files: 80
        int steps = (int)(Networks.DenoiserFile.ReadExtra(file, StepsKey) ?? 1);                                 // older files: one step
        var sigmas = new double[Math.Max(1, steps)];
        sigmas[0] = sigmaMax;
        for (int k = 1; k < sigmas.Length; k++)
            sigmas[k] = Networks.DenoiserFile.ReadExtra(file, $"Sigma{k}") ?? throw new DmdInputException($"{file}: a {steps}-step generator without the noise level of step {k + 1} (Sigma{k}) in its .json; the file is damaged");
        double carry = Networks.DenoiserFile.ReadExtra(file, StepNoiseCarryKey) ?? 0;                       // older files: fresh noise
        return new OneStepGenerator(net, sigmas, carry) { Spec = spec };
    }

    /// <summary>The same network and levels sampled with another <see cref="StepNoiseCarry"/> (e.g. `dmd eval
    /// --step-noise-carry` on a generator trained with another): the weights are shared, not copied.</summary>
    public OneStepGenerator WithStepNoiseCarry(double carry) => new(Net, Sigmas, carry) { Spec = Spec };

    /// <summary>
    /// Writes a `dmd distill` run's checkpoint (<c>RUN/checkpoint</c> for the latest, or <c>RUN/checkpoint/step-NNNNNNNN</c>)
    /// as a generator folder in <paramref name="outDir"/> (generator.safetensors and .json, the run's config.json), the
    /// generator the run would write if stopped there: e.g. to keep a good step before the run goes on past it (a run keeps
    /// only its latest checkpoint). Refuses a
    /// folder that already holds a generator. Returns the checkpoint's step.
    /// </summary>
    public static int ExportCheckpoint(string checkpoint, string outDir) =>
        (DistillCheckpoint.Locate(checkpoint) ?? throw new DmdInputException(
            File.Exists(Path.Combine(checkpoint, FileName))
                ? $"{checkpoint} is a generator folder already (it holds {FileName}): sample, eval and --init-generator read it as it is; to average generators, give two or more --model"
                : $"{checkpoint} is not a `dmd distill` run's checkpoint: name RUN/checkpoint (the latest) or RUN/checkpoint/step-NNNNNNNN"))
        .Export(outDir);

    /// <summary>
    /// Writes the element-wise mean of several generators' weights as a model folder in <paramref name="outDir"/>: a
    /// post-hoc weight average over a run's steps (e.g. the folders `distill --keep-every` keeps, RUN/kept/step-NNNNNNNN,
    /// or checkpoints), longer than the run's own moving average. Each source is read as <see cref="Load"/> reads it; all
    /// must share the network's spec and noise levels. Beside the generator files: the config.json of the last source
    /// that has one (a checkpoint's run config with its step) and average.json naming the sources (full paths). Refuses a
    /// folder that already holds a generator, a run's folder and any folder inside a run's checkpoint/ or kept/. E.g. <c>OneStepGenerator.ExportAverage(new[] { "runs/r/kept/step-00000350", "runs/r/kept/step-00000400" }, "models/mine")</c>.
    /// </summary>
    public static void ExportAverage(IReadOnlyList<string> sources, string outDir)
    {
        if (sources.Count < 2) throw new DmdInputException("an average needs at least two generators");
        var target = DistillCheckpoint.ExportTarget(outDir);
        var generators = sources.Select(Load).ToList();
        var first = generators[0];
        for (int i = 1; i < generators.Count; i++)
        {
            if (!Equals(generators[i].Spec, first.Spec))
                throw new DmdInputException($"{sources[i]} is another network ({generators[i].Spec}) than {sources[0]} ({first.Spec}): only generators of one architecture average");
            if (generators[i].Sigmas.Count != first.Sigmas.Count || generators[i].Sigmas.Zip(first.Sigmas).Any(p => Math.Abs(p.First - p.Second) > 1e-9 * Math.Abs(p.Second)))
                throw new DmdInputException($"{sources[i]} samples on other noise levels ({string.Join(", ", generators[i].Sigmas)}) than {sources[0]} " +
                                            $"({string.Join(", ", first.Sigmas)}): only generators of one run's settings average");
        }
        var spec = first.Spec ?? throw new DmdInputException($"{sources[0]}: a generator without its spec (.json) cannot be averaged");
        if (generators.Any(g => g.StepNoiseCarry != first.StepNoiseCarry))
            throw new DmdInputException($"{sources[0]} and {sources[generators.FindIndex(g => g.StepNoiseCarry != first.StepNoiseCarry)]} differ in step-noise-carry: only generators of one run's settings average");
        if (generators.Any(g => g.StepNetworkCount != first.StepNetworkCount))
            throw new DmdInputException($"{sources[0]} and {sources[generators.FindIndex(g => g.StepNetworkCount != first.StepNetworkCount)]} differ in separate step networks: only generators of one run's settings average");
        var net = BuildNet(spec, first.StepNetworkCount);
        using (no_grad())
        {
            var weights = generators.Select(g => g.Net.state_dict()).ToList();
            foreach (var (name, t) in net.state_dict())
                t.copy_(t.is_floating_point() ? stack(weights.Select(w => w[name]).ToArray()).mean(new long[] { 0 }) : weights[0][name]);
        }
        net.eval();
        Training.TrainingUtils.Freeze(net);
        Directory.CreateDirectory(outDir);
        DmdTrainer.SaveGenerator(new OneStepGenerator(net, first.Sigmas, first.StepNoiseCarry) { Spec = spec }, spec, target);
        var config = sources.Select(RunConfig).LastOrDefault(c => c is not null);
        if (config is not null) IO.Checkpoint.SaveJson(config, Path.Combine(outDir, "config.json"));
        IO.Checkpoint.SaveJson(new { Sources = sources.Select(Path.GetFullPath) }, Path.Combine(outDir, "average.json"));
    }

    /// <summary>The run config of a source: a checkpoint's (its Steps the checkpoint's step) or a model folder's config.json; null when none.</summary>
    static DmdRunInfo? RunConfig(string source)
    {
        if (DistillCheckpoint.Locate(source) is { } c)
            return c.Step is int step ? c.Info.AtStep(step) : c.Info;
        var file = Path.Combine(Directory.Exists(source) ? source : Path.GetDirectoryName(Path.GetFullPath(source))!, "config.json");
        try { return File.Exists(file) ? IO.Checkpoint.LoadJson<DmdRunInfo>(file) : null; }
        catch (DmdInputException) { return null; } // another kind of config.json (a teacher run's): none to keep
    }

    /// <summary>The generator's file name in a run folder.</summary>
    public const string FileName = "generator.safetensors";
    const string SigmaMaxKey = "SigmaMax", StepsKey = "Steps", StepNetworksKey = "StepNetworks", StepNoiseCarryKey = "StepNoiseCarry";

    /// <summary>Writes the generator as a loadable model: weights, the network's spec, the sigma_max it maps noise from
    /// and, for K steps, K and the further noise levels (Sigma1, Sigma2, ...), with separate step networks their count and
    /// with a step-noise carry its value.</summary>
    public void Save(string path, Networks.NetworkSpec spec)
    {
        var extra = new Dictionary<string, double> { [SigmaMaxKey] = SigmaMax };
        if (Steps > 1)
        {
            extra[StepsKey] = Steps;
            for (int k = 1; k < Steps; k++) extra[$"Sigma{k}"] = Sigmas[k];
            if (StepNetworkCount > 0) extra[StepNetworksKey] = StepNetworkCount;
            if (StepNoiseCarry > 0) extra[StepNoiseCarryKey] = StepNoiseCarry;
        }
        Networks.DenoiserFile.Save(Net, spec, path, extra);
    }

    /// <summary>
    /// One image per requested class (or <paramref name="count"/> images of an unconditional model), in [-1, 1],
    /// shape (N, C, H, W); image i uses noise seed <paramref name="seed"/> + i as `dmd sample` does (and, between steps,
    /// <see cref="SeededStepNoise"/>). <paramref name="steps"/>: how many of the trained steps to run (default all;
    /// fewer stops early at the output of that step, which the generator was also trained on).
    /// <c>var images = OneStepGenerator.Load(dir).Sample(new[] { 0, 1, 9 });</c> then <c>ImageGrid.Save("out.png", images, 3)</c>.
    /// </summary>
    public Tensor Sample(IReadOnlyList<int>? classes = null, int count = 1, long seed = 0, int? steps = null)
    {
        var spec = Spec ?? throw new InvalidOperationException("Sample needs the generator's spec: load it with OneStepGenerator.Load");
        int labelDim = Net.LabelDim;
        if (labelDim > 0 && classes is null) throw new ArgumentException($"the generator is class-conditional: give classes (0..{labelDim - 1})");
        if (classes?.FirstOrDefault(c => c < 0 || c >= labelDim, -1) is int bad and >= 0)
            throw new ArgumentException($"class {bad} is out of range: the generator has {labelDim} classes");
        int n = classes?.Count ?? count;
        int k = CheckSteps(steps);
        var z = ImageSampling.SeededNoise(spec.SampleShape, seed, n);
        var y = labelDim > 0 ? Rng.OneHot(tensor(classes!.Select(c => (long)c).ToArray()), labelDim) : null;
        using var _ = no_grad();
        var dev = Net.Device;
        return Generate(z.to(dev), y?.to(dev), SeededStepNoise(spec.SampleShape, seed, n, k).Select(t => t.to(dev)).ToArray(), k).cpu();
    }

    /// <summary>The number of steps to run: <paramref name="steps"/> (1..<see cref="Steps"/>) or all trained ones.</summary>
    public int CheckSteps(int? steps) => steps switch
    {
        null => Steps,
        int s when s >= 1 && s <= Steps => s,
        int s => throw new DmdInputException($"--steps {s}: this generator was trained for {Steps} step{(Steps == 1 ? "" : "s")}; use 1..{Steps}"),
    };

    /// <summary>
    /// The noise re-injected between the steps of a K-step sample, for images seeded <paramref name="firstSeed"/> + i:
    /// K - 1 tensors shaped (count, shape), image i's drawn from a generator seeded with a fixed mix of firstSeed + i
    /// (a stream apart from the one its starting noise z comes from). Empty for one step.
    /// </summary>
    public static Tensor[] SeededStepNoise(int[] shape, long firstSeed, int count, int steps)
    {
        if (steps <= 1) return Array.Empty<Tensor>();
        var one = shape.Select(s => (long)s).ToArray();
        var rows = new Tensor[steps - 1][];
        for (int k = 0; k < steps - 1; k++) rows[k] = new Tensor[count];
        using var scope = NewDisposeScope();
        for (int i = 0; i < count; i++)
        {
            using var g = new Generator(unchecked((ulong)(firstSeed + i) * 0x9E3779B97F4A7C15UL + 0x2545F4914F6CDD1DUL));
            for (int k = 0; k < steps - 1; k++) rows[k][i] = randn(one, generator: g);
        }
        return rows.Select(r => (count == 0 ? zeros(new long[] { 0 }.Concat(one).ToArray()) : stack(r)).MoveToOuterDisposeScope()).ToArray();
    }

    /// <summary>
    /// <see cref="Generate"/> over many samples, <paramref name="batch"/> at a time, without gradients, each batch in
    /// its own dispose scope, on the network's device (the results come back on z's); <paramref name="onBatch"/> gets
    /// (done, total) after each batch. With <paramref name="finish"/> the last of the <paramref name="steps"/> outputs is
    /// re-noised to the next level (<see cref="Input"/>) and handed to it with the labels instead: e.g. a teacher's ODE
    /// from there (needs steps below <see cref="Steps"/> and their noise).
    /// </summary>
    public Tensor GenerateInBatches(Tensor z, Tensor? labels, int batch, Action<int, int>? onBatch = null,
                                    IReadOnlyList<Tensor>? stepNoise = null, int? steps = null, Func<Tensor, Tensor?, Tensor>? finish = null)
    {
        var parts = new List<Tensor>();
        using var _ = no_grad();
        int n = (int)z.shape[0];
        for (int i = 0; i < n; i += batch)
        {
            int j = Math.Min(n, i + batch);
            using var scope = NewDisposeScope();
            var dev = Net.Device; // one batch at a time on the network's device, the results back on z's
            var (zb, yb, noise) = (z[i..j].to(dev), labels?[i..j].to(dev), stepNoise?.Select(t => t[i..j].to(dev)).ToArray());
            parts.Add((finish is null ? Generate(zb, yb, noise, steps) : finish(Input(zb, yb, CheckSteps(steps), noise), yb))
                .to(z.device).MoveToOuterDisposeScope());
            onBatch?.Invoke(j, n);
        }
        return parts.Count == 0 ? z.clone() : cat(parts);
    }

    /// <summary>
    /// Maps standard normal noise <paramref name="z"/> (and labels) to samples: one network evaluation per step.
    /// A K-step generator needs <paramref name="stepNoise"/>, the standard normal noise added before steps 2..K (each
    /// shaped as z; e.g. <see cref="SeededStepNoise"/>); <paramref name="steps"/> runs only the first ones.
    /// </summary>
    public Tensor Generate(Tensor z, Tensor? labels = null, IReadOnlyList<Tensor>? stepNoise = null, int? steps = null)
    {
        int k = CheckSteps(steps);
        return Denoise(Input(z, labels, k - 1, stepNoise), k - 1, labels);
    }

    /// <summary>One step: the generator's clean estimate from <paramref name="x"/> at its noise level number <paramref name="level"/>.</summary>
    public Tensor Denoise(Tensor x, int level, Tensor? labels = null) =>
        Net.Denoise(x, DenoiserExtensions.Full(Sigmas[level], x), labels);

    /// <summary>
    /// The input of step <paramref name="level"/> (0-based): sigma_max z for the first; for a later one the generator's own
    /// chain run to it (DMD2's backward simulation when called without gradient): each earlier step's output re-noised
    /// with <paramref name="stepNoise"/> to the next level (and with <see cref="StepNoiseCarry"/>, partly with its input's noise).
    /// </summary>
    public Tensor Input(Tensor z, Tensor? labels, int level, IReadOnlyList<Tensor>? stepNoise)
    {
        if (level < 0 || level >= Steps) throw new ArgumentOutOfRangeException(nameof(level), $"level {level}: the generator has {Steps} levels");
        if (level > 0 && (stepNoise is null || stepNoise.Count < level))
            throw new ArgumentException($"step {level + 1} of a {Steps}-step generator needs the noise of steps 2..{level + 1} (stepNoise)");
        var x = z * DenoiserExtensions.Const(SigmaMax, z);
        double fresh = Math.Sqrt(1 - StepNoiseCarry * StepNoiseCarry);
        for (int j = 0; j < level; j++)
        {
            var x0 = Denoise(x, j, labels);
            x = StepNoiseCarry == 0 ? x0 + stepNoise![j] * Sigmas[j + 1]
                : x0 + ((x - x0) * (StepNoiseCarry / Sigmas[j]) + stepNoise![j] * fresh) * Sigmas[j + 1];
        }
        return x;
    }
}
