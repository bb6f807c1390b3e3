using Dmd.Data;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>What a kill, a damaged folder, a changed command or bad settings do to a run (README, "Reliability").</summary>
public class ReliabilityTests
{
    sealed class Crash : Exception { }

    static (string TeacherPath, NetworkSpec Spec, RegressionPairs Pairs) TinyDmdSetup()
    {
        torch.manual_seed(5);
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 0, SigmaData = 0.8, Width = 32, Depth = 2 };
        var teacher = spec.Build();
        var path = Path.Combine(TestUtil.TempDir(), "t.safetensors");
        DenoiserFile.Save(teacher, spec, path);
        return (path, spec, RegressionPairs.Generate(teacher, spec.SampleShape, 64, steps: 4, seed: 2));
    }

    static readonly DmdConfig Cfg = new() { Steps = 6, BatchSize = 16, RegressionBatchSize = 16, WarmupSteps = 2, CheckpointEvery = 2, LearningRate = 1e-3 };

    static Dictionary<string, Tensor> Weights(string runDir) =>
        Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(runDir), "generator.safetensors"))
            .Concat(Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(runDir), "fake.safetensors")).Select(kv => new KeyValuePair<string, Tensor>("fake." + kv.Key, kv.Value)))
            .ToDictionary();

    [Fact]
    public void AKillAtAnyPointOfACheckpointWriteResumesBitForBit()
    {
        var (tPath, spec, pairs) = TinyDmdSetup();
        var reference = TestUtil.TempDir();
        var events = new List<string>();
        CheckpointStore.AfterFileWritten = events.Add;
        try { using (var a = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg, pairs)) a.Run(reference, tPath, null); }
        finally { CheckpointStore.AfterFileWritten = null; }
        var expected = Weights(reference);
        Assert.Equal(6, TestUtil.CheckpointStep(reference));
        int perCheckpoint = events.Count / 3; // checkpoints at steps 2, 4, 6
        Assert.Equal(9, perCheckpoint);       // 6 files, the manifest, the folder rename, the pointer switch

        // die after the k-th event of the first (k < 9) or second (k >= 9) checkpoint write, then run the same command again
        for (int k = 0; k < 2 * perCheckpoint; k++)
        {
            var dir = TestUtil.TempDir();
            int seen = 0;
            CheckpointStore.AfterFileWritten = _ => { if (seen++ == k) throw new Crash(); };
            try
            {
                using var b = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg, pairs);
                Assert.Throws<Crash>(() => b.Run(dir, tPath, null));
            }
            finally { CheckpointStore.AfterFileWritten = null; }

            // the latest checkpoint is the last complete one: none before the first pointer switch, then step 2, then step 4
            var store = new CheckpointStore(dir);
            int expectStep = k < perCheckpoint - 1 ? -1 : k < 2 * perCheckpoint - 1 ? 2 : 4;
            Assert.Equal(expectStep, store.Open()?.Step ?? -1);

            var messages = new List<string>();
            using (var c = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg, pairs))
                c.Run(dir, tPath, null, new RunOptions { OnMessage = messages.Add });
            if (expectStep > 0) Assert.Contains(messages, m => m.StartsWith($"resuming from step {expectStep}"));
            var got = Weights(dir);
            foreach (var (name, t) in expected) Assert.True(TestUtil.Same(t, got[name]), $"kill after event {k}: {name} differs from the uninterrupted run");
            // nothing of the interrupted write is left behind
            Assert.Equal(new[] { "latest", "step-00000006" }, Directory.GetFileSystemEntries(store.Root).Select(Path.GetFileName).Order().ToArray());
            var steps = File.ReadAllLines(Path.Combine(dir, "losses.csv")).Skip(1).Select(l => int.Parse(l.Split(',')[0])).ToList();
            Assert.Equal(steps.Distinct().Count(), steps.Count);
        }
    }

    [Fact]
    public void ADamagedCheckpointIsRefusedWithTheFileNamed()
    {
        var (tPath, spec, pairs) = TinyDmdSetup();
        var dir = TestUtil.TempDir();
        using (var a = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg with { Steps = 2 }, pairs)) a.Run(dir, tPath, null);
        var fake = Path.Combine(TestUtil.CheckpointFolder(dir), "fake.safetensors");
        var bytes = File.ReadAllBytes(fake);
        bytes[^3] ^= 0x55;
        File.WriteAllBytes(fake, bytes);
        var e = Assert.Throws<DmdException>(() => new CheckpointStore(dir).Open());
        Assert.Contains("fake.safetensors does not match its SHA-256", e.Message);
        File.WriteAllBytes(fake, bytes[..^10]);
        e = Assert.Throws<DmdException>(() => new CheckpointStore(dir).Open());
        Assert.Contains("fake.safetensors has", e.Message);
    }

    [Fact]
    public void CheckpointsOfTheEarlierLayoutStillResume()
    {
        // the layout before manifests: checkpoint/ holds the files directly, state.json written last (the shipped student's
        // until 2026-12-01); made here from the shipped student's checkpoint, without its manifest
        var dir = TestUtil.TempDir();
        var legacy = Directory.CreateDirectory(Path.Combine(dir, "checkpoint")).FullName;
        var shipped = TestUtil.CheckpointFolder(Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-student"));
        foreach (var f in new[] { "generator.safetensors", "fake.safetensors", "ema.safetensors", "optim_generator.pt", "optim_fake.pt", "state.json" })
            File.Copy(Path.Combine(shipped, f), Path.Combine(legacy, f));
        var store = new CheckpointStore(dir);
        var reader = store.Open();
        Assert.NotNull(reader);
        Assert.True(reader!.Step > 0);
        Assert.True(reader.Has("optim_generator.pt") && reader.Has("fake.safetensors"));
    }

    [Fact]
    public void AFolderHoldingAnotherRunIsRefusedUnlessChangesAreAllowed()
    {
        var (tPath, spec, pairs) = TinyDmdSetup();
        var dir = TestUtil.TempDir();
        using (var a = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg with { Steps = 2 }, pairs)) a.Run(dir, tPath, null);
        var configBefore = File.ReadAllText(Path.Combine(dir, "config.json"));

        using (var b = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg with { Steps = 4, Seed = 7 }, pairs))
        {
            var e = Assert.Throws<DmdInputException>(() => b.Run(dir, tPath, null));
            Assert.Contains("Seed 0 -> 7", e.Message);
            Assert.Contains("--allow-changes", e.Message);
        }
        var otherTeacher = Path.Combine(TestUtil.TempDir(), "t.safetensors");
        File.Copy(tPath, otherTeacher);
        File.Copy(Path.ChangeExtension(tPath, ".json"), Path.ChangeExtension(otherTeacher, ".json"));
        using (var b = new DmdTrainer(DenoiserFile.Load(otherTeacher).Net, spec, Cfg with { Steps = 4 }, pairs))
            Assert.Contains("Teacher", Assert.Throws<DmdInputException>(() => b.Run(dir, otherTeacher, null)).Message);
        Assert.Equal(configBefore, File.ReadAllText(Path.Combine(dir, "config.json"))); // not rewritten to claim the new settings

        // the same numbers spelled otherwise (5e-05 by hand or an older writer, 5E-05 by this one) are the same settings
        var configPath = Path.Combine(dir, "config.json");
        var respelled = System.Text.RegularExpressions.Regex.Replace(configBefore, @"(""LearningRate"": )([-0-9.Ee+]+)",
            m => m.Groups[1].Value + (m.Groups[2].Value.Contains('E') ? m.Groups[2].Value.Replace('E', 'e') : m.Groups[2].Value + (m.Groups[2].Value.Contains('.') ? "0" : ".0")));
        Assert.NotEqual(configBefore, respelled);
        File.WriteAllText(configPath, respelled);

        // longer runs and other report intervals are the same run; other settings go on when asked for
        using (var c = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg with { Steps = 4, LogEvery = 1 }, pairs)) c.Run(dir, tPath, null);
        Assert.Equal(4, TestUtil.CheckpointStep(dir));
        using (var d = new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, Cfg with { Steps = 6, LambdaReg = 1 }, pairs))
            d.Run(dir, tPath, null, new RunOptions { AllowChanges = true });
        Assert.Equal(6, TestUtil.CheckpointStep(dir));
    }

    /// <summary>Points that turn into NaN after a given number of batches.</summary>
    sealed class PoisonedData(PointSet data, int goodBatches) : IDataSource
    {
        int served;
        public int[] Shape => data.Shape;
        public int NumClasses => data.NumClasses;
        public long Count => data.Count;
        public (Tensor X, Tensor? Labels) Batch(int n, Generator? g)
        {
            var (x, y) = data.Batch(n, g);
            return (++served > goodBatches ? x * float.NaN : x, y);
        }
    }

    [Fact]
    public void ANonFiniteStepIsSkippedAndADivergingRunStopsKeepingItsLastGoodCheckpoint()
    {
        var points = PointDistributions.Sample("ring8", 2000, seed: 1).WithoutLabels();
        var spec = new MlpSpec { Shape = points.Shape, LabelDim = 0, SigmaData = 1.0, Width = 32, Depth = 2 };
        var cfg = new TeacherConfig { Steps = 20, BatchSize = 64, CheckpointEvery = 4, LogEvery = 1 };
        var dir = TestUtil.TempDir();
        using (var t = new TeacherTrainer(spec, cfg, new PoisonedData(points, goodBatches: 9)))
        {
            var messages = new List<string>();
            var e = Assert.Throws<TrainingDivergedException>(() => t.Run(dir, "ring8", new RunOptions { OnMessage = messages.Add }));
            // steps 10 and 11 are skipped (no update, a line each), step 12 is the third in a row: the run stops
            Assert.Equal(new[] { "step 10: loss = NaN; its update was skipped", "step 11: loss = NaN; its update was skipped" }, messages);
            Assert.Contains("loss = NaN at step 12, after 3 non-finite steps in a row", e.Message);
            Assert.Contains("last good checkpoint (step 8)", e.Message);
            Assert.True(TrainingUtils.AllFinite(t.Net), "a skipped step must leave the weights alone");
        }
        Assert.Equal(8, TestUtil.CheckpointStep(dir));
        foreach (var (k, v) in Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dir), "net.safetensors")))
            Assert.True(v.isfinite().all().item<bool>(), $"{k} is not finite in the kept checkpoint");
        Assert.False(File.Exists(Path.Combine(dir, "teacher.safetensors")));
    }

    [Fact]
    public void SettingsOutOfRangeAreRefusedByName()
    {
        var (tPath, spec, pairs) = TinyDmdSetup();
        DmdConfig[] bad =
        {
            Cfg with { Steps = 0 }, Cfg with { Steps = -5 }, Cfg with { BatchSize = 0 }, Cfg with { LearningRate = double.NaN },
            Cfg with { LearningRate = -1 }, Cfg with { Beta2 = 1 }, Cfg with { FakeUpdatesPerStep = 0 }, Cfg with { SigmaMax = 0.001 },
        };
        foreach (var c in bad)
            Assert.Throws<DmdInputException>(() => new DmdTrainer(DenoiserFile.Load(tPath).Net, spec, c, pairs));
        var e = Assert.Throws<DmdInputException>(() => new TeacherConfig { BatchSize = -3 }.Validate());
        Assert.Equal("batch-size -3: must be at least 1", e.Message);
        Assert.Throws<DmdInputException>(() => Diffusion.Samplers.Heun(DenoiserFile.Load(tPath).Net, zeros(2, 2), null, steps: 0));
    }

    [Fact]
    public void SettingsFilesRejectUnknownKeysAndAcceptARunsOwnConfig()
    {
        var dir = TestUtil.TempDir();
        var typo = Path.Combine(dir, "typo.json");
        File.WriteAllText(typo, "{ \"Stepz\": 10 }");
        var e = Assert.Throws<DmdInputException>(() => Checkpoint.LoadSettings<DmdConfig>(typo));
        Assert.Contains("Stepz", e.Message);

        var runConfig = Path.Combine(dir, "config.json");
        Checkpoint.SaveJson(new DmdRunInfo(new MlpSpec { Shape = new[] { 2 } }, Cfg with { Steps = 77, LambdaReg = 2 }, "t", null), runConfig);
        var back = Checkpoint.LoadSettings<DmdConfig>(runConfig);
        Assert.Equal(77, back.Steps);
        Assert.Equal(2, back.LambdaReg);
    }

    [Fact]
    public void IdenticalPointsAndTruncatedImagesAreRefused()
    {
        var dir = TestUtil.TempDir();
        var csv = Path.Combine(dir, "same.csv");
        File.WriteAllLines(csv, Enumerable.Repeat("1.0,2.0", 50));
        Assert.Contains("identical", Assert.Throws<DmdInputException>(() => PointSet.FromCsv(csv)).Message);

        var folder = Path.Combine(dir, "images", "a");
        Directory.CreateDirectory(folder);
        byte[] bytes;
        using (var bmp = new SkiaSharp.SKBitmap(32, 32))
        {
            var rnd = new Random(1);
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) bmp.SetPixel(x, y, new SkiaSharp.SKColor((byte)rnd.Next(256), (byte)rnd.Next(256), (byte)rnd.Next(256)));
            using var png = bmp.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
            bytes = png.ToArray();
        }
        File.WriteAllBytes(Path.Combine(folder, "whole.png"), bytes);
        Assert.Equal(1, ImageDataset.FromFolder(Path.Combine(dir, "images"), 32, 1, false).Count);
        foreach (int cut in new[] { 33, bytes.Length / 2, 3 * bytes.Length / 4 }) // right after the header, and inside the pixel data
        {
            File.WriteAllBytes(Path.Combine(folder, "cut.png"), bytes[..cut]);
            var e = Record.Exception(() => ImageDataset.FromFolder(Path.Combine(dir, "images"), 32, 1, false));
            Assert.True(e is DmdInputException && e.Message.Contains("cut.png"), $"cut at {cut} of {bytes.Length} bytes: {e?.Message ?? "loaded"}");
        }
    }
}
