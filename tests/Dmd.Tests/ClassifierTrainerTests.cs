using Dmd.Data;
using Dmd.Metrics;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>The classifier behind FD-FMNIST trains through the one run loop: resume bit for bit (dropout included), clean stop.</summary>
public class ClassifierTrainerTests
{
    /// <summary>64 labelled random 32x32 images in 10 classes: enough to exercise the loop, not to learn anything.</summary>
    static ImageDataset Synthetic()
    {
        using var g = new Generator(5);
        var images = randint(0, 256, new long[] { 64, 1, 32, 32 }, dtype: ScalarType.Byte, generator: g);
        return new ImageDataset(images, arange(64, dtype: ScalarType.Int64).remainder(10), 10);
    }

    static readonly FmnistClassifierConfig Cfg = new() { Epochs = 2, BatchSize = 16, MaxShift = 2, Dropout = 0.3, Seed = 3 };

    [Fact]
    public void AStoppedClassifierRunResumesBitForBitDropoutIncluded()
    {
        var data = Synthetic();
        var dirA = TestUtil.TempDir();
        using var a = new ClassifierTrainer(data, Cfg);
        Assert.True(a.Run(dirA, "synthetic"));
        Assert.Equal(8, a.Step);

        var dirB = TestUtil.TempDir();
        using (var b = new ClassifierTrainer(data, Cfg))
            Assert.True(b.Run(dirB, "synthetic", new RunOptions { StopAfter = 3 })); // mid-epoch: the shuffle is in the checkpoint
        torch.manual_seed(12345); // a resumed process starts with another global generator state: the checkpoint restores it
        using var c = new ClassifierTrainer(data, Cfg);
        var messages = new List<string>();
        Assert.True(c.Run(dirB, "synthetic", new RunOptions { OnMessage = messages.Add }));
        Assert.Contains(messages, m => m.StartsWith("resuming from step 3"));
        var wa = a.Net.state_dict();
        foreach (var (k, v) in c.Net.state_dict()) Assert.True(TestUtil.Same(wa[k], v), $"{k} differs after resume");

        var rows = File.ReadAllLines(Path.Combine(dirB, "losses.csv")).Skip(1).Select(l => l.Split(',')).ToList();
        var rowsA = File.ReadAllLines(Path.Combine(dirA, "losses.csv")).Skip(1).Select(l => l.Split(',')).ToList();
        Assert.Equal(rowsA.Select(r => r[0]), rows.Where(r => r[0] != "3").Select(r => r[0])); // each step once (3 logged when stopped)
        Assert.Equal(rowsA.Select(r => r[1]), rows.Where(r => r[0] != "3").Select(r => r[1])); // the same losses

        using var d = new ClassifierTrainer(data, Cfg);
        Assert.False(d.Run(TestUtil.TempDir(), "synthetic", new RunOptions { Stop = () => d.Step >= 2 }));
        Assert.Equal(2, d.Step);
    }

    [Fact]
    public void TrainClassifierCommandWritesTheModelItsStatisticsAndAResumableRun()
    {
        // a Fashion-MNIST-shaped folder of 48 training and 20 test images (Idx files as the dataset ships them)
        var data = TestUtil.TempDir();
        using var g = new Generator(7);
        foreach (var (split, n) in new[] { ("train", 48), ("t10k", 20) })
        {
            Idx.Write(Path.Combine(data, $"{split}-images-idx3-ubyte"), randint(0, 256, new long[] { n, 28, 28 }, dtype: ScalarType.Byte, generator: g));
            Idx.Write(Path.Combine(data, $"{split}-labels-idx1-ubyte"), arange(n, dtype: ScalarType.Int64).remainder(10).to(ScalarType.Byte));
        }
        var outDir = TestUtil.TempDir();
        var (code, output) = CliTests.Run("--threads", "1", "train-classifier", "--data", "fashion-mnist:" + data, "--epochs", "2", "--batch-size", "16",
                                          "--out", outDir);
        Assert.True(code == 0, output);
        foreach (var f in new[] { FdFmnist.WeightsFile, FdFmnist.StatsFile, "training.json", "config.json", "losses.csv" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        Assert.Equal(6, TestUtil.CheckpointStep(outDir)); // 3 steps an epoch, 2 epochs
        (code, output) = CliTests.Run("--threads", "1", "train-classifier", "--data", "fashion-mnist:" + data, "--epochs", "2", "--batch-size", "8",
                                      "--out", outDir);
        Assert.Equal(2, code); // another run's settings in the same folder
        Assert.Contains("--allow-changes", output);
    }
}
