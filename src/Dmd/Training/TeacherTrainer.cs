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
    public int Steps { get; init; } = 4000;             // optimiser steps
    public int BatchSize { get; init; } = 512;
    public double LearningRate { get; init; } = 1e-3;   // Adam
    public int LrRampupSteps { get; init; } = 200;      // linear ramp-up
    public double EmaHalfLifeSteps { get; init; } = 200; // EMA half-life, in steps
    public double LabelDropout { get; init; } = 0.1;    // drop labels so CFG works
    public long Seed { get; init; } = 0;
    public int CheckpointEvery { get; init; } = 1000;
    public int LogEvery { get; init; } = 20;

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

/// <summary>What a teacher run saves beside its weights.</summary>
public sealed record TeacherRunInfo(NetworkSpec Spec, TeacherConfig Config, string Data);

/// <summary>
/// Trains a denoiser with the EDM loss. Output directory: <c>teacher.safetensors</c> (+ .json spec; EMA
/// weights, the teacher), <c>config.json</c>, <c>losses.csv</c>, and <c>checkpoint/</c> for resuming.
/// </summary>
public sealed class TeacherTrainer : IDisposable
{
    public EdmPrecond Net { get; }
    public EdmPrecond Ema { get; }
    public NetworkSpec Spec { get; }
    public TeacherConfig Config { get; }
    public int Step { get; private set; }

    private readonly IDataSource data;
    private readonly optim.Optimizer opt;
    private readonly Generator rng;
    private readonly Device device;

    public TeacherTrainer(NetworkSpec spec, TeacherConfig config, IDataSource data, Device? device = null)
    {
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

    /// <summary>One optimiser step; returns the loss.</summary>
    public double TrainStep()
    {
        using var scope = NewDisposeScope();
        Net.train();
        var (x, y) = data.Batch(Config.BatchSize, rng);
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
        opt.step();
        TrainingUtils.UpdateEma(Ema, Net, Math.Pow(0.5, 1.0 / Math.Max(1e-8, Config.EmaHalfLifeSteps)));
        Step++;
        return loss.item<float>();
    }

    /// <summary>Trains to <see cref="TeacherConfig.Steps"/>, resuming from <paramref name="outDir"/> if it holds a checkpoint.</summary>
    public void Run(string outDir, string dataName, Action<int, int, IReadOnlyDictionary<string, double>>? onStep = null)
    {
        Directory.CreateDirectory(outDir);
        bool resumed = TryResume(outDir);
        if (resumed) CsvLog.TruncateAfter(Path.Combine(outDir, "losses.csv"), Step);
        var log = new CsvLog(Path.Combine(outDir, "losses.csv"), append: resumed);
        Checkpoint.SaveJson(new TeacherRunInfo(Spec, Config, dataName), Path.Combine(outDir, "config.json"));
        double avg = double.NaN;
        while (Step < Config.Steps)
        {
            double loss = TrainStep();
            avg = double.IsNaN(avg) ? loss : 0.95 * avg + 0.05 * loss;
            var values = new Dictionary<string, double> { ["loss"] = avg };
            if (Step % Config.LogEvery == 0 || Step == Config.Steps) log.Write(Step, new Dictionary<string, double>(values) { ["rss_mb"] = TrainingUtils.RssMb() });
            onStep?.Invoke(Step, Config.Steps, values);
            if (Step % Config.CheckpointEvery == 0 || Step == Config.Steps) SaveCheckpoint(outDir);
        }
        DenoiserFile.Save(Ema, Spec, Path.Combine(outDir, "teacher.safetensors"));
    }

    public void SaveCheckpoint(string outDir)
    {
        var dir = Path.Combine(outDir, "checkpoint");
        Directory.CreateDirectory(dir);
        Checkpoint.SaveModule(Net, Path.Combine(dir, "net.safetensors"));
        Checkpoint.SaveModule(Ema, Path.Combine(dir, "ema.safetensors"));
        opt.SaveState(Path.Combine(dir, "optimizer.pt"));
        Checkpoint.SaveJson(new TrainState(Step, Checkpoint.GeneratorState(rng)),
                            Path.Combine(dir, "state.json"));
    }

    public bool TryResume(string outDir)
    {
        var dir = Path.Combine(outDir, "checkpoint");
        var statePath = Path.Combine(dir, "state.json");
        if (!File.Exists(statePath)) return false;
        var saved = Checkpoint.LoadJson<TeacherRunInfo>(Path.Combine(outDir, "config.json"));
        if (saved.Spec with { Shape = null } != Spec with { Shape = null } || !saved.Spec.SampleShape.SequenceEqual(Spec.SampleShape))
            throw new DmdInputException($"{outDir} holds a run with a different network ({saved.Spec}); use another --out folder or delete it");
        Checkpoint.LoadModule(Net, Path.Combine(dir, "net.safetensors"));
        Checkpoint.LoadModule(Ema, Path.Combine(dir, "ema.safetensors"));
        opt.LoadState(Path.Combine(dir, "optimizer.pt"));
        var st = Checkpoint.LoadJson<TrainState>(statePath);
        Step = st.Step;
        Checkpoint.RestoreGenerator(rng, st.Rng);
        return true;
    }

    public void Dispose()
    {
        opt.Dispose();
        rng.Dispose();
    }
}

/// <summary>Resumable position of a training run: step and random generator states.</summary>
public sealed record TrainState(int Step, string Rng);
