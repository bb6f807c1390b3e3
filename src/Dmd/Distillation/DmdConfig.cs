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

/// <summary>
/// One DMD run's hyper-parameters (DESIGN.md section 3). Defaults: the 2-D recipe; the paper's image values
/// are noted beside each field. Saved as JSON beside every checkpoint.
/// </summary>
public sealed record DmdConfig
{
    public DmdMode Mode { get; init; } = DmdMode.Full;
    public int Steps { get; init; } = 3000;              // generator updates
    public int BatchSize { get; init; } = 256;           // DM batch
    public int RegressionBatchSize { get; init; } = 256; // pairs per step
    public double LearningRate { get; init; } = 1e-4;    // same for G and D_fake (paper: CIFAR-10 5e-5, ImageNet 2e-6)
    public double DmOnlyLrScale { get; init; } = 1.0;    // the paper lowers the lr for the DM-only ablation
    public int WarmupSteps { get; init; } = 500;         // linear warm-up (paper 500)
    public double Beta1 { get; init; } = 0.9;            // AdamW
    public double Beta2 { get; init; } = 0.999;
    public double WeightDecay { get; init; } = 0.01;
    public double GradClip { get; init; } = 10.0;        // global norm, per network
    public double LambdaReg { get; init; } = 0.25;       // weight of the regression loss
    public int GridLevels { get; init; } = 1000;         // Karras grid for training noise levels
    public int MinStep { get; init; } = 20;              // DM noise-level index range: 2 % ...
    public int MaxStep { get; init; } = 980;             // ... to 98 % of the grid
    public double SigmaMin { get; init; } = 0.002;
    public double SigmaMax { get; init; } = 80.0;        // generator input noise level
    public double GuidanceReal { get; init; } = 1.0;     // CFG scale of the real score (1 = none)
    public int FakeUpdatesPerStep { get; init; } = 1;    // DMD: 1; DMD2 uses 5
    public double FakeLrScale { get; init; } = 1.0;      // fake-denoiser lr / generator lr (paper: 1)
    /// <summary>
    /// Distance of the regression loss: "l2", "lpips" (needs <see cref="LpipsWeights"/>; the paper's choice for
    /// images) or "pseudo-huber"; "auto" = lpips when weights are given, else l2 (DESIGN.md: L2 for points and
    /// whenever no LPIPS weights are available).
    /// </summary>
    public string RegressionLoss { get; init; } = "auto";
    public string? LpipsWeights { get; init; }           // from tools/convert_lpips_weights.py
    /// <summary>
    /// Decay of an exponential moving average of the generator's weights (0 = off, the paper's setting). When on,
    /// the average is what grids show and what generator.safetensors holds; the raw weights stay in checkpoint/.
    /// Effective decay min(EmaDecay, (1 + n) / (10 + n)) after n averaged updates, so early averages are not stuck at the start.
    /// </summary>
    public double EmaDecay { get; init; } = 0;
    /// <summary>Initialise the generator from this model (a generator.safetensors or a run folder) instead of the teacher.</summary>
    public string? InitGenerator { get; init; }
    public int GridEvery { get; init; } = 250;           // images: teacher | student grid every N steps (0 = off)
    public long Seed { get; init; } = 0;
    public int CheckpointEvery { get; init; } = 500;
    public int LogEvery { get; init; } = 20;
}
