using Dmd.Data;
using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Training;

/// <summary>Hyper-parameters of teacher training (EDM loss, Adam, EMA). Defaults: the 2-D recipe.</summary>
public sealed record TeacherConfig
{
    /// <summary>optimiser steps</summary>
    public int Steps { get; init; } = 4000;
    /// <summary>samples per step</summary>
    public int BatchSize { get; init; } = 512;
    /// <summary>Adam</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>linear ramp-up</summary>
    public int LrRampupSteps { get; init; } = 200;
    /// <summary>EMA half-life, in steps</summary>
    public double EmaHalfLifeSteps { get; init; } = 200;
    /// <summary>drop labels so CFG works</summary>
    public double LabelDropout { get; init; } = 0.1;
    /// <summary>seed of the weight initialisation and of the run's random generator (batches, label dropout, noise)</summary>
    public long Seed { get; init; } = 0;
    /// <summary>checkpoint every N steps (and at the end)</summary>
    public int CheckpointEvery { get; init; } = 1000;
    /// <summary>a losses.csv row every N steps (and at the last step)</summary>
    public int LogEvery { get; init; } = 20;

    /// <summary>Rejects values no run can use, naming the setting (see <see cref="Settings"/>).</summary>
    public void Validate()
    {
        Settings.RequireFinite(this);
        Settings.AtLeast("steps", Steps, 1);
        Settings.AtLeast("batch-size", BatchSize, 1);
        Settings.Positive("learning-rate", LearningRate);
        Settings.AtLeast("lr-rampup-steps", LrRampupSteps, 0);
        Settings.Positive("ema-half-life-steps", EmaHalfLifeSteps);
        Settings.InRange("label-dropout", LabelDropout, 0, 1);
        Settings.AtLeast("checkpoint-every", CheckpointEvery, 1);
        Settings.AtLeast("log-every", LogEvery, 1);
    }

    /// <summary>
    /// Defaults for small image teachers on CPU (e.g. Fashion-MNIST 32x32): EDM's Adam learning rate 1e-3 at a
    /// CPU-sized batch of 64, a 1000-step ramp-up and an EMA half-life of 1000 steps (64k images; EDM uses 500k
    /// images for runs a hundred times longer).
    /// </summary>
    public static TeacherConfig Images => new()
    {
        Steps = 20_000, BatchSize = 64, LearningRate = 1e-3, LrRampupSteps = 1000, EmaHalfLifeSteps = 1000,
        LabelDropout = 0.1, CheckpointEvery = 1000, LogEvery = 50,
    };
}

/// <summary>
/// Sample grids of the EMA network during teacher training: every <paramref name="Every"/> steps and at the last step,
/// <paramref name="PerClass"/> images per class from seeds 0, 1, ... (the same images each time), Heun with
/// <paramref name="SamplerSteps"/> steps and CFG <paramref name="Guidance"/>, written as samples-STEP.png.
/// </summary>
/// <param name="Every">Steps between grids (0: only at the end).</param>
/// <param name="PerClass">Images per class (per row).</param>
/// <param name="SamplerSteps">Heun steps (2N-1 network evaluations).</param>
/// <param name="Guidance">Classifier-free guidance scale (1 = none).</param>
/// <param name="ClassNames">Row labels (null: class numbers).</param>
public sealed record TeacherGrids(int Every, int PerClass = 10, int SamplerSteps = 18, double Guidance = 1.0, IReadOnlyList<string>? ClassNames = null);

/// <summary>What a teacher run saves beside its weights.</summary>
internal sealed record TeacherRunInfo(NetworkSpec Spec, TeacherConfig Config, string Data);

/// <summary>
/// Trains a denoiser with the EDM loss. Output directory: <c>teacher.safetensors</c> (+ .json spec; EMA
/// weights, the teacher), <c>config.json</c>, <c>losses.csv</c>, and <c>checkpoint/</c> for resuming.
/// </summary>
public sealed class TeacherTrainer : IResumableTrainer, IDisposable
{
    /// <summary>The denoiser being trained.</summary>
    public EdmPrecond Net { get; }
    /// <summary>Exponential moving average of <see cref="Net"/>'s weights (frozen): the teacher a run saves.</summary>
    public EdmPrecond Ema { get; }
    /// <summary>The architecture of both networks.</summary>
    public NetworkSpec Spec { get; }
    /// <summary>The run's hyper-parameters.</summary>
    public TeacherConfig Config { get; }
    /// <summary>Optimiser steps done so far.</summary>
    public int Step { get; private set; }
    /// <summary>The training data batches are drawn from.</summary>
    public IDataSource Data => data;

    private readonly IDataSource data;
    private readonly optim.Optimizer opt;
    private readonly Generator rng;
    private readonly Device device;
    private readonly int batch; // this rank's share of the batch (all of it in one process)

    /// <summary>
    /// Builds the network (initialised from <see cref="TeacherConfig.Seed"/>), its EMA copy and an Adam optimiser on
    /// <paramref name="device"/> (CPU by default); batches come from <paramref name="data"/>. Invalid settings are a
    /// <see cref="DmdInputException"/>.
    /// </summary>
    public TeacherTrainer(NetworkSpec spec, TeacherConfig config, IDataSource data, Device? device = null)
    {
        config.Validate();
        batch = DataParallel.Share(config.BatchSize, "batch-size");
        Spec = spec;
        Config = config;
        this.data = data;
        this.device = device ?? CPU;
        rng = new Generator((ulong)config.Seed);
        torch.manual_seed(config.Seed);
        Net = spec.Build();
        Net.to(this.device);
        Ema = spec.Build();
        Ema.to(this.device);
        TrainingUtils.CopyWeights(Net, Ema);
        TrainingUtils.Freeze(Ema);
        opt = optim.Adam(Net.parameters(), config.LearningRate);
    }

    /// <summary>
    /// An MLP teacher for points (`dmd train-teacher`): <paramref name="points"/> draws (seed 1) of the built-in
    /// distribution <paramref name="data"/> names, or a CSV's points; labels kept when <paramref name="conditional"/>;
    /// sigma_data from the data (<see cref="MlpSpec.ForPoints"/>).
    /// </summary>
    public static TeacherTrainer ForPoints(string data, int points, bool conditional, int width, int depth, TeacherConfig config,
                                           Device? device = null)
    {
        var set = DataSource.Parse(data).LoadPoints(points, seed: 1);
        if (!conditional) set = set.WithoutLabels();
        return new TeacherTrainer(MlpSpec.ForPoints(set, width, depth), config, set, device);
    }

    /// <summary>
    /// A U-Net teacher for images (`dmd train-image-teacher`): loads the images <paramref name="data"/> names and builds
    /// the network <paramref name="unet"/> describes for their shape and classes.
    /// </summary>
    public static TeacherTrainer ForImages(ImageDataOptions data, UNetOptions unet, TeacherConfig config, Device? device = null)
    {
        var set = data.Load();
        return new TeacherTrainer(unet.For(set), config, set, device);
    }

    /// <summary>Whether the last <see cref="TrainStep"/> left the weights alone because its loss or a gradient was not finite.</summary>
    public bool LastStepSkipped { get; private set; }

    /// <summary>One optimiser step; returns the loss (in a data-parallel run its mean over the ranks, whose gradients are averaged).</summary>
    public double TrainStep()
    {
        using var scope = NewDisposeScope();
        Net.train();
        DataParallel.SeedStep(rng, Config.Seed, Step);
        var (x, y) = data.Batch(batch, rng);
        x = x.to(device);
        if (y is not null)
        {
            y = y.to(device);
            // label dropout: an all-zero label row is the unconditional model
            var u = Rng.Uniform(new long[] { y.shape[0], 1 }, rng, device);
            var keep = (u >= DenoiserExtensions.Const(Config.LabelDropout, u)).to(ScalarType.Float32);
            y = y * keep;
        }
        TrainingUtils.SetLearningRate(opt, TrainingUtils.WarmupLr(Config.LearningRate, Step, Config.LrRampupSteps));
        opt.zero_grad();
        var loss = EdmLoss.Compute(Net, x, y, Spec.SigmaData, rng);
        loss.backward();
        DataParallel.AverageGradients(Net);
        LastStepSkipped = !TrainingUtils.UpdateIsFinite(loss, Net);
        if (!LastStepSkipped)
        {
            TrainingUtils.OptimizerStep(opt);
            TrainingUtils.UpdateEma(Ema, Net, Math.Pow(0.5, 1.0 / Math.Max(1e-8, Config.EmaHalfLifeSteps)));
        }
        Step++;
        return DataParallel.Mean(TrainingUtils.Value(loss));
    }

    /// <summary>Seconds this trainer spent drawing grids (so callers can time training alone).</summary>
    public double GridSeconds { get; private set; }

    /// <summary>
    /// Trains to <see cref="TeacherConfig.Steps"/> (or until <paramref name="options"/> stops it), resuming from
    /// <paramref name="outDir"/> if it holds a checkpoint of the same run; writes teacher.safetensors at the end, losses.png
    /// (the logged loss so far) whenever it returns and, with <paramref name="grids"/>, sample grids of the EMA network
    /// (rows labelled with the data's class names unless the grids name their own).
    /// Returns false when the run was stopped before its last step.
    /// </summary>
    public bool Run(string outDir, string dataName, RunOptions? options = null, TeacherGrids? grids = null)
    {
        options ??= new RunOptions();
        Directory.CreateDirectory(outDir);
        var info = new TeacherRunInfo(Spec, Config, dataName);
        TrainingLoop.CheckSameRun(outDir, info, options, MayChange, pathFields: Array.Empty<string>());
        bool resumed = TrainingLoop.Resume(this, outDir, options);
        if (DataParallel.IsRoot) Checkpoint.SaveJson(info, Path.Combine(outDir, "config.json"));
        void Grid(int step)
        {
            if (grids is null || !DataParallel.IsRoot || !(grids.Every > 0 && step % grids.Every == 0 || step == Config.Steps)) return;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            ClassGrid.Save(Path.Combine(outDir, $"samples-{step:D6}.png"), Ema, Spec.SampleShape, grids.PerClass, "heun", grids.SamplerSteps,
                           grids.Guidance, firstSeed: 0, classNames: grids.ClassNames ?? (data as ImageDataset)?.ClassNames, scale: 2);
            GridSeconds += clock.Elapsed.TotalSeconds;
        }
        bool finished = TrainingLoop.Run(this, outDir, resumed, Config.Steps, Config.LogEvery, Config.CheckpointEvery, options, Grid);
        if (Step == Config.Steps && DataParallel.IsRoot) DenoiserFile.Save(Ema, Spec, Path.Combine(outDir, "teacher.safetensors"));
        if (DataParallel.IsRoot) Plots.LossCurves(Path.Combine(outDir, "losses.png"), new[] { ("teacher", Path.Combine(outDir, "losses.csv")) });
        return finished;
    }

    /// <summary>Settings a resumed run may change without --allow-changes: how long it runs and how often it reports.</summary>
    static readonly string[] MayChange = { "Config.Steps", "Config.CheckpointEvery", "Config.LogEvery" };

    /// <summary>The logged loss: an exponential average of the step losses, saved in checkpoints so a resumed run logs what an uninterrupted one does.</summary>
    double smoothedLoss = double.NaN;

    Dictionary<string, double> IResumableTrainer.TrainStep()
    {
        double loss = TrainStep();
        if (LastStepSkipped) return new Dictionary<string, double> { ["loss"] = loss, [TrainingLoop.SkippedKey] = 1 };
        smoothedLoss = double.IsNaN(smoothedLoss) ? loss : 0.95 * smoothedLoss + 0.05 * loss;
        return new Dictionary<string, double> { ["loss"] = smoothedLoss };
    }

    /// <summary>Writes the network's and the EMA's weights, the optimiser state, the step and the random generator state.</summary>
    public void WriteCheckpoint(CheckpointWriter w)
    {
        w.Module("net.safetensors", Net);
        w.Module("ema.safetensors", Ema);
        w.Optimizer("optimizer.pt", opt);
        w.Json("state.json", new TrainState(Step, Checkpoint.GeneratorState(rng), double.IsNaN(smoothedLoss) ? null : smoothedLoss));
    }

    /// <summary>Restores what <see cref="WriteCheckpoint"/> wrote.</summary>
    public void ReadCheckpoint(CheckpointReader r)
    {
        r.Module("net.safetensors", Net);
        r.Module("ema.safetensors", Ema);
        r.Optimizer("optimizer.pt", opt);
        var st = r.Json<TrainState>("state.json");
        Step = st.Step;
        Checkpoint.RestoreGenerator(rng, st.Rng);
        smoothedLoss = st.SmoothedLoss ?? double.NaN; // checkpoints written before it was saved restart the average
    }

    /// <summary>Whether every weight of the network and of the EMA is finite.</summary>
    public bool WeightsFinite() => TrainingUtils.AllFinite(Net) && TrainingUtils.AllFinite(Ema);

    /// <summary>Frees the optimiser and the random generator; the networks stay usable.</summary>
    public void Dispose()
    {
        opt.Dispose();
        rng.Dispose();
    }
}

/// <summary>
/// Resumable position of a training run: step and random generator states, and for runs that log a smoothed loss
/// (the teacher) its running value (absent in other runs' and in older checkpoints).
/// </summary>
internal sealed record TrainState(
    int Step, string Rng,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    double? SmoothedLoss = null);
