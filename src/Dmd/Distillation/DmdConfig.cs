using Dmd.Diffusion;

namespace Dmd.Distillation;

/// <summary>Which generator loss to train with: the paper's full method or one of its ablations (Table 2).</summary>
public enum DmdMode
{
    /// <summary>loss_dm + lambda_reg loss_reg (DMD).</summary>
    Full,
    /// <summary>loss_reg only (no distribution matching).</summary>
    RegressionOnly,
    /// <summary>loss_dm only (no regression).</summary>
    DmOnly,
}

/// <summary>The generator's loss for the DM term.</summary>
public enum DmLoss
{
    /// <summary>DMD's: the score difference (p_fake - p_real) / k as a fixed gradient of the generated samples (no backward through the denoisers).</summary>
    Dmd,
    /// <summary>SiD's score-identity loss (Zhou et al. 2024), its gradient through both denoisers too; see <see cref="DmdConfig.SidAlpha"/>.</summary>
    Sid,
}

/// <summary>
/// The divergence the DM term minimises between the generator's and the real score's noised distributions (f-distill,
/// Xu, Nie and Vahdat 2025): its gradient is DMD's score difference weighted per sample by h(r), r = p_real / p_fake
/// estimated by the GAN head (r = exp(logit)), the weights divided by their batch mean.
/// </summary>
public enum DmDivergence
{
    /// <summary>h = 1: DMD's and DMD2's reverse KL, mode-seeking.</summary>
    ReverseKl,
    /// <summary>h = r / (1 + r) = sigmoid(logit): Jensen-Shannon, f-distill's best on ImageNet-64.</summary>
    JensenShannon,
    /// <summary>h = r = exp(logit): forward KL, mode-covering and of higher variance.</summary>
    ForwardKl,
}

/// <summary>
/// One DMD run's hyper-parameters (DESIGN.md section 3). Defaults: the 2-D recipe; the paper's image values
/// are noted beside each field. Saved as JSON beside every checkpoint.
/// </summary>
public sealed record DmdConfig
{
    /// <summary>generator loss: Full (DM + regression), RegressionOnly or DmOnly (the paper's ablations)</summary>
    public DmdMode Mode { get; init; } = DmdMode.Full;
    /// <summary>generator updates</summary>
    public int Steps { get; init; } = 3000;
    /// <summary>DM batch</summary>
    public int BatchSize { get; init; } = 256;
    /// <summary>pairs per step</summary>
    public int RegressionBatchSize { get; init; } = 256;
    /// <summary>same for G and D_fake (paper: CIFAR-10 5e-5, ImageNet 2e-6)</summary>
    public double LearningRate { get; init; } = 1e-4;
    /// <summary>the paper lowers the lr for the DM-only ablation</summary>
    public double DmOnlyLrScale { get; init; } = 1.0;
    /// <summary>linear warm-up (paper 500)</summary>
    public int WarmupSteps { get; init; } = 500;
    /// <summary>AdamW beta1 (both networks)</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW beta2 (both networks)</summary>
    public double Beta2 { get; init; } = 0.999;
    /// <summary>AdamW decoupled weight decay</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>global norm, per network</summary>
    public double GradClip { get; init; } = 10.0;
    /// <summary>weight of the regression loss</summary>
    public double LambdaReg { get; init; } = 0.25;
    /// <summary>
    /// the regression target made during training instead of read from pairs: the real score's Heun ODE (with its
    /// guidance and interval) from the generator step's own input at its level down to 0 in N steps (2N-1 teacher
    /// evaluations a step); a K-step generator's inputs come from backward simulation, so every step learns the
    /// teacher's ODE from where its chain puts it. Needs a regression term (lambda-reg &gt; 0 or mode RegressionOnly) and no
    /// pairs; 0 = the stored pairs (DMD)
    /// </summary>
    public int TeacherRegressionSteps { get; init; } = 0;
    /// <summary>Karras grid for training noise levels</summary>
    public int GridLevels { get; init; } = 1000;
    /// <summary>DM noise-level index range: 2 % ...</summary>
    public int MinStep { get; init; } = 20;
    /// <summary>... to 98 % of the grid</summary>
    public int MaxStep { get; init; } = 980;
    /// <summary>
    /// a K-step generator's DM noise levels per step: the DM term at the output of a step whose input is at level
    /// sigma_k (k &gt; 0) draws only grid levels up to C sigma_k (within [min-step, max-step]), so that a step is matched
    /// at the scales it can still change and not pulled at the layout its input already fixes; 0 = the whole range at
    /// every step (DMD2). The first step (sigma-max) and a one-step generator are not limited.
    /// </summary>
    public double DmLevelCap { get; init; } = 0;
    /// <summary>smallest noise level of the Karras grid (EDM's sigma_min)</summary>
    public double SigmaMin { get; init; } = 0.002;
    /// <summary>generator input noise level</summary>
    public double SigmaMax { get; init; } = 80.0;
    /// <summary>
    /// generator steps K (DMD2 section 4.4): 1 = the one-step generator; K &gt; 1 = the same network on K noise levels
    /// from sigma-max down to generator-sigma-min, trained by backward simulation (each update's input made by the
    /// current generator's own chain to a random one of its levels, without gradient)
    /// </summary>
    public int GeneratorSteps { get; init; } = 1;
    /// <summary>lowest noise level of a K-step generator with geometric levels (4 steps from 80: 80, 18.6, 4.31, 1)</summary>
    public double GeneratorSigmaMin { get; init; } = 1.0;
    /// <summary>
    /// how a K-step generator's noise levels are placed: "geometric" (from sigma-max down to generator-sigma-min), "dmd2"
    /// (after sigma-max, the signal-to-noise ratios of DMD2's timesteps 999, 749, 499, 249 (K = 4) on Stable Diffusion's
    /// schedule, for data of the teacher's sigma_data: 80, 2.04, 0.80, 0.35 at sigma_data 0.5), or the K levels themselves,
    /// e.g. "80,2,0.8,0.35"
    /// </summary>
    public string GeneratorLevels { get; init; } = "geometric";
    /// <summary>
    /// a K-step generator's share c in [0, 1) of the noise re-injected between its steps that is carried over from the
    /// step's input instead of drawn fresh, in training (backward simulation) and sampling alike: before step k + 1,
    /// x = x0 + s_(k+1) (c (x - x0) / s_k + sqrt(1 - c^2) n); 0 = DMD2's fresh noise. Not in DMD2: the chain then keeps
    /// more of its starting noise, and the samples more of their variety
    /// </summary>
    public double StepNoiseCarry { get; init; }
    /// <summary>CFG scale of the real score (1 = none)</summary>
    public double GuidanceReal { get; init; } = 1.0;
    /// <summary>
    /// "LO,HI": the real score's CFG applies only at noise levels sigma in (LO, HI], the conditional score elsewhere (the
    /// guidance interval of Kynkäänniemi et al. 2024, as EDM2 samples); "LO,HI,W": CFG W elsewhere; none = every level
    /// </summary>
    public string? GuidanceRealInterval { get; init; }
    /// <summary>
    /// CFG scale of the fake score where the generator's loss reads it (1 = none): SiD-LSG's kappa_2 (the same scale as the
    /// real score's: its "long and short guidance"), or below 1, even negative, the Anti-CFG of few-step SiD (Zhou, Gu and
    /// Wang 2025). Within guidance-real-interval's levels when one is given (1 elsewhere); needs
    /// fake-label-dropout, so that the fake denoiser's unconditional output follows the generator's samples
    /// </summary>
    public double GuidanceFake { get; init; } = 1.0;
    /// <summary>
    /// share of the fake denoiser's training samples whose condition is dropped (the unconditional one: a zero label row, or
    /// the empty prompt), so that it learns the generator's unconditional distribution too (SiD-LSG: 0.1); 0 = none
    /// </summary>
    public double FakeLabelDropout { get; init; }
    /// <summary>
    /// noise draws per generated sample in the DM term: each sample of the generator's batch is noised at this many
    /// independent levels and noises, and its DM gradient is their mean (the loss over the repeated batch), so that the
    /// gradient's noise from the level and noise draw falls by about this factor at the cost of the two denoisers' forward
    /// passes on the repeated batch only; 1 = one draw per sample (DMD, DMD2)
    /// </summary>
    public int DmNoiseDraws { get; init; } = 1;
    /// <summary>fake-denoiser updates per generator update, each after the first on a fresh generated batch (DMD: 1; DMD2: 5)</summary>
    public int FakeUpdatesPerStep { get; init; } = 1;
    /// <summary>
    /// fake updates after the first draw a fresh generated batch (DMD2); false = all of them on the generator step's batch
    /// (the rule this project used before DMD2's, which the shipped Fashion-MNIST student was trained with)
    /// </summary>
    public bool FakeFreshBatches { get; init; } = true;
    /// <summary>
    /// a K-step generator gets one fake denoiser per step, each trained only on its step's outputs and giving that step's
    /// DM and GAN terms; false = DMD2's one fake denoiser on the outputs of all steps, with which the DM loss matches only
    /// the mixture of the steps' outputs to the data (K times the fake denoiser's memory)
    /// </summary>
    public bool FakePerLevel { get; init; }
    /// <summary>
    /// a K-step generator runs its own copy of the teacher's network at each step, all K started from the same weights
    /// (K times the generator's weights and optimiser state, the same cost per image); false = DMD2's one network for all steps
    /// </summary>
    public bool SeparateStepNetworks { get; init; }
    /// <summary>
    /// a K-step generator's update levels go through a fresh random permutation of its K levels every K steps, so that each
    /// level gets exactly one of every K generator updates; false = DMD2's independent uniform draw at each step (over 50
    /// steps of a 4-step generator a level's share then ranges from about 7 to 18). The fake updates go round the levels
    /// from the step's level with fake-per-level, and stay uniform draws without it
    /// </summary>
    public bool BalancedLevels { get; init; }
    /// <summary>fake-denoiser lr / generator lr (paper: 1)</summary>
    public double FakeLrScale { get; init; } = 1.0;
    /// <summary>
    /// weight of the generator's GAN loss softplus(-D(G(z))), D a classifier head on the fake denoiser's features (DMD2
    /// gen_cls_loss_weight; ImageNet 3e-3); 0 = off. Needs real data (--gan-data)
    /// </summary>
    public double GanWeight { get; init; } = 0;
    /// <summary>weight of the classifier loss softplus(-D(real)) + softplus(D(fake)) in each fake-denoiser update (DMD2 cls_loss_weight: 1e-2)</summary>
    public double GanFakeWeight { get; init; } = 1e-2;
    /// <summary>GAN noise levels: grid indices uniform in [0, GanMaxStep) (DMD2 diffusion_gan_max_timestep: 1000, the whole grid); 0 = clean samples at sigma_min</summary>
    public int GanMaxStep { get; init; } = 1000;
    /// <summary>GAN head lr / fake-denoiser lr (DMD2: 1, the head trains at the fake denoiser's lr); above 1 the head learns faster than the features it reads (not in DMD2)</summary>
    public double GanHeadLrScale { get; init; } = 1.0;
    /// <summary>
    /// weight of an energy distance between the generator's batch and a batch of real data (--gan-data) in the frozen
    /// teacher's bottleneck features, both noised to one level of the GAN's range (gan-max-step), divided by the real
    /// batch's own mean distance; its repulsion between the generated samples rewards variety. Not in DMD or DMD2; 0 = off
    /// </summary>
    public double FeatureEnergyWeight { get; init; } = 0;
    /// <summary>
    /// 0: the feature energy term compares the whole generated batch with a real batch of any classes. N &gt;= 2: the generator
    /// step's labels come in groups of N equal classes, each group is compared with N real samples of its class, and the term
    /// is the mean over the groups (within-class variety without pulling samples across classes); with feature-energy-batch it is
    /// that batch's labels that come in groups instead. Class-conditional teachers only; batch-size (or feature-energy-batch)
    /// must be a multiple of N. Not in DMD or DMD2
    /// </summary>
    public int FeatureEnergyGroup { get; init; } = 0;
    /// <summary>
    /// true: the feature energy term reads the teacher's features with its unconditional input (no class) for both batches,
    /// so that they describe the images alone and not also the label the network is told. Class-conditional teachers
    /// only. Not in DMD or DMD2
    /// </summary>
    public bool FeatureEnergyUnconditional { get; init; } = false;
    /// <summary>
    /// 0: the feature energy term reads the generator step's own batch. N &gt; 0: it reads N samples of its own, drawn afresh
    /// (new z and labels, generated at the step's level with gradient) and compared with N real samples, so that its estimate
    /// is less noisy than at batch-size; costs about N/batch-size generator forward and backward passes more. Not in DMD or DMD2
    /// </summary>
    public int FeatureEnergyBatch { get; init; } = 0;
    /// <summary>
    /// the divergence of the DM term (f-distill): ReverseKl is DMD's; JensenShannon and ForwardKl weight each sample's DM
    /// gradient by the GAN head's density ratio, so they train the head (real data, --gan-data) even at gan-weight 0
    /// </summary>
    public DmDivergence DmDivergence { get; init; } = DmDivergence.ReverseKl;
    /// <summary>
    /// the generator's loss for the DM term: Dmd (the papers') or Sid (Score identity Distillation: gradients through the real
    /// and fake denoisers as well: about 1.4 times the generator step's work)
    /// </summary>
    public DmLoss DmLoss { get; init; } = DmLoss.Dmd;
    /// <summary>SiD's alpha (with dm-loss Sid): the loss subtracts alpha |p_real - p_fake|^2 / k from (p_real - p_fake)(p_real - x) / k (SiD: 1.2)</summary>
    public double SidAlpha { get; init; } = 1.2;
    /// <summary>
    /// Distance of the regression loss: "l2", "lpips" (needs <see cref="LpipsWeights"/>; the paper's choice for
    /// images) or "pseudo-huber"; "auto" = lpips when weights are given, else l2 (DESIGN.md: L2 for points and
    /// whenever no LPIPS weights are available).
    /// </summary>
    public string RegressionLoss { get; init; } = "auto";
    /// <summary>LPIPS weights (safetensors) for the lpips regression loss; null = none</summary>
    public string? LpipsWeights { get; init; }           // from tools/convert_lpips_weights.py
    /// <summary>
    /// Decay of an exponential moving average of the generator's weights (0 = off, the paper's setting). When on,
    /// the average is what grids show and what generator.safetensors holds; the raw weights stay in checkpoint/.
    /// Effective decay min(EmaDecay, (1 + n) / (10 + n)) after n averaged updates, so early averages are not stuck at the start.
    /// </summary>
    public double EmaDecay { get; init; } = 0;
    /// <summary>Initialise the generator from this model (a generator.safetensors or a run folder) instead of the teacher.</summary>
    public string? InitGenerator { get; init; }
    /// <summary>images: teacher | student grid every N steps (0 = off)</summary>
    public int GridEvery { get; init; } = 250;
    /// <summary>seed of the run's random generator (noise, labels, noise levels, pair draws) and of torch's global one</summary>
    public long Seed { get; init; } = 0;
    /// <summary>checkpoint every N steps (and at the end)</summary>
    public int CheckpointEvery { get; init; } = 500;
    /// <summary>a losses.csv row every N steps (and at the last step)</summary>
    public int LogEvery { get; init; } = 20;
    /// <summary>
    /// keep the generator the run would write at that step (its weight average with EmaDecay) every N steps as
    /// RUN/kept/step-NNNNNNNN, a generator folder that sample and eval read and `dmd export` averages (0 = off; a run
    /// otherwise keeps only its latest checkpoint)
    /// </summary>
    public int KeepEvery { get; init; } = 0;

    /// <summary>Whether the generator loss has a regression term: RegressionOnly, or Full with lambda_reg &gt; 0 (Full with
    /// lambda_reg 0 is DMD2's loss: distribution matching alone, at the full learning rate).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool UsesRegression => Mode == DmdMode.RegressionOnly || (Mode == DmdMode.Full && LambdaReg > 0);

    /// <summary>Whether the run needs regression pairs: a regression term whose targets are not made by the teacher during
    /// training (<see cref="TeacherRegressionSteps"/> 0).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool UsesPairs => UsesRegression && TeacherRegressionSteps == 0;

    /// <summary>The generator's noise levels for a teacher of the given sigma_data: sigma-max alone, or the K levels
    /// <see cref="GeneratorLevels"/> names.</summary>
    public double[] GeneratorSigmas(double sigmaData) => GeneratorSteps == 1 ? new[] { SigmaMax } : GeneratorLevels switch
    {
        "geometric" => OneStepGenerator.Levels(SigmaMax, GeneratorSigmaMin, GeneratorSteps),
        "dmd2" => OneStepGenerator.Dmd2Levels(SigmaMax, GeneratorSteps, sigmaData),
        _ => ListedLevels(),
    };

    double[] ListedLevels()
    {
        var parts = GeneratorLevels.Split(',', StringSplitOptions.TrimEntries);
        var levels = parts.Select(t => double.TryParse(t, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) && double.IsFinite(v) ? v : double.NaN).ToArray();
        if (levels.Any(double.IsNaN))
            throw new DmdInputException($"generator-levels \"{GeneratorLevels}\": use geometric, dmd2 or the levels as numbers, e.g. 80,2,0.8,0.35");
        if (levels.Length != GeneratorSteps)
            throw new DmdInputException($"generator-levels \"{GeneratorLevels}\": {levels.Length} levels for a {GeneratorSteps}-step generator; give {GeneratorSteps}");
        if (levels[0] != SigmaMax)
            throw new DmdInputException($"generator-levels \"{GeneratorLevels}\": the first level is the generator's input noise, sigma-max {SigmaMax:G}; start the list with it");
        if (levels.Any(v => !(v > 0)) || levels.Zip(levels.Skip(1)).Any(p => !(p.First > p.Second)))
            throw new DmdInputException($"generator-levels \"{GeneratorLevels}\": the levels must be positive and decreasing");
        return levels;
    }

    /// <summary>The generator's step networks: <see cref="GeneratorSteps"/> with <see cref="SeparateStepNetworks"/>, else 0 (one shared network).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int StepNetworkCount => SeparateStepNetworks ? GeneratorSteps : 0;

    /// <summary>
    /// Whether the run trains DMD2's GAN head, and so needs real data: for the generator's GAN loss (<see cref="GanWeight"/> &gt; 0)
    /// or for the density ratio of an f-divergence DM term (<see cref="DmDivergence"/> other than ReverseKl).
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool UsesGan => GanWeight > 0 || DmDivergence != DmDivergence.ReverseKl;

    /// <summary>Whether the run draws real data (--gan-data): for the GAN head (<see cref="UsesGan"/>) or the feature energy term (<see cref="FeatureEnergyWeight"/> &gt; 0).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool UsesRealData => UsesGan || FeatureEnergyWeight > 0;

    /// <summary>The setting that needs real data, as messages name it: <see cref="GanReason"/>, or the feature energy term's weight.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string RealDataReason => UsesGan ? GanReason : $"feature-energy-weight {FeatureEnergyWeight:G}";

    /// <summary>The settings that make a run need no real data, as messages advise them: <see cref="GanOff"/>, or the feature energy term's off.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string RealDataOff => (UsesGan, FeatureEnergyWeight > 0) switch
    {
        (true, true) => $"{GanOff} and feature-energy-weight 0",
        (true, false) => GanOff,
        _ => "feature-energy-weight 0",
    };

    /// <summary>The setting that switched the GAN head on, as messages name it (e.g. "gan-weight 0.003").</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string GanReason => GanWeight > 0 ? $"gan-weight {GanWeight:G}" : $"dm-divergence {DmDivergence}";

    /// <summary>The settings that switch the GAN head off again, as messages advise them (e.g. "gan-weight 0").</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string GanOff => (GanWeight > 0, DmDivergence != DmDivergence.ReverseKl) switch
    {
        (true, true) => "gan-weight 0 and dm-divergence ReverseKl",
        (true, false) => "gan-weight 0",
        _ => "dm-divergence ReverseKl",
    };

    /// <summary>Rejects values no run can use, naming the setting (see <see cref="Settings"/>).</summary>
    public void Validate()
    {
        Settings.RequireFinite(this);
        Settings.AtLeast("steps", Steps, 1);
        Settings.AtLeast("batch-size", BatchSize, 1);
        Settings.AtLeast("regression-batch-size", RegressionBatchSize, 1);
        Settings.Positive("learning-rate", LearningRate);
        Settings.Positive("dm-only-lr-scale", DmOnlyLrScale);
        Settings.AtLeast("warmup-steps", WarmupSteps, 0);
        Settings.InRange("beta1", Beta1, 0, 1);
        Settings.InRange("beta2", Beta2, 0, 1);
        Settings.AtLeast("weight-decay", WeightDecay, 0);
        Settings.AtLeast("grad-clip", GradClip, 0);
        Settings.AtLeast("lambda-reg", LambdaReg, 0);
        Settings.AtLeast("teacher-regression-steps", TeacherRegressionSteps, 0);
        if (TeacherRegressionSteps > 0 && !UsesRegression)
            throw new DmdInputException($"teacher-regression-steps {TeacherRegressionSteps}: the run has no regression term (mode {Mode}{(Mode == DmdMode.Full ? $", lambda-reg {LambdaReg:G}" : "")}); give lambda-reg > 0 with mode Full, or leave the option out");
        Settings.AtLeast("grid-levels", GridLevels, 2);
        Settings.Positive("sigma-min", SigmaMin);
        if (!(SigmaMax > SigmaMin)) throw new DmdInputException($"sigma-max {SigmaMax}: must be larger than sigma-min {SigmaMin}");
        Settings.AtLeast("generator-steps", GeneratorSteps, 1);
        Settings.AtLeast("dm-level-cap", DmLevelCap, 0);
        if (DmLevelCap > 0 && GeneratorSteps == 1)
            throw new DmdInputException($"dm-level-cap {DmLevelCap:G}: it limits the DM levels of a K-step generator's later steps, and this generator has one step; use it with generator-steps > 1 or leave it out");
        if (GeneratorSteps > 1 && GeneratorLevels == "geometric" && !(GeneratorSigmaMin > 0 && GeneratorSigmaMin < SigmaMax))
            throw new DmdInputException($"generator-sigma-min {GeneratorSigmaMin:G}: must lie between 0 and sigma-max {SigmaMax:G} for a {GeneratorSteps}-step generator");
        if (GeneratorSteps > 1 && GeneratorLevels is not ("geometric" or "dmd2")) ListedLevels();
        Settings.AtLeast("guidance-real", GuidanceReal, 0);
        if (GuidanceInterval.Parse(GuidanceRealInterval, "guidance-real-interval") is { } realAt && !realAt.Guides(GuidanceReal))
            throw new DmdInputException($"guidance-real-interval {GuidanceRealInterval}: it limits the real score's guidance, and guidance-real is 1 (none); give --guidance-real other than 1 or leave the interval out");
        if (!double.IsFinite(GuidanceFake)) throw new DmdInputException($"guidance-fake {GuidanceFake}: must be a finite number (1: none)");
        Settings.InRange("fake-label-dropout", FakeLabelDropout, 0, 1);
        if (GuidanceFake != 1 && FakeLabelDropout == 0)
            throw new DmdInputException($"guidance-fake {GuidanceFake:G}: its unconditional branch must learn the generator's samples; add --fake-label-dropout 0.1 (SiD-LSG's) or leave guidance-fake out");
        if (FakeLabelDropout > 0 && Mode == DmdMode.RegressionOnly)
            throw new DmdInputException($"fake-label-dropout {FakeLabelDropout:G}: mode RegressionOnly trains no fake denoiser; use mode Full or DmOnly, or leave it out");
        Settings.AtLeast("fake-updates-per-step", FakeUpdatesPerStep, 1);
        Settings.AtLeast("dm-noise-draws", DmNoiseDraws, 1);
        if (DmNoiseDraws > 1 && Mode == DmdMode.RegressionOnly)
            throw new DmdInputException($"dm-noise-draws {DmNoiseDraws}: mode RegressionOnly has no DM term; use mode Full or DmOnly, or leave it out");
        Settings.InRange("step-noise-carry", StepNoiseCarry, 0, 1);
        if (StepNoiseCarry > 0 && GeneratorSteps == 1)
            throw new DmdInputException("step-noise-carry: a one-step generator re-injects no noise; use it with generator-steps > 1");
        if (FakePerLevel && GeneratorSteps == 1)
            throw new DmdInputException("fake-per-level: a one-step generator has one level; use it with generator-steps > 1");
        if (SeparateStepNetworks && GeneratorSteps == 1)
            throw new DmdInputException("separate-step-networks: a one-step generator has one network; use it with generator-steps > 1");
        if (BalancedLevels && GeneratorSteps == 1)
            throw new DmdInputException("balanced-levels: a one-step generator has one level; use it with generator-steps > 1");
        Settings.Positive("fake-lr-scale", FakeLrScale);
        Settings.AtLeast("gan-weight", GanWeight, 0);
        Settings.AtLeast("feature-energy-weight", FeatureEnergyWeight, 0);
        Settings.AtLeast("feature-energy-group", FeatureEnergyGroup, 0);
        if (FeatureEnergyGroup == 1)
            throw new DmdInputException("feature-energy-group 1: a group needs at least 2 samples to measure variety; use 0 (the whole batch) or 2 and more");
        if (FeatureEnergyGroup > 0 && FeatureEnergyWeight == 0)
            throw new DmdInputException($"feature-energy-group {FeatureEnergyGroup} groups the feature energy term, which is off: add --feature-energy-weight (e.g. 1) or leave the group out");
        if (FeatureEnergyUnconditional && FeatureEnergyWeight == 0)
            throw new DmdInputException("feature-energy-unconditional changes the feature energy term, which is off: add --feature-energy-weight (e.g. 1) or leave it out");
        Settings.AtLeast("feature-energy-batch", FeatureEnergyBatch, 0);
        if (FeatureEnergyBatch > 0 && FeatureEnergyWeight == 0)
            throw new DmdInputException($"feature-energy-batch {FeatureEnergyBatch} sizes the feature energy term, which is off: add --feature-energy-weight (e.g. 1) or leave the batch out");
        if (FeatureEnergyBatch == 1)
            throw new DmdInputException("feature-energy-batch 1: the energy term needs at least 2 samples to measure variety; use 0 (the step's batch) or 2 and more");
        int energyBatch = FeatureEnergyBatch > 0 ? FeatureEnergyBatch : BatchSize;
        if (FeatureEnergyGroup > 0 && energyBatch % FeatureEnergyGroup != 0)
            throw new DmdInputException(FeatureEnergyBatch > 0
                ? $"feature-energy-group {FeatureEnergyGroup}: feature-energy-batch {FeatureEnergyBatch} must be a multiple of it"
                : $"feature-energy-group {FeatureEnergyGroup}: batch-size {BatchSize} must be a multiple of it");
        Settings.Positive("gan-fake-weight", GanFakeWeight);
        Settings.AtLeast("gan-max-step", GanMaxStep, 0);
        Settings.Positive("gan-head-lr-scale", GanHeadLrScale);
        if (!Enum.IsDefined(DmDivergence))
            throw new DmdInputException($"dm-divergence {DmDivergence}: must be one of {string.Join(", ", Enum.GetNames<DmDivergence>())}");
        if (!Enum.IsDefined(DmLoss))
            throw new DmdInputException($"dm-loss {DmLoss}: must be one of {string.Join(", ", Enum.GetNames<DmLoss>())}");
        if (!double.IsFinite(SidAlpha)) throw new DmdInputException($"sid-alpha {SidAlpha}: must be a finite number (SiD: 1.2)");
        if (DmLoss != DmLoss.Sid && SidAlpha != new DmdConfig().SidAlpha)
            throw new DmdInputException($"sid-alpha {SidAlpha:G}: it weighs SiD's loss, and dm-loss is {DmLoss}; add --dm-loss Sid or leave sid-alpha out");
        if (DmLoss == DmLoss.Sid && DmDivergence != DmDivergence.ReverseKl)
            throw new DmdInputException($"dm-divergence {DmDivergence} weights DMD's gradient, which dm-loss Sid does not use: set dm-loss Dmd or dm-divergence ReverseKl");
        if (UsesGan && Mode == DmdMode.RegressionOnly)
            throw new DmdInputException($"{GanReason} trains a head on the fake denoiser, which mode RegressionOnly does not train: use mode Full or DmOnly, or set {GanOff}");
        Settings.InRange("ema-decay", EmaDecay, 0, 1);
        Settings.AtLeast("grid-every", GridEvery, 0);
        Settings.AtLeast("checkpoint-every", CheckpointEvery, 1);
        Settings.AtLeast("keep-every", KeepEvery, 0);
        Settings.AtLeast("log-every", LogEvery, 1);
    }
}
