using Dmd.Data;
using Dmd.IO;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Dmd.Training;

/// <summary>What a classifier run saves beside its checkpoints.</summary>
internal sealed record ClassifierRunConfig(FmnistClassifierConfig Config, string Data);

/// <summary>What a finished classifier run measured, saved beside the weights as training.json.</summary>
/// <param name="Config">The run's settings.</param>
/// <param name="Parameters">Trainable parameters of the classifier.</param>
/// <param name="FeatureDim">Width of the features FD-FMNIST compares.</param>
/// <param name="TestAccuracy">Share of the test split classified correctly.</param>
/// <param name="TestAccuracyPerClass">The same per class.</param>
/// <param name="TrainSeconds">Wall-clock seconds of the training call that finished the run (a resumed run counts only its last part).</param>
/// <param name="Threads">libtorch CPU threads.</param>
/// <param name="Machine">Cores and operating system.</param>
/// <param name="StatsImages">Test images behind the feature statistics.</param>
/// <param name="DataFolder">The Fashion-MNIST folder.</param>
public sealed record ClassifierRunInfo(FmnistClassifierConfig Config, long Parameters, int FeatureDim, double TestAccuracy,
                                       double[] TestAccuracyPerClass, double TrainSeconds, int Threads, string Machine,
                                       int StatsImages, string DataFolder);

/// <summary>
/// Trains <see cref="FmnistClassifier"/> on the Fashion-MNIST training split only (Adam, cosine learning-rate decay,
/// random flips and shifts, cross-entropy), with every random draw seeded, through the one run loop
/// (<see cref="TrainingLoop"/>): losses.csv, checkpoints every epoch, resume bit for bit, clean stop.
/// </summary>
public sealed class ClassifierTrainer : IResumableTrainer, IDisposable
{
    /// <summary>The run's settings.</summary>
    public FmnistClassifierConfig Config { get; }
    /// <summary>The classifier being trained.</summary>
    public FmnistClassifier Net { get; }
    /// <inheritdoc/>
    public int Step { get; private set; }
    /// <summary>Adam steps per epoch (the last partial batch of an epoch is dropped).</summary>
    public int StepsPerEpoch { get; }
    /// <summary>Adam steps of the whole run.</summary>
    public int TotalSteps => StepsPerEpoch * Config.Epochs;

    /// <summary>Images in the training set.</summary>
    public long TrainImages => train.Count;

    private readonly ImageDataset train;
    private readonly Generator g;
    private readonly optim.Optimizer opt;
    private Tensor? perm;        // this epoch's order of the training images
    private double epochLossSum; // for the epoch's running mean loss

    /// <summary>A classifier for labelled uint8 (N, 1, 32, 32) images in 10 classes.</summary>
    public ClassifierTrainer(ImageDataset train, FmnistClassifierConfig config)
    {
        if (train.ClassIndex is null || train.NumClasses != FmnistClassifier.NumClasses || !train.Shape.SequenceEqual(new[] { 1, 32, 32 }))
            throw new DmdInputException($"the classifier trains on labelled (N, 1, 32, 32) images in 10 classes, got " +
                                        $"[{string.Join(", ", train.Shape)}] with {train.NumClasses} classes");
        Settings.AtLeast("epochs", config.Epochs, 1);
        Settings.AtLeast("batch-size", config.BatchSize, 1);
        if (train.Count < config.BatchSize) throw new DmdInputException($"--batch-size {config.BatchSize} is larger than the {train.Count} training images");
        this.train = train;
        Config = config;
        torch.manual_seed((long)config.Seed); // weight initialisation and dropout
        g = new Generator(config.Seed + 1);
        Net = new FmnistClassifier(config.Dropout);
        opt = optim.Adam(Net.parameters(), config.LearningRate, weight_decay: config.WeightDecay);
        StepsPerEpoch = (int)(train.Count / config.BatchSize);
    }

    /// <summary>The <c>--data</c> text the training split came from (written to config.json).</summary>
    public string DataName { get; init; } = "custom";

    /// <summary>Labelled test images for <see cref="RunAndSave"/> (null: none given).</summary>
    public ImageDataset? Test { get; init; }

    /// <summary>The Fashion-MNIST folder the images came from, recorded in training.json (null: Debian's).</summary>
    public string? DataFolder { get; init; }

    /// <summary>
    /// A trainer on the Fashion-MNIST training split that <paramref name="data"/> names (<c>fashion-mnist</c> or
    /// <c>fashion-mnist:FOLDER</c>, padded to 32x32), with the test split held for <see cref="RunAndSave"/>.
    /// </summary>
    public static ClassifierTrainer ForFashionMnist(string data, FmnistClassifierConfig config)
    {
        var folder = DataSource.Parse(data).FashionMnistFolder("the classifier");
        return new ClassifierTrainer(FashionMnist.Load(test: false, folder, padTo32: true), config)
        {
            DataName = data, DataFolder = folder, Test = FashionMnist.Load(test: true, folder, padTo32: true),
        };
    }

    /// <summary>
    /// <see cref="Run"/>, and when the run is finished: the test accuracy (reported through <see cref="RunOptions.OnMessage"/>), then the weights
    /// (<see cref="FdFmnist.WeightsFile"/>), the test split's feature statistics (<see cref="FdFmnist.StatsFile"/>, FD-FMNIST's
    /// reference) and training.json written to <paramref name="outDir"/>: a folder <see cref="FdFmnist.Load"/> reads, as the
    /// shipped models/fmnist-classifier. Returns null when the run was stopped before its end (a checkpoint is written).
    /// </summary>
    public ClassifierRunInfo? RunAndSave(string outDir, RunOptions? options = null)
    {
        var test = Test ?? throw new InvalidOperationException("RunAndSave measures on a test split: set Test, or make the trainer with ForFashionMnist");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        if (!Run(outDir, DataName, options)) return null;
        double seconds = clock.Elapsed.TotalSeconds;
        if (TrainingUtils.ParameterCount(Net) != FmnistClassifier.ParameterCount)
            throw new InvalidOperationException("FmnistClassifier.ParameterCount is out of date");
        var acc = FmnistClassifierTrainer.Evaluate(Net, test);
        options?.OnMessage?.Invoke($"test accuracy: {acc}");
        Checkpoint.SaveModule(Net, Path.Combine(outDir, FdFmnist.WeightsFile));
        var (mu, sigma) = FdFmnist.ReferenceStatistics(Net, test);
        FrechetDistance.SaveStatistics(Path.Combine(outDir, FdFmnist.StatsFile), mu, sigma);
        var info = new ClassifierRunInfo(Config, FmnistClassifier.ParameterCount, FmnistClassifier.FeatureDim, acc.Overall, acc.PerClass,
                                         Math.Round(seconds, 1), get_num_threads(),
                                         $"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                                         (int)test.Count, DataFolder ?? FashionMnist.DebianFolder);
        Checkpoint.SaveJson(info, Path.Combine(outDir, FdFmnist.TrainingFile));
        return info;
    }

    /// <summary>One Adam step; a new epoch starts with a fresh shuffle. Returns loss, epoch mean loss, lr and epoch.</summary>
    public Dictionary<string, double> TrainStep()
    {
        int epoch = Step / StepsPerEpoch, i = Step % StepsPerEpoch;
        if (i == 0)
        {
            perm?.Dispose();
            perm = randperm(train.Count, generator: g);
            epochLossSum = 0;
        }
        Net.train();
        using var scope = NewDisposeScope();
        double lr = Config.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * Step / TotalSteps));
        foreach (var group in opt.ParamGroups) group.LearningRate = lr;
        var idx = perm!.narrow(0, (long)i * Config.BatchSize, Config.BatchSize);
        var x = Augment(ImageDataset.ToFloat(train.Images.index_select(0, idx)), Config, g);
        var y = train.ClassIndex!.index_select(0, idx);
        var loss = F.cross_entropy(Net.forward(x), y);
        opt.zero_grad();
        loss.backward();
        TrainingUtils.OptimizerStep(opt);
        double l = loss.item<float>();
        epochLossSum += l;
        Step++;
        return new() { ["loss"] = l, ["loss_epoch_mean"] = epochLossSum / (i + 1), ["lr"] = lr, ["epoch"] = epoch + 1 };
    }

    /// <summary>
    /// Random left-right flips (one coin per image) and a random translation by up to <c>MaxShift</c> pixels (one per
    /// batch row of 16 images). A roll is an exact translation here: the 2-pixel border it wraps around is background.
    /// </summary>
    static Tensor Augment(Tensor x, FmnistClassifierConfig cfg, Generator g)
    {
        long n = x.shape[0];
        if (cfg.RandomFlip)
        {
            var flip = (rand(new long[] { n }, generator: g) < 0.5).view(n, 1, 1, 1);
            x = where(flip, x.flip(3), x);
        }
        if (cfg.MaxShift > 0)
        {
            int s = Math.Min(cfg.MaxShift, 2);
            var shifts = randint(-s, s + 1, new long[] { (n + 15) / 16, 2 }, generator: g).data<long>().ToArray();
            var parts = new List<Tensor>();
            for (long j = 0, k = 0; j < n; j += 16, k++)
                parts.Add(x.narrow(0, j, Math.Min(16, n - j)).roll(new[] { shifts[2 * k], shifts[2 * k + 1] }, new long[] { 2, 3 }));
            x = cat(parts, 0);
        }
        return x;
    }

    /// <summary>
    /// Trains to the last step of the last epoch (or until <paramref name="options"/> stops it), resuming from
    /// <paramref name="outDir"/> if it holds a checkpoint of the same run: losses.csv every 50 steps, a checkpoint at the
    /// end of every epoch. Returns false when stopped early. The classifier is left in eval mode.
    /// </summary>
    public bool Run(string outDir, string dataName, RunOptions? options = null)
    {
        options ??= new RunOptions();
        Directory.CreateDirectory(outDir);
        var info = new ClassifierRunConfig(Config, dataName);
        TrainingLoop.CheckSameRun(outDir, info, options, new[] { "Config.Epochs" }, Array.Empty<string>());
        bool resumed = TrainingLoop.Resume(this, outDir, options);
        Checkpoint.SaveJson(info, Path.Combine(outDir, "config.json"));
        bool finished = TrainingLoop.Run(this, outDir, resumed, TotalSteps, logEvery: 50, checkpointEvery: StepsPerEpoch, options);
        Net.eval();
        return finished;
    }

    sealed record State(int Step, string Rng, long[]? Perm, double EpochLossSum);

    /// <inheritdoc/>
    public void WriteCheckpoint(CheckpointWriter w)
    {
        w.Module("classifier.safetensors", Net);
        w.Optimizer("optimizer.pt", opt);
        w.Json("state.json", new State(Step, Checkpoint.GeneratorState(g), perm?.data<long>().ToArray(), epochLossSum));
    }

    /// <inheritdoc/>
    public void ReadCheckpoint(CheckpointReader r)
    {
        r.Module("classifier.safetensors", Net);
        r.Optimizer("optimizer.pt", opt);
        var st = r.Json<State>("state.json");
        Step = st.Step;
        Checkpoint.RestoreGenerator(g, st.Rng);
        perm?.Dispose();
        perm = st.Perm is null ? null : tensor(st.Perm);
        epochLossSum = st.EpochLossSum;
    }

    /// <inheritdoc/>
    public bool WeightsFinite() => TrainingUtils.AllFinite(Net);

    /// <summary>Frees the optimiser, the generator and the shuffle.</summary>
    public void Dispose()
    {
        opt.Dispose();
        g.Dispose();
        perm?.Dispose();
    }
}
