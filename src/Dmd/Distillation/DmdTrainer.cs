using Dmd.Data;
using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>What a DMD run saves beside its checkpoints; <paramref name="GanData"/> names the real data of the GAN head (null when off),
/// <paramref name="Prompts"/> the prompts file of a text-to-image teacher (null for class labels).</summary>
internal sealed record DmdRunInfo(NetworkSpec Spec, DmdConfig Config, string Teacher, string? Pairs, string? GanData = null, string? Prompts = null)
{
    /// <summary>The run's settings as a generator written at <paramref name="step"/> records them: Steps set to that step.</summary>
    public DmdRunInfo AtStep(int step) => this with { Config = Config with { Steps = step } };
}

/// <summary>
/// Distribution Matching Distillation (Yin et al. 2024, Algorithm 1; DESIGN.md section 3), generic over the
/// network and the shape of the data. Three networks with the teacher's architecture: the frozen real
/// denoiser (the teacher), the fake denoiser and the generator, both initialised from the teacher.
/// Each <see cref="TrainStep"/> updates the generator once, then the fake denoiser
/// <see cref="DmdConfig.FakeUpdatesPerStep"/> times: first on the generated batch of the generator update (the paper's
/// DMD when it is 1), then each time on a fresh batch of the updated generator (DMD2's two time-scale update rule).
/// With <see cref="DmdConfig.GanWeight"/> &gt; 0, DMD2's GAN: a classifier head (<see cref="GanHead"/>) on the fake
/// denoiser's features learns, with the fake denoiser, to tell noised real data from noised generated samples, and the
/// generator is trained to fool it.
/// A K-step generator with <see cref="DmdConfig.FakePerLevel"/> has one fake denoiser (and optimiser) per step: each
/// update trains and uses the one of the level its batch came from.
/// All randomness flows from one generator, saved with the checkpoint, so a resumed run continues bit for bit.
/// In a data-parallel run (<see cref="DataParallel"/>) each rank draws its share of every batch and the gradients of
/// each trained network are averaged over the ranks before its optimiser step.
/// </summary>
public sealed class DmdTrainer : IResumableTrainer, IDisposable
{
    /// <summary>The run's hyper-parameters.</summary>
    public DmdConfig Config { get; }
    /// <summary>The teacher's spec with dropout 0: the architecture of the fake denoiser and the generator.</summary>
    public NetworkSpec Spec { get; }
    /// <summary>The real denoiser: the teacher, frozen; with <see cref="DmdConfig.GuidanceReal"/> it gives the real score.</summary>
    public EdmPrecond Real { get; }
    /// <summary>
    /// The fake denoiser, trained by denoising on generated samples so that it tracks the generator's distribution (with
    /// <see cref="DmdConfig.FakePerLevel"/>, the first step's: <see cref="Fakes"/>[0]).
    /// </summary>
    public EdmPrecond Fake => Fakes[0];
    /// <summary>The fake denoisers: one, or with <see cref="DmdConfig.FakePerLevel"/> one per generator step, each tracking that step's outputs.</summary>
    public IReadOnlyList<EdmPrecond> Fakes { get; }
    /// <summary>The one-step generator being trained (its raw weights).</summary>
    public OneStepGenerator Generator { get; }
    /// <summary>The moving average of the generator's weights when <see cref="DmdConfig.EmaDecay"/> &gt; 0, else null.</summary>
    public OneStepGenerator? Ema { get; }
    /// <summary>The generator a run shows and saves: the average when there is one, else the trained weights.</summary>
    public OneStepGenerator Output => Ema ?? Generator;
    /// <summary>DMD iterations done so far.</summary>
    public int Step { get; private set; }
    /// <summary>DMD2's GAN classifier head on the fake denoiser's features when <see cref="DmdConfig.GanWeight"/> &gt; 0, else null.</summary>
    public GanClassifier? GanHead { get; }

    /// <summary>The regression distance in use ("l2", "lpips" or "pseudo-huber"; "auto" resolved).</summary>
    public string RegressionLoss { get; }

    private readonly RegressionPairs? pairs;
    private readonly Func<Tensor, Tensor, Tensor> regressionDistance;
    private readonly IDisposable? regressionNet; // the LPIPS network when the regression loss is lpips
    private readonly IDenoiser realGuided;
    private readonly IDenoiser[] fakeScores; // each fake denoiser as the generator's loss reads it: with guidance-fake's CFG
    /// <summary>Where the teacher's ODE of an online regression target ends before its last step to 0: the grid's lowest level.</summary>
    private readonly double odeSigmaMin;
    private readonly int[] dmMaxIndex; // the DM grid indices' upper end per generator level (dm-level-cap)
    private readonly optim.Optimizer optG;
    private readonly optim.Optimizer[] optF;   // one per fake denoiser
    private readonly optim.Optimizer? optH;    // the GAN head's, when on
    private readonly IDataSource? realData;    // the GAN's real samples, when on
    private readonly Tensor grid;
    private readonly Generator rng;
    private readonly Device device;
    private readonly long[] sampleShape;
    private readonly bool initPending; // InitGenerator named but absent: fine for a resume, an error for a fresh start
    private readonly int batch, regressionBatch; // this rank's shares of the batches (all of them in one process)

    /// <summary>What the generator is conditioned on (class labels or text prompts) and how a batch draws it.</summary>
    public Conditions Conditions { get; }

    /// <summary>
    /// Turns the generator's samples into images for the progress grids when they are latents (a text-to-image teacher's
    /// VAE decoder); null for a teacher that makes images itself. Grids are drawn for image and latent teachers.
    /// </summary>
    public Func<Tensor, Tensor>? DecodeLatents { get; init; }

    /// <param name="teacher">The real denoiser (frozen).</param>
    /// <param name="spec">The teacher's description: sample shape, classes, sigma_data, and how to build its copies.</param>
    /// <param name="config">The run's hyper-parameters.</param>
    /// <param name="pairs">Regression pairs (not needed when <see cref="DmdConfig.UsesPairs"/> is false: DmOnly, or Full with lambda_reg 0 as DMD2 trains).</param>
    /// <param name="device">Where the three networks live (CPU by default).</param>
    /// <param name="buildNetwork">Makes a fresh network of the teacher's architecture for the fake denoiser and the
    /// generator (their weights are then copied from the teacher); <see cref="NetworkSpec.Build"/> by default. Give it
    /// when the teacher's architecture is not one a <see cref="NetworkSpec"/> describes.</param>
    /// <param name="realData">Real training samples for the GAN head (needed when <see cref="DmdConfig.GanWeight"/> &gt; 0,
    /// not used otherwise): the teacher's sample shape, and its classes when it is conditional. Drawn with the run's generator.</param>
    /// <param name="conditions">What the generator is conditioned on: null = the teacher's classes (<see cref="NetworkSpec.LabelDim"/>);
    /// <see cref="PromptConditions"/> for a text-to-image teacher (an <see cref="SdUNetSpec"/>).</param>
    public DmdTrainer(EdmPrecond teacher, NetworkSpec spec, DmdConfig config, RegressionPairs? pairs, Device? device = null,
                      Func<EdmPrecond>? buildNetwork = null, IDataSource? realData = null, Conditions? conditions = null)
    {
        config.Validate();
        Conditions = conditions ?? Conditions.Classes(spec.LabelDim);
        if (spec.IsLatent != Conditions is PromptConditions)
            throw new DmdInputException(spec.IsLatent ? "a text-to-image teacher is conditioned on prompts: give a prompts file (--prompts FILE, one prompt a line)"
                                                      : "prompts condition a text-to-image teacher only; this teacher takes class labels");
        if (config.FakeLabelDropout > 0 && spec.LabelDim == 0 && Conditions is not PromptConditions)
            throw new DmdInputException($"fake-label-dropout {config.FakeLabelDropout:G}: the teacher is unconditional, so there is no condition to drop; leave it (and guidance-fake) out");
        if (teacher.Schedule is { } vp)
        {
            // DMD on an eps-prediction teacher (Stable Diffusion): noise levels are its 1000 training sigmas, the generator maps
            // noise at the last one (DMD's timestep 999) and DM levels are timesteps [min-step, max-step] of them
            if (config.GridLevels != vp.NumTrainTimesteps)
                throw new DmdInputException($"grid-levels {config.GridLevels}: a VP teacher's noise levels are its {vp.NumTrainTimesteps} training timesteps; set grid-levels {vp.NumTrainTimesteps}");
            if (Math.Abs(config.SigmaMax - vp.SigmaMax) > 1e-4 * vp.SigmaMax)
                throw new DmdInputException($"sigma-max {config.SigmaMax:G}: the generator of a VP teacher starts at its largest training sigma {vp.SigmaMax:G6}; set sigma-max {vp.SigmaMax:G9}");
        }
        if ((config.FeatureEnergyGroup > 0 || config.FeatureEnergyUnconditional) && Conditions is not ClassConditions { LabelDim: > 0 })
        {
            var (setting, off) = config.FeatureEnergyGroup > 0 ? ($"feature-energy-group {config.FeatureEnergyGroup} groups the batch by class", "set feature-energy-group 0")
                                                               : ("feature-energy-unconditional drops the class from the features", "leave it out");
            throw new DmdInputException($"{setting}, and this teacher is {(Conditions is ClassConditions ? "unconditional" : "conditioned on prompts")}: {off}");
        }
        if (config.UsesRealData) CheckRealData(realData, spec, config);
        else realData = null; // GAN and feature energy off: real data given anyway is not used
        this.realData = realData;
        if (config.TeacherRegressionSteps > 0 && pairs is not null)
            throw new DmdInputException($"teacher-regression-steps {config.TeacherRegressionSteps}: the regression targets are made by the teacher during training; leave --pairs out, or set teacher-regression-steps 0 to use the pairs");
        if (config.UsesPairs && pairs is null)
            throw new DmdInputException($"mode {config.Mode}{(config.Mode == DmdMode.Full ? $" with lambda-reg {config.LambdaReg:G}" : "")} needs regression pairs: make them with `dmd pairs`" +
                                        (config.Mode == DmdMode.Full ? ", or train on distribution matching alone with lambda-reg 0 (DMD2) or mode DmOnly" : ""));
        if (config.MinStep < 0 || config.MaxStep >= config.GridLevels || config.MinStep > config.MaxStep)
            throw new DmdInputException($"noise-level index range [{config.MinStep}, {config.MaxStep}] must lie inside [0, {config.GridLevels - 1}]");
        if (pairs is not null && !pairs.Z.shape.Skip(1).SequenceEqual(spec.SampleShape.Select(s => (long)s)))
            throw new DmdInputException($"regression pairs have samples of shape [{string.Join(",", pairs.Z.shape.Skip(1))}] but the teacher makes [{string.Join(",", spec.SampleShape)}]; regenerate them with this teacher");
        if (!config.UsesPairs) pairs = null; // DM only: pairs given anyway are not used
        if (pairs is not null) CheckPairsMatch(pairs.Info, config);
        if (pairs is not null && (pairs.Prompts is not null) != (Conditions is PromptConditions))
            throw new DmdInputException(pairs.Prompts is null ? "these regression pairs carry class labels, not prompts: make pairs for the text-to-image teacher with `dmd pairs --prompts FILE`"
                                                              : "these regression pairs were made from prompts, for a text-to-image teacher, not for this one");
        if (pairs?.Prompts is { } pairPrompts && !pairPrompts.SequenceEqual(((PromptConditions)Conditions).Prompts))
            throw new DmdInputException($"the regression pairs were made for other prompts ({pairPrompts.Count} in their {RegressionPairs.PromptsFile}); distil with the same prompts file, or make pairs for this one");
        Config = config;
        batch = DataParallel.Share(config.BatchSize, "batch-size");
        regressionBatch = pairs is null ? 0 : DataParallel.Share(config.RegressionBatchSize, "regression-batch-size");
        Spec = spec.WithoutDropout(); // DESIGN.md: dropout off in all three networks
        this.device = device ?? CPU;
        this.pairs = pairs;
        sampleShape = spec.SampleShape.Select(s => (long)s).ToArray();
        rng = new Generator((ulong)config.Seed);
        torch.manual_seed(config.Seed);

        Real = teacher;
        Real.to(this.device);
        TrainingUtils.Freeze(Real);
        var realInterval = GuidanceInterval.Parse(config.GuidanceRealInterval, "guidance-real-interval");
        realGuided = Conditions.Guided(Real, config.GuidanceReal, realInterval);
        var build = buildNetwork ?? Spec.Build;
        Fakes = Enumerable.Range(0, config.FakePerLevel ? config.GeneratorSteps : 1).Select(_ =>
        {
            var fake = build(); fake.to(this.device);
            TrainingUtils.CopyWeights(Real, fake);
            return fake;
        }).ToArray();
        var fakeInterval = realInterval is null ? null : realInterval with { Outside = 1 };
        fakeScores = Fakes.Select(f => Conditions.Guided(f, config.GuidanceFake, fakeInterval)).ToArray();
        var buildGenerator = config.SeparateStepNetworks ? () => OneStepGenerator.BuildNet(Spec, config.StepNetworkCount) : build;
        var genNet = buildGenerator(); genNet.to(this.device);
        OneStepGenerator.CopyNet(Real, genNet);
        Generator = new OneStepGenerator(genNet, config.GeneratorSigmas(Spec.SigmaData), config.StepNoiseCarry);
        // a resumed run takes its weights from the checkpoint, so the starting model need not be there any more
        initPending = config.InitGenerator is not null && !File.Exists(config.InitGenerator) && !Directory.Exists(config.InitGenerator);
        if (config.InitGenerator is not null && !initPending)
            using (var start = InitialGenerator(config.InitGenerator)) OneStepGenerator.CopyNet(start, genNet);
        if (config.EmaDecay > 0)
        {
            var emaNet = buildGenerator(); emaNet.to(this.device);
            TrainingUtils.CopyWeights(genNet, emaNet);
            TrainingUtils.Freeze(emaNet);
            Ema = new OneStepGenerator(emaNet, config.GeneratorSigmas(Spec.SigmaData), config.StepNoiseCarry);
        }

        if (config.UsesGan) // initialised from torch's global generator, seeded above; DMD2 trains it with the fake denoiser
        {
            GanHead = new GanClassifier(Fake.FeatureShape ?? throw new DmdInputException(
                $"{config.GanReason}: the {Fake.Backbone.GetType().Name} network exposes no features for a GAN head; use an mlp, ddpmpp or adm teacher or set {config.GanOff}"));
            GanHead.to(this.device);
        }

        double lr = LearningRate;
        optG = optim.AdamW(genNet.parameters(), lr, config.Beta1, config.Beta2, weight_decay: config.WeightDecay);
        optF = Fakes.Select(f => optim.AdamW(f.parameters(), lr, config.Beta1, config.Beta2, weight_decay: config.WeightDecay)).ToArray();
        if (GanHead is not null)
            optH = optim.AdamW(GanHead.parameters(), lr, config.Beta1, config.Beta2, weight_decay: config.WeightDecay);
        grid = (teacher.Schedule is { } schedule ? torch.tensor(schedule.TrainSigmas.ToArray(), dtype: ScalarType.Float32) /* float32 values */
                                                  : KarrasSchedule.AscendingGrid(config.GridLevels, config.SigmaMin, config.SigmaMax)).to(this.device);
        (RegressionLoss, regressionDistance, regressionNet) = ResolveRegressionLoss(config, this.device);
        odeSigmaMin = grid[0].item<float>();
        dmMaxIndex = DmMaxIndices(grid.cpu().to_type(ScalarType.Float64).data<double>().ToArray(), Generator.Sigmas, config);
    }

    /// <summary>The largest DM grid index for each generator level: max-step, or with dm-level-cap C at a level k &gt; 0
    /// the largest index whose noise level is at most C sigma_k (never below min-step).</summary>
    internal static int[] DmMaxIndices(double[] grid, IReadOnlyList<double> levels, DmdConfig config) =>
        levels.Select((sigma, k) =>
        {
            if (k == 0 || config.DmLevelCap <= 0) return config.MaxStep;
            int i = config.MaxStep;
            while (i > config.MinStep && grid[i] > config.DmLevelCap * sigma) i--;
            return i;
        }).ToArray();

    /// <summary>
    /// Pairs are the teacher's ODE output for noise z scaled by their sigma_max with their guidance; the generator maps
    /// z scaled by the run's sigma_max and learns the guided real score, so both must agree or the regression target
    /// is another map than the one distilled.
    /// </summary>
    static void CheckPairsMatch(PairInfo info, DmdConfig config)
    {
        if (info.SigmaMax != config.SigmaMax)
            throw new DmdInputException($"the regression pairs start at sigma_max {info.SigmaMax:G} but the run's sigma-max is {config.SigmaMax:G}: make pairs with `--sigma-max {config.SigmaMax:G}` or distil with sigma-max {info.SigmaMax:G}");
        if (info.Guidance != config.GuidanceReal)
            throw new DmdInputException($"the regression pairs were made with guidance {info.Guidance:G} but the run's guidance-real is {config.GuidanceReal:G}: make pairs with `--guidance {config.GuidanceReal:G}` or distil with guidance-real {info.Guidance:G}");
        if (config.GuidanceRealInterval is not null && config.GuidanceReal != 1)
            throw new DmdInputException($"guidance-real-interval {config.GuidanceRealInterval}: regression pairs are made with guidance at every level, so they would regress to another map; distil without pairs (lambda-reg 0) or without the interval");
    }

    /// <summary>The GAN (or the feature energy term) needs real samples of the teacher's shape (and classes); Validate has refused a fake denoiser that does not train.</summary>
    static void CheckRealData(IDataSource? data, NetworkSpec spec, DmdConfig config)
    {
        if (data is null)
            throw new DmdInputException($"{config.RealDataReason} needs real training data{(config.UsesGan ? " for the GAN head" : "")}: pass --gan-data (e.g. ring8, csv:PATH, fashion-mnist or folder:PATH), or set {config.RealDataOff}");
        if (config.GanMaxStep > config.GridLevels)
            throw new DmdInputException($"gan-max-step {config.GanMaxStep}: must be at most grid-levels {config.GridLevels} (noise-level indices [0, gan-max-step) of the grid)");
        if (!data.Shape.SequenceEqual(spec.SampleShape))
            throw new DmdInputException($"the GAN's real data has samples of shape [{string.Join(",", data.Shape)}] but the teacher makes [{string.Join(",", spec.SampleShape)}]; give --gan-data at the teacher's resolution and channels");
        if (spec.LabelDim > 0 && data.NumClasses != spec.LabelDim)
            throw new DmdInputException($"the teacher is conditional on {spec.LabelDim} classes but the GAN's real data has {(data.NumClasses == 0 ? "no labels" : $"{data.NumClasses} classes")}; give --gan-data with the teacher's labelled training data");
    }

    /// <summary>
    /// The training data of a teacher's run, as its <c>config.json</c> names it (<c>TeacherRunInfo.Data</c>, e.g. "ring8" or
    /// "fashion-mnist"): the GAN's default real data. Null when the teacher has no run folder (e.g. a converted EDM model).
    /// </summary>
    public static string? TeacherData(string teacherPath)
    {
        var full = Path.GetFullPath(teacherPath);
        var file = Path.Combine(Directory.Exists(full) ? full : Path.GetDirectoryName(full)!, "config.json");
        if (!File.Exists(file)) return null;
        try { return System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file))?["Data"]?.GetValue<string>(); }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException) { return null; }
    }

    /// <summary>
    /// The GAN's real data named by a <c>--data</c> text (<see cref="DataSource.Parse"/>) for a teacher: images at its
    /// resolution and channels (no flips), or points (a built-in distribution: <see cref="RealPoints"/> draws with seed 1,
    /// as `dmd train-teacher` draws them; or a CSV).
    /// </summary>
    public static IDataSource LoadRealData(string text, NetworkSpec spec)
    {
        var source = DataSource.Parse(text);
        if (source.IsImage != spec.IsImage)
            throw new DmdInputException($"--gan-data {text} is {(source.IsImage ? "image" : "point")} data but the teacher makes {(spec.IsImage ? "images" : "points")}; give the data it was trained on");
        return spec.IsImage ? source.LoadImages(spec.SampleShape[1], spec.SampleShape[0], xflip: false)
                            : source.LoadPoints(RealPoints, seed: 1, expectedDim: spec.SampleShape[0]);
    }

    /// <summary>
    /// A trainer from files, as `dmd distill` makes it: the teacher (a .safetensors or its run folder), the regression pairs
    /// (when the config uses them), and for the GAN its real data: <paramref name="ganData"/>, or when null the data the
    /// teacher's run learned (<see cref="TeacherData"/>; <paramref name="onMessage"/> says so). Returns the trainer and the
    /// GAN data's text (null when the GAN is off), which <see cref="Run"/> records. The networks live on <paramref name="device"/>
    /// (CPU by default); pairs and real data stay on the host and move there batch by batch.
    /// </summary>
    public static (DmdTrainer Trainer, string? GanData) FromFiles(string teacherPath, string? pairsPath, string? ganData, DmdConfig config,
                                                                  Action<string>? onMessage = null, Device? device = null)
    {
        var (net, spec) = DenoiserFile.Load(teacherPath);
        var pairs = pairsPath is not null ? RegressionPairs.Load(pairsPath) : null;
        var ganText = config.UsesRealData ? ganData ?? TeacherData(teacherPath) : null;
        if (ganText is not null && ganData is null) onMessage?.Invoke($"{(config.UsesGan ? "GAN data" : "real data")}: {ganText} (the teacher's training data)");
        var real = ganText is null ? null : LoadRealData(ganText, spec);
        return (new DmdTrainer(net, spec, config, pairs, device, realData: real), ganText);
    }

    /// <summary>Points drawn from a built-in distribution for the GAN (`dmd train-teacher`'s default --train-points).</summary>
    public const int RealPoints = 50_000;

    /// <summary>The generator's starting weights: the teacher's (the paper), or a given model's of the same architecture (a distillation checkpoint: the weights it would write).</summary>
    EdmPrecond InitialGenerator(string path)
    {
        var start = OneStepGenerator.Load(path); // a checkpoint, or a generator folder or file (with its step networks, if any)
        var (net, spec) = (start.Net, start.Spec!);
        if (spec.WithoutDropout() != Spec)
            throw new DmdInputException($"--init-generator {path} has another architecture than the teacher ({spec}); start from a generator distilled from this teacher");
        return net;
    }

    /// <summary>A fresh run cannot start without the model <see cref="DmdConfig.InitGenerator"/> names.</summary>
    void CheckInitialGenerator()
    {
        if (initPending && Step == 0)
            throw new DmdInputException($"--init-generator {Config.InitGenerator} not found: make that student first (see the recipe that names it) or leave the option out to start from the teacher");
    }

    /// <summary>The regression distance of a config: "auto" is LPIPS when weights are given, else L2 (DESIGN.md).</summary>
    static (string, Func<Tensor, Tensor, Tensor>, IDisposable?) ResolveRegressionLoss(DmdConfig config, Device device)
    {
        var name = config.RegressionLoss.ToLowerInvariant();
        if (name == "auto") name = config.LpipsWeights is null ? "l2" : "lpips";
        switch (name)
        {
            case "l2": return (name, DmdLoss.RegressionL2, null);
            case "pseudo-huber": return (name, DmdLoss.RegressionPseudoHuber, null);
            case "lpips":
                if (config.LpipsWeights is null)
                    throw new DmdInputException("regression loss lpips needs LPIPS weights: convert them with tools/convert_lpips_weights.py and pass the file (--lpips-weights; in demo --dmd-lpips-weights)");
                var lpips = Metrics.Lpips.Load(config.LpipsWeights);
                lpips.to(device);
                return (name, (a, b) => lpips.forward(a, b).mean(), lpips);
            default:
                throw new DmdInputException($"unknown regression loss '{config.RegressionLoss}': use auto, l2, lpips or pseudo-huber");
        }
    }

    /// <summary>min(decay, (1 + n) / (10 + n)) after n updates: short averages early, the configured one later.</summary>
    double EmaBeta(int n) => Math.Min(Config.EmaDecay, (1.0 + n) / (10.0 + n));

    double LearningRate => Config.LearningRate * (Config.Mode == DmdMode.DmOnly ? Config.DmOnlyLrScale : 1.0);

    /// <summary>One DMD iteration: a generator update, then the fake denoiser update(s). Returns the losses.</summary>
    public Dictionary<string, double> TrainStep()
    {
        CheckInitialGenerator();
        using var scope = NewDisposeScope();
        var losses = new Dictionary<string, double>();
        double lr = TrainingUtils.WarmupLr(LearningRate, Step, Config.WarmupSteps);
        TrainingUtils.SetLearningRate(optG, lr);
        foreach (var o in optF) TrainingUtils.SetLearningRate(o, lr * Config.FakeLrScale);
        if (optH is not null) TrainingUtils.SetLearningRate(optH, lr * Config.FakeLrScale * Config.GanHeadLrScale);
        Generator.Net.train();
        foreach (var f in Fakes) f.train();
        DataParallel.SeedStep(rng, Config.Seed, Step);

        // ---- generator update: loss_G = loss_dm + lambda_reg loss_reg (paper Eq. 9) ----
        var z = Rng.Normal(new long[] { batch }.Concat(sampleShape).ToArray(), rng, device);
        // grouped energy term on the step's own batch: its labels in runs of equal classes
        var y = StepLabels(batch, Config.FeatureEnergyBatch == 0 ? Config.FeatureEnergyGroup : 0);
        var (xIn, level) = GeneratorInput(z, y, draw: 0);
        var x = Generator.Denoise(xIn, level, y);
        var lossG = zeros(1, device: device).squeeze();
        if (Config.Mode != DmdMode.RegressionOnly)
        {
            // dm-noise-draws D: the batch repeated D times (draw-major), each copy at its own levels and noise; the loss's
            // mean over the repeated batch is the mean of each sample's D gradients (D = 1: the batch itself, the same draws)
            var xDm = Repeated(x, Config.DmNoiseDraws);
            var yDm = y is null ? null : Repeated(y, Config.DmNoiseDraws);
            var sigma = grid.index_select(0, Rng.Integers(Config.MinStep, dmMaxIndex[level] + 1, xDm.shape[0], rng, device));
            double weightMax = double.NaN;
            Tensor lossDm;
            if (Config.DmLoss == DmLoss.Sid)
            {
                // SiD: the gradient goes through both denoisers to x; their weights take none (the teacher is frozen)
                using (TrainingUtils.NoParameterGradients(FakeOf(level)))
                    lossDm = DmdLoss.ScoreIdentity(xDm, realGuided, FakeScoreOf(level), sigma, yDm, rng, Config.SidAlpha);
            }
            else lossDm = DmdLoss.DistributionMatching(xDm, realGuided, FakeScoreOf(level), sigma, yDm, rng, DivergenceWeights(level, yDm, w => weightMax = w));
            lossG = lossG + lossDm;
            losses["loss_dm"] = TrainingUtils.Value(lossDm);
            if (!double.IsNaN(weightMax)) losses["dm_weight_max"] = weightMax;
        }
        if (Config.UsesRegression)
        {
            Tensor output, target;
            if (Config.TeacherRegressionSteps > 0)
            {
                // the target made now: the (guided) real score's deterministic Heun ODE from this step's input at its level
                output = x;
                using (no_grad())
                    target = Samplers.Heun(realGuided, xIn.detach(), y, KarrasSchedule.Sigmas(Config.TeacherRegressionSteps, odeSigmaMin, Generator.Sigmas[level])).Samples;
            }
            else
            {
                var idx = Rng.Integers(0, pairs!.Count, regressionBatch, rng);
                var zr = pairs.Z.index_select(0, idx).to(device);
                var yr = pairs.PromptIndex is { } p ? ((PromptConditions)Conditions).Of(p.index_select(0, idx), device) : pairs.Y?.index_select(0, idx).to(device);
                target = pairs.X.index_select(0, idx).to(device);
                // pairs map z to the teacher's ODE output from sigma_max z: the generator's first step (all of a one-step one)
                output = Generator.Generate(zr, yr, steps: 1);
            }
            var lossReg = regressionDistance(output, target);
            lossG = lossG + DenoiserExtensions.Const(Config.Mode == DmdMode.Full ? Config.LambdaReg : 1.0, lossReg) * lossReg;
            losses["loss_reg"] = TrainingUtils.Value(lossReg);
        }
        if (GanHead is not null && Config.GanWeight > 0)
        {
            // DMD2: + gen_cls_loss_weight softplus(-D(x)); the gradient reaches x through the fake denoiser's features,
            // whose weights (and the head's) take no gradient from the generator's loss
            Tensor logits;
            using (TrainingUtils.NoParameterGradients(FakeOf(level), GanHead)) logits = GanLogits(x, y, level);
            var lossGanG = DmdLoss.GanGenerator(logits);
            lossG = lossG + DenoiserExtensions.Const(Config.GanWeight, lossGanG) * lossGanG;
            losses["loss_gan_g"] = TrainingUtils.Value(lossGanG);
        }
        if (Config.FeatureEnergyWeight > 0)
        {
            // not in DMD or DMD2: the energy distance between this batch and a real one in the frozen teacher's bottleneck
            // features, both noised to one level of the GAN's range; the gradient reaches x through the teacher's features.
            // By class (feature-energy-group): the real batch has the generated batch's classes, each group compared with its own.
            // With feature-energy-batch the generated batch is one of its own, drawn afresh and generated at this step's level
            int group = Config.FeatureEnergyGroup;
            int nE = batch;
            Tensor xE = x;
            Tensor? yE = y;
            if (Config.FeatureEnergyBatch > 0)
            {
                nE = Config.FeatureEnergyBatch;
                var zE = Rng.Normal(new long[] { nE }.Concat(sampleShape).ToArray(), rng, device);
                yE = StepLabels(nE, group);
                xE = Generator.Denoise(InputAt(zE, yE, level), level, yE);
            }
            var (xReal, yReal) = group > 0 ? realData!.BatchOfClasses(yE!.argmax(1).cpu(), rng) : realData!.Batch(nE, rng);
            bool noised = Config.GanMaxStep > 0;
            var sigmaE = (noised ? grid.index_select(0, Rng.Integers(0, Config.GanMaxStep, 1, rng, device)) : grid.narrow(0, 0, 1)).expand(nE);
            Tensor Noised(Tensor v) => noised ? v + DenoiserExtensions.Broadcast(sigmaE, v) * Rng.NormalLike(v, rng) : v;
            // the labels the features are told: none (the zero row, the teacher's unconditional input) with feature-energy-unconditional
            Tensor? Told(Tensor? labels) => Config.FeatureEnergyUnconditional && labels is not null ? zeros_like(labels) : labels;
            Tensor fReal;
            using (no_grad()) fReal = Real.Features(Noised(xReal.to(device)), sigmaE, Spec.LabelDim > 0 ? Told(yReal!.to(device)) : null).flatten(1);
            var fGen = Real.Features(Noised(xE), sigmaE, Told(yE)).flatten(1);
            var lossE = group > 0 ? DmdLoss.FeatureEnergy(fGen.view(nE / group, group, -1), fReal.view(nE / group, group, -1))
                                  : DmdLoss.FeatureEnergy(fGen, fReal);
            lossG = lossG + DenoiserExtensions.Const(Config.FeatureEnergyWeight, lossE) * lossE;
            losses["loss_energy"] = TrainingUtils.Value(lossE);
        }
        TrainingUtils.ClearGradients(Generator.Net); // separate step networks: only the copies this loss reaches move
        lossG.backward();
        DataParallel.AverageGradients(Generator.Net);
        bool skipped = !TrainingUtils.UpdateIsFinite(lossG, Generator.Net); // a non-finite loss or gradient: no update
        if (!skipped)
        {
            losses["grad_norm_g"] = TrainingUtils.ClipGradNorm(Generator.Net, Config.GradClip);
            TrainingUtils.OptimizerStep(optG);
            if (Ema is not null) TrainingUtils.UpdateEma(Ema.Net, Generator.Net, EmaBeta(Step));
        }

        // ---- fake denoiser update(s), full noise range, no CFG (fake-label-dropout drops some conditions): the first on the
        // generator step's batch (DMD), each further one on a fresh batch of the updated generator (DMD2's two time-scale rule, dfake_gen_update_ratio) ----
        if (Config.Mode != DmdMode.RegressionOnly)
        {
            var xFake = x.detach();
            int levelFake = level;
            for (int k = 0; k < Config.FakeUpdatesPerStep; k++)
            {
                if (k > 0 && Config.FakeFreshBatches)
                {
                    var zk = Rng.Normal(new long[] { batch }.Concat(sampleShape).ToArray(), rng, device);
                    y = Conditions.Draw(batch, rng, device);
                    using (no_grad())
                    {
                        (var xkIn, levelFake) = GeneratorInput(zk, y, draw: k);
                        xFake = Generator.Denoise(xkIn, levelFake, y);
                    }
                }
                var fake = FakeOf(levelFake);
                var opt = optF[FakeIndex(levelFake)];
                var sigma = grid.index_select(0, Rng.Integers(0, Config.GridLevels, batch, rng, device));
                var yFake = Config.FakeLabelDropout > 0 ? Conditions.Dropped(y!, Config.FakeLabelDropout, rng) : y;
                var lossFake = DmdLoss.FakeDenoising(fake, xFake, sigma, yFake, rng);
                if (GanHead is null)
                {
                    opt.zero_grad();
                    lossFake.backward();
                    DataParallel.AverageGradients(fake);
                    losses["loss_fake"] = TrainingUtils.Value(lossFake);
                    if (!TrainingUtils.UpdateIsFinite(lossFake, fake)) { skipped = true; continue; }
                    TrainingUtils.ClipGradNorm(fake, Config.GradClip);
                    TrainingUtils.OptimizerStep(opt);
                    continue;
                }
                // DMD2's guidance update: + cls_loss_weight (softplus(-D(real)) + softplus(D(fake))), head and fake
                // denoiser together, one gradient clip over both
                var (xReal, yReal) = realData!.Batch(batch, rng);
                var logitsReal = GanLogits(xReal.to(device), Spec.LabelDim > 0 ? yReal!.to(device) : null, levelFake);
                var logitsFake = GanLogits(xFake.detach(), y, levelFake);
                var lossGanD = DmdLoss.GanDiscriminator(logitsReal, logitsFake);
                var lossF = lossFake + DenoiserExtensions.Const(Config.GanFakeWeight, lossGanD) * lossGanD;
                opt.zero_grad();
                optH!.zero_grad();
                lossF.backward();
                DataParallel.AverageGradients(fake, GanHead);
                losses["loss_fake"] = TrainingUtils.Value(lossFake);
                losses["loss_gan_d"] = TrainingUtils.Value(lossGanD);
                losses["gan_logit_real"] = TrainingUtils.Value(logitsReal.mean());
                losses["gan_logit_fake"] = TrainingUtils.Value(logitsFake.mean());
                if (!TrainingUtils.UpdateIsFinite(lossF, fake) || !TrainingUtils.UpdateIsFinite(lossF, GanHead)) { skipped = true; continue; }
                TrainingUtils.ClipGradNorm(fake.parameters().Concat(GanHead.parameters()), Config.GradClip);
                TrainingUtils.OptimizerStep(opt);
                TrainingUtils.OptimizerStep(optH);
            }
        }
        losses["lr"] = lr;
        if (skipped) losses[TrainingLoop.SkippedKey] = 1;
        Step++;
        return losses;
    }

    /// <summary>
    /// One-hot labels for <paramref name="batch"/> samples in runs of <paramref name="group"/> equal classes, each run's class
    /// uniform (feature-energy-group): over many steps every class is as frequent as with <see cref="Conditions.Draw"/>.
    /// </summary>
    Tensor GroupedLabels(int batch, int group, Generator rng) =>
        Rng.OneHot(Rng.Integers(0, Spec.LabelDim, batch / group, rng).repeat_interleave(group), Spec.LabelDim).to(device);

    /// <summary>t stacked <paramref name="times"/> times along the batch (rows i, B + i, 2B + i, ... are row i's copies); t itself for 1.</summary>
    static Tensor Repeated(Tensor t, int times) =>
        times == 1 ? t : t.repeat(new long[] { times }.Concat(Enumerable.Repeat(1L, (int)t.dim() - 1)).ToArray());

    /// <summary>Labels for <paramref name="batch"/> generated samples: in runs of <paramref name="group"/> equal classes (<see cref="GroupedLabels"/>), or as the conditions draw them when group is 0.</summary>
    Tensor? StepLabels(int batch, int group) => group > 0 ? GroupedLabels(batch, group, rng) : Conditions.Draw(batch, rng, device);

    /// <summary>
    /// The generator's input and its level for one batch: sigma_max z at level 0 for a one-step generator (nothing drawn);
    /// for K steps, DMD2's backward simulation: a level s uniform in [0, K) drawn for the batch, then the current
    /// generator's own chain run from sigma_max z to level s without gradient, with fresh noise at each re-noising (partly
    /// the input's own with step-noise-carry).
    /// With one fake denoiser per level or a network per step the levels go round from a shared draw, the same on every
    /// rank (so that the ranks train the same fake denoiser and the same step network): <paramref name="draw"/> k of the
    /// step (0 the generator's batch, then each fake update's) is at level (s0 + k) mod K, so every fake denoiser gets its
    /// exact share of the step's fake updates. With balanced-levels the step's level s (draw 0) comes from a permutation of
    /// the K levels drawn for each block of K steps instead (<see cref="BalancedLevel"/>).
    /// </summary>
    (Tensor Input, int Level) GeneratorInput(Tensor z, Tensor? y, int draw)
    {
        if (Generator.Steps == 1) return (InputAt(z, y, 0), 0);
        int K = Generator.Steps;
        int s = Config.FakePerLevel || Config.SeparateStepNetworks ? (StepLevel(K) + draw) % K
              : draw == 0 && Config.BalancedLevels ? StepLevel(K)
              : (int)Rng.Integers(0, K, 1, rng).item<long>();
        return (InputAt(z, y, s), s);
    }

    /// <summary>
    /// The generator's input at level <paramref name="s"/> for noise z: sigma_max z for a one-step generator (nothing
    /// drawn); for K steps the current generator's own chain run from sigma_max z to level s without gradient, with fresh
    /// noise at each re-noising (<see cref="GeneratorInput"/>).
    /// </summary>
    Tensor InputAt(Tensor z, Tensor? y, int s)
    {
        if (Generator.Steps == 1) return Generator.Input(z, y, 0, null);
        var noise = Enumerable.Range(0, s).Select(_ => Rng.Normal(z.shape, rng, device)).ToArray();
        using (no_grad()) return Generator.Input(z, y, s, noise);
    }

    /// <summary>
    /// f-distill's per-sample weights of the DM gradient at the noised samples (called without gradient), from the GAN
    /// head on the level's fake denoiser's features; null for DMD's reverse KL. Hands the largest weight to
    /// <paramref name="largest"/> (1 when the head tells no sample from another; B when one sample takes the whole gradient).
    /// </summary>
    Func<Tensor, Tensor, Tensor>? DivergenceWeights(int level, Tensor? y, Action<double> largest) =>
        Config.DmDivergence == DmDivergence.ReverseKl ? null : (xt, sigma) =>
        {
            var w = DmdLoss.DivergenceWeights(GanHead!.forward(FakeOf(level).Features(xt, sigma, y)), Config.DmDivergence);
            largest(TrainingUtils.Value(w.max()));
            return w;
        };

    /// <summary>
    /// DMD2's diffusion GAN logits for samples x (labels y): noise levels from the grid, indices uniform in
    /// [0, <see cref="DmdConfig.GanMaxStep"/>) drawn before the noise; with GanMaxStep 0 the clean samples at sigma_min.
    /// </summary>
    Tensor GanLogits(Tensor x, Tensor? y, int level)
    {
        bool noised = Config.GanMaxStep > 0;
        var sigma = noised ? grid.index_select(0, Rng.Integers(0, Config.GanMaxStep, x.shape[0], rng, device))
                           : grid.narrow(0, 0, 1).expand(x.shape[0]);
        return DmdLoss.GanLogits(FakeOf(level), GanHead!, x, sigma, y, rng, noised);
    }

    /// <summary>The step's shared generator level: balanced (<see cref="BalancedLevel"/>) or one shared draw.</summary>
    int StepLevel(int steps) =>
        Config.BalancedLevels ? BalancedLevel(Config.Seed, Step, steps) : DataParallel.SharedDraw(Config.Seed, Step, 0, steps);

    /// <summary>
    /// The generator level of step <paramref name="step"/> with <see cref="DmdConfig.BalancedLevels"/>: entry step mod K of
    /// a random permutation of the K levels drawn for each block of K steps (Fisher-Yates on draws shared by all ranks).
    /// </summary>
    internal static int BalancedLevel(long seed, int step, int steps)
    {
        int block = step / steps;
        var order = Enumerable.Range(0, steps).ToArray();
        for (int i = steps - 1; i > 0; i--)
        {
            int j = DataParallel.SharedDraw(seed, block, steps + i, i + 1); // indices past those a step's own draws use
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order[step % steps];
    }

    /// <summary>The index of generator level <paramref name="level"/>'s fake denoiser (and optimiser): its own with <see cref="DmdConfig.FakePerLevel"/>, else the one.</summary>
    int FakeIndex(int level) => Config.FakePerLevel ? level : 0;

    /// <summary>The fake denoiser of generator level <paramref name="level"/>.</summary>
    EdmPrecond FakeOf(int level) => Fakes[FakeIndex(level)];

    /// <summary>The fake score of generator level <paramref name="level"/> as the generator's loss reads it (guidance-fake's CFG).</summary>
    IDenoiser FakeScoreOf(int level) => fakeScores[FakeIndex(level)];

    /// <summary>A checkpoint file of fake denoiser <paramref name="i"/>: the first keeps the one-fake name, the others add their step.</summary>
    static string FakeFile(string name, int i, string ext) => i == 0 ? $"{name}.{ext}" : $"{name}-step{i + 1}.{ext}";

    /// <summary>
    /// Trains to <see cref="DmdConfig.Steps"/> (or until <paramref name="options"/> stops it), resuming from
    /// <paramref name="outDir"/> if it holds a checkpoint of the same run; writes losses.csv, config.json, checkpoints,
    /// for images teacher | student grids every <see cref="DmdConfig.GridEvery"/> steps, and generator.safetensors at the
    /// end or when stopped early. Returns false when the run was stopped before its last step.
    /// </summary>
    /// <param name="outDir">The run folder.</param>
    /// <param name="teacherPath">The teacher's path, recorded in config.json.</param>
    /// <param name="pairsPath">The regression pairs' path (or null), recorded in config.json.</param>
    /// <param name="options">Progress, messages, stop requests and whether a changed run may continue.</param>
    /// <param name="ganData">The text naming the GAN's real data (e.g. "ring8"), recorded in config.json when the GAN is on.</param>
    /// <param name="promptsPath">A text-to-image teacher's prompts file, recorded in config.json; its prompts are also written to the run's prompts.txt.</param>
    public bool Run(string outDir, string teacherPath, string? pairsPath, RunOptions? options = null, string? ganData = null, string? promptsPath = null)
    {
        options ??= new RunOptions();
        Directory.CreateDirectory(outDir);
        var info = new DmdRunInfo(Spec, Config, teacherPath, pairsPath, Config.UsesRealData ? ganData : null, Conditions is PromptConditions ? promptsPath : null);
        // settings added after a run was saved (the GAN's) compare as their defaults
        TrainingLoop.CheckSameRun(outDir, info, options, MayChange, PathFields, defaults: info with { Config = new DmdConfig() });
        bool resumed = TrainingLoop.Resume(this, outDir, options);
        CheckInitialGenerator();
        if (DataParallel.IsRoot) Checkpoint.SaveJson(info, Path.Combine(outDir, "config.json"));
        if (DataParallel.IsRoot && Conditions is PromptConditions pc) File.WriteAllLines(Path.Combine(outDir, RegressionPairs.PromptsFile), pc.Prompts);
        using var grids = (Spec.IsImage || Spec.IsLatent && DecodeLatents is not null) && Config.GridEvery > 0 && DataParallel.IsRoot
            ? Real.Schedule is { } vp ? new DistillationGrid(realGuided, Spec, conditions: Conditions, decode: DecodeLatents, sigmaMin: vp.SigmaMin, sigmaMax: vp.SigmaMax)
                                      : new DistillationGrid(realGuided, Spec, conditions: Conditions)
            : null;
        int end = Math.Min(Config.Steps, options.StopAfter ?? int.MaxValue);
        string GridPath(int step) => Path.Combine(outDir, $"samples-{step:D6}.png");
        if (grids is not null && !resumed) grids.Save(GridPath(Step), Output);
        bool finished = TrainingLoop.Run(this, outDir, resumed, Config.Steps, Config.LogEvery, Config.CheckpointEvery, options,
            afterStep: step =>
            {
                if (grids is not null && (step % Config.GridEvery == 0 || step == end)) grids.Save(GridPath(step), Output);
                if (Config.KeepEvery > 0 && step % Config.KeepEvery == 0 && DataParallel.IsRoot) Keep(outDir, info, step);
            });
        if (!finished) grids?.Save(GridPath(Step), Output); // stopped early: show what was reached
        if ((Step == Config.Steps || !finished) && DataParallel.IsRoot) SaveGenerator(Path.Combine(outDir, "generator.safetensors"));
        if (DataParallel.IsRoot) Plots.LossCurves(Path.Combine(outDir, "losses.png"), new[] { ("dmd", Path.Combine(outDir, "losses.csv")) });
        return finished;
    }

    /// <summary>Settings a resumed run may change without --allow-changes: how long it runs and how often it reports or keeps.</summary>
    static readonly string[] MayChange = { "Config.Steps", "Config.CheckpointEvery", "Config.LogEvery", "Config.GridEvery", "Config.KeepEvery" };

    /// <summary>The folder of the generator kept at <paramref name="step"/> (<see cref="DmdConfig.KeepEvery"/>): RUN/kept/step-NNNNNNNN.</summary>
    public static string KeptFolder(string outDir, int step) => Path.Combine(outDir, "kept", $"step-{step:D8}");

    /// <summary>
    /// Writes the generator of this step (the average when the run keeps one) as a model folder, as `dmd export` writes
    /// a checkpoint: generator files and the run's config.json with Steps set to the step. Written beside and then
    /// renamed (flushed to the disk first, as checkpoints are), so the folder is whole or absent; a resumed run passing the step again replaces it with the same weights.
    /// </summary>
    void Keep(string outDir, DmdRunInfo info, int step)
    {
        var dir = KeptFolder(outDir, step);
        FileSync.WholeFolder(dir + ".tmp", dir, tmp =>
        {
            Checkpoint.SaveJson(info.AtStep(step), Path.Combine(tmp, "config.json"));
            SaveGenerator(Path.Combine(tmp, OneStepGenerator.FileName));
            foreach (var file in Directory.EnumerateFiles(tmp, "*", SearchOption.AllDirectories)) FileSync.File(file);
        });
    }
    static readonly string[] PathFields = { "Teacher", "Pairs", "Prompts", "Config.InitGenerator", "Config.LpipsWeights" };

    /// <summary>
    /// Writes the generator as a loadable model (weights + spec), e.g. for `dmd sample` and `OneStepGenerator.Load`. A
    /// one-step generator of a text-to-image teacher is also written as a diffusers <c>unet/</c> folder beside it: the
    /// teacher's pipeline with that UNet, one Euler step at timestep 999 (diffusers: <c>EulerDiscreteScheduler</c> with
    /// <c>timestep_spacing="trailing"</c>, <c>num_inference_steps=1</c>, <c>guidance_scale=1</c>) gives exactly its samples.
    /// </summary>
    public void SaveGenerator(string path) => SaveGenerator(Output, Spec, path);

    /// <summary>Writes <paramref name="generator"/> as <see cref="SaveGenerator(string)"/> does (also for <c>dmd export</c>).</summary>
    internal static void SaveGenerator(OneStepGenerator generator, NetworkSpec spec, string path)
    {
        generator.Save(path, spec);
        if (generator.Net.Backbone is SdUNetBackbone b && generator.Steps == 1)
            b.UNet.SavePretrained(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "unet"));
    }

    /// <summary>Writes the generator, fake denoiser(s), (if any) EMA and GAN head weights, the optimiser states, the step and the random generator state.</summary>
    public void WriteCheckpoint(CheckpointWriter w)
    {
        w.Module("generator.safetensors", Generator.Net);
        for (int i = 0; i < Fakes.Count; i++) w.Module(FakeFile("fake", i, "safetensors"), Fakes[i]);
        if (Ema is not null) w.Module("ema.safetensors", Ema.Net);
        if (GanHead is not null) w.Module("gan_head.safetensors", GanHead);
        w.Optimizer("optim_generator.pt", optG);
        for (int i = 0; i < optF.Length; i++) w.Optimizer(FakeFile("optim_fake", i, "pt"), optF[i]);
        if (optH is not null) w.Optimizer("optim_gan_head.pt", optH);
        w.Json("state.json", new TrainState(Step, Checkpoint.GeneratorState(rng)));
    }

    /// <summary>
    /// Restores what <see cref="WriteCheckpoint"/> wrote; an EMA the checkpoint lacks starts from the generator's weights, a
    /// GAN head it lacks (GAN switched on at resume) starts as built, with a fresh optimiser.
    /// </summary>
    public void ReadCheckpoint(CheckpointReader r)
    {
        r.Module("generator.safetensors", Generator.Net);
        for (int i = 0; i < Fakes.Count; i++) r.Module(FakeFile("fake", i, "safetensors"), Fakes[i]);
        if (Ema is not null) // a checkpoint without an average (EMA switched on at resume) starts it from the weights
            if (r.Has("ema.safetensors")) r.Module("ema.safetensors", Ema.Net);
            else TrainingUtils.CopyWeights(Generator.Net, Ema.Net);
        r.Optimizer("optim_generator.pt", optG);
        for (int i = 0; i < optF.Length; i++) r.Optimizer(FakeFile("optim_fake", i, "pt"), optF[i]);
        if (GanHead is not null && r.Has("gan_head.safetensors"))
        {
            r.Module("gan_head.safetensors", GanHead);
            r.Optimizer("optim_gan_head.pt", optH!);
        }
        var st = r.Json<TrainState>("state.json");
        Step = st.Step;
        Checkpoint.RestoreGenerator(rng, st.Rng);
    }

    /// <summary>Whether every weight of the generator, the fake denoiser(s), the EMA and the GAN head is finite.</summary>
    public bool WeightsFinite() => TrainingUtils.AllFinite(Generator.Net) && Fakes.All(TrainingUtils.AllFinite) && (Ema is null || TrainingUtils.AllFinite(Ema.Net))
                                   && (GanHead is null || TrainingUtils.AllFinite(GanHead));

    /// <summary>Frees the optimisers, the random generator and the LPIPS network; the denoisers stay usable.</summary>
    public void Dispose()
    {
        optG.Dispose();
        foreach (var o in optF) o.Dispose();
        optH?.Dispose();
        rng.Dispose();
        regressionNet?.Dispose();
    }
}
