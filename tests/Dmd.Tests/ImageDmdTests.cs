using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Pipelines;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using SkiaSharp;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>DMD with U-Net teachers: pairs in shards, distillation, resume, grids, the one-step API and the demo.</summary>
public class ImageDmdTests : IClassFixture<TinyImageTeacher>
{
    readonly TinyImageTeacher tiny;
    readonly ITestOutputHelper log;
    public ImageDmdTests(TinyImageTeacher tiny, ITestOutputHelper log) { this.tiny = tiny; this.log = log; }

    string TeacherPath => Path.Combine(tiny.Dir, "teacher.safetensors");

    static DmdConfig Small(DmdMode mode = DmdMode.Full) => new()
    {
        Mode = mode, Steps = 30, BatchSize = 8, RegressionBatchSize = 8, WarmupSteps = 5, LearningRate = 5e-4,
        CheckpointEvery = 100, LogEvery = 1, GridEvery = 0,
    };

    RegressionPairs Pairs(int count = 32) => RegressionPairs.Generate(DenoiserFile.Load(TeacherPath).Net, tiny.Spec.SampleShape, count, steps: 4, seed: 2, batchSize: 16);

    [Fact]
    public void TinyUNetTeacherDistilsEndToEndAndItsGeneratorLossMoves()
    {
        var dir = TestUtil.TempDir();
        var pairs = Pairs();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { GridEvery = 10 }, pairs))
        {
            Assert.Equal(0, Assert.IsType<DdpmppSpec>(t.Spec).Dropout); // DESIGN.md: dropout off in all three networks
            t.Run(dir, TeacherPath, null);
        }
        log.WriteLine($"30 DMD steps on a tiny U-Net: {clock.Elapsed.TotalSeconds:F1} s");
        var csv = CsvLog.Read(Path.Combine(dir, "losses.csv"));
        var reg = csv["loss_reg"].Select(p => p.Value).ToList();
        var dm = csv["loss_dm"].Select(p => p.Value).ToList();
        Assert.Equal(30, reg.Count);
        Assert.All(reg.Concat(dm).Concat(csv["loss_fake"].Select(p => p.Value)), v => Assert.True(double.IsFinite(v)));
        log.WriteLine($"loss_reg first {reg[0]:F4}, last {reg[^1]:F4}; loss_dm first {dm[0]:G3}, last {dm[^1]:G3}");
        // whether the regression loss of the full objective falls within 30 steps depends on the CPU's rounding (it fell on
        // one machine and rose on another, with the DM term pulling elsewhere); that it falls when it is the only term does not
        Assert.True(dm.Skip(1).Any(v => v > 0), "the DM loss stayed at zero: the fake denoiser never moved away from the teacher");
        var regDir = TestUtil.TempDir();
        using (var r = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small(DmdMode.RegressionOnly), pairs)) r.Run(regDir, TeacherPath, null);
        var regOnly = CsvLog.Read(Path.Combine(regDir, "losses.csv"))["loss_reg"].Select(p => p.Value).ToList();
        double first = regOnly.Take(5).Average(), last = regOnly.TakeLast(5).Average();
        log.WriteLine($"regression only: loss_reg first 5 {first:F4}, last 5 {last:F4}");
        Assert.True(last < 0.9 * first, $"regression loss did not fall: {first:F4} -> {last:F4}");
        // teacher | student grids: at the start, every 10 steps and at the end, one row per class
        foreach (var s in new[] { 0, 10, 20, 30 }) Assert.True(File.Exists(Path.Combine(dir, $"samples-{s:D6}.png")), $"grid {s}");
        using var bmp = SKBitmap.Decode(Path.Combine(dir, "samples-000030.png"));
        Assert.Equal(2 * (2 * TinyImageTeacher.Resolution) + 1, bmp.Height); // 2 classes, tiles enlarged twice
        // the generator file is a one-step model for `sample`/`eval`, with dropout off in its spec
        var spec = Checkpoint.LoadJson<NetworkSpec>(Path.Combine(dir, "generator.json"));
        Assert.Equal(tiny.Spec with { Dropout = 0 }, spec);
    }

    [Fact]
    public void ResumingAnImageRunContinuesTheSameRunWithItsOptimiserState()
    {
        var pairs = Pairs();
        var cfg = Small() with { Steps = 6 };
        var dirA = TestUtil.TempDir(); var dirB = TestUtil.TempDir();
        using (var a = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs)) a.Run(dirA, TeacherPath, null);
        using (var b = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs)) b.Run(dirB, TeacherPath, null, new RunOptions { StopAfter = 3 });
        Assert.Equal(3, TestUtil.CheckpointStep(dirB));
        // the continued run must equal the uninterrupted one in both networks: with AdamW that holds only when both
        // optimisers' moments were restored (weights alone diverge at the first step after the resume)
        using (var c = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs)) c.Run(dirB, TeacherPath, null);
        var ga = Checkpoint.LoadTensors(Path.Combine(dirA, "generator.safetensors"));
        var gb = Checkpoint.LoadTensors(Path.Combine(dirB, "generator.safetensors"));
        foreach (var k in ga.Keys) Assert.True(TestUtil.Same(ga[k], gb[k]), $"{k} differs after resume");
        var fa = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirA), "fake.safetensors"));
        var fb = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirB), "fake.safetensors"));
        foreach (var k in fa.Keys) Assert.True(TestUtil.Same(fa[k], fb[k]), $"fake {k} differs after resume");
    }

    /// <summary>
    /// DMD2 on a tiny U-Net: no pairs, 3 fake updates on fresh batches, the GAN head on the bottleneck with real bar images,
    /// a 3-step generator trained by backward simulation. The losses move (the head learns to separate real from
    /// generated), and a run stopped at step 3 and resumed ends bit for bit where the uninterrupted one does: generator,
    /// fake denoiser, average and head.
    /// </summary>
    [Fact]
    public void ADmd2RunWithTheHeadAndBackwardSimulationMovesItsLossesAndResumesBitForBit()
    {
        var cfg = new DmdConfig
        {
            Steps = 6, BatchSize = 4, LearningRate = 1e-3, WarmupSteps = 1, LambdaReg = 0, FakeUpdatesPerStep = 3, GanWeight = 0.01,
            GanFakeWeight = 1, GeneratorSteps = 3, SigmaMax = 80, GeneratorSigmaMin = 2, EmaDecay = 0.9, GridEvery = 0,
            CheckpointEvery = 3, LogEvery = 1, Seed = 5,
        };
        var real = TinyImageTeacher.Bars(64, seed: 9);
        var dirA = TestUtil.TempDir(); var dirB = TestUtil.TempDir();
        using (var a = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, null, realData: real)) a.Run(dirA, TeacherPath, null, ganData: "bars");
        using (var b = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, null, realData: real))
            b.Run(dirB, TeacherPath, null, new RunOptions { StopAfter = 3 }, ganData: "bars");
        Assert.Equal(3, TestUtil.CheckpointStep(dirB));
        using (var c = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, null, realData: real)) c.Run(dirB, TeacherPath, null, ganData: "bars");
        foreach (var file in new[] { "generator.safetensors", "fake.safetensors", "ema.safetensors", "gan_head.safetensors" })
        {
            var ta = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirA), file));
            var tb = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirB), file));
            foreach (var k in ta.Keys) Assert.True(TestUtil.Same(ta[k], tb[k]), $"{file}: {k} differs after resume");
        }
        // (equal weights after steps 4-6 need the three AdamW states restored: weights alone diverge at the first step)
        var log = CsvLog.Read(Path.Combine(dirA, "losses.csv"));
        var logB = CsvLog.Read(Path.Combine(dirB, "losses.csv"));
        foreach (var (k, rows) in log.Where(kv => kv.Key != "rss_mb")) Assert.Equal(rows, logB[k]); // every logged value but memory
        Assert.Equal(6, log["loss_gan_d"].Count);
        Assert.NotEqual(log["loss_gan_d"][0], log["loss_gan_d"][^1]);
        Assert.NotEqual(log["loss_dm"][0], log["loss_dm"][^1]);
        Assert.True(log["gan_logit_real"][^1].Value > log["gan_logit_fake"][^1].Value, "the head tells real bars from generated images after 6 steps");
        Assert.Equal(3, OneStepGenerator.Load(dirA).Steps);
    }

    /// <summary>
    /// `--keep-every 2` keeps the generator of steps 2 and 4 as model folders (the run's average, whole: no .tmp left),
    /// the last one the generator the run writes; a resumed run may change it and keeps its new steps; `dmd export` with
    /// two of them writes the element-wise mean of their weights on the same levels, naming them, and refuses a
    /// generator on other levels, a single source and a folder that holds a generator.
    /// </summary>
    [Fact]
    public void KeptStepsAreModelFoldersAndExportAveragesThem()
    {
        var cfg = new DmdConfig
        {
            Steps = 4, BatchSize = 4, LearningRate = 1e-3, WarmupSteps = 1, LambdaReg = 0, FakeUpdatesPerStep = 1, GeneratorSteps = 3,
            SigmaMax = 80, GeneratorSigmaMin = 2, EmaDecay = 0.9, GridEvery = 0, CheckpointEvery = 4, LogEvery = 1, Seed = 7, KeepEvery = 2,
        };
        var dir = TestUtil.TempDir();
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, null)) t.Run(dir, TeacherPath, null);
        Assert.Equal(new[] { "step-00000002", "step-00000004" }, Directory.GetDirectories(Path.Combine(dir, "kept")).Select(Path.GetFileName).Order());
        var (k2, k4) = (DmdTrainer.KeptFolder(dir, 2), DmdTrainer.KeptFolder(dir, 4));
        var (g2, g4, written) = (OneStepGenerator.Load(k2), OneStepGenerator.Load(k4), OneStepGenerator.Load(dir));
        Assert.Equal(2, Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(k2, "config.json")).Config.Steps);
        Assert.Equal(written.Sigmas, g2.Sigmas);
        foreach (var (name, v) in g4.Net.state_dict()) Assert.True(TestUtil.Same(written.Net.state_dict()[name], v), $"kept step 4: {name} is not what the run wrote");
        Assert.Contains(g2.Net.state_dict(), kv => !TestUtil.Same(g4.Net.state_dict()[kv.Key], kv.Value));

        // resumed with another --keep-every (allowed without --allow-changes): the new step is kept too
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg with { Steps = 5, KeepEvery = 1 }, null)) t.Run(dir, TeacherPath, null);
        Assert.True(File.Exists(Path.Combine(DmdTrainer.KeptFolder(dir, 5), OneStepGenerator.FileName)));

        var avg = Path.Combine(TestUtil.TempDir(), "avg");
        var (code, output) = CliTests.Run("export", "--model", k2, "--model", k4, "--out", avg);
        Assert.True(code == 0, output);
        Assert.Contains("mean of 2 generators", output);
        var a = OneStepGenerator.Load(avg);
        Assert.Equal(written.Sigmas, a.Sigmas);
        Assert.Equal(written.Spec, a.Spec);
        foreach (var (name, v) in a.Net.state_dict())
            if (v.is_floating_point())
                Assert.True(v.allclose((g2.Net.state_dict()[name] + g4.Net.state_dict()[name]) / 2, rtol: 1e-5, atol: 1e-7), $"{name} is not the mean");
        Assert.Equal(4, Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(avg, "config.json")).Config.Steps); // the last source's
        var named = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(avg, "average.json"))).RootElement.GetProperty("Sources");
        Assert.Equal(new[] { Path.GetFullPath(k2), Path.GetFullPath(k4) }, named.EnumerateArray().Select(e => e.GetString()));

        var otherLevels = Path.Combine(TestUtil.TempDir(), "levels");
        Directory.CreateDirectory(otherLevels);
        new OneStepGenerator(g2.Net, new[] { 80.0, 9, 3 }) { Spec = g2.Spec }.Save(Path.Combine(otherLevels, OneStepGenerator.FileName), g2.Spec!);
        var refusal = Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2, otherLevels }, Path.Combine(TestUtil.TempDir(), "x")));
        Assert.Contains("other noise levels", refusal.Message);
        var otherCarry = Path.Combine(TestUtil.TempDir(), "carry");
        Directory.CreateDirectory(otherCarry);
        g2.WithStepNoiseCarry(0.5).Save(Path.Combine(otherCarry, OneStepGenerator.FileName), g2.Spec!);
        Assert.Equal(0.5, OneStepGenerator.Load(otherCarry).StepNoiseCarry);
        Assert.Contains("step-noise-carry", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2, otherCarry }, Path.Combine(TestUtil.TempDir(), "z"))).Message);
        Assert.Contains("at least two", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2 }, Path.Combine(TestUtil.TempDir(), "y"))).Message);
        Assert.Contains("already holds a generator", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2, k4 }, avg)).Message);
        // the run's own folders are refused whatever the sources: its kept/ and checkpoint/ (which it replaces and
        // removes), and the run folder itself (whose config.json the export would replace)
        Assert.Contains("kept/ folder", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2, k4 }, DmdTrainer.KeptFolder(dir, 6))).Message);
        Assert.Contains("checkpoint/ folder", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2, k4 }, Path.Combine(dir, "checkpoint", "step-00000006"))).Message);
        File.Delete(Path.Combine(dir, OneStepGenerator.FileName));
        Assert.Contains("run's folder", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportAverage(new[] { k2, k4 }, dir)).Message);
        Assert.False(Directory.Exists(DmdTrainer.KeptFolder(dir, 6)));
        // one kept folder is a model already: export says so
        Assert.Contains("generator folder already", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportCheckpoint(k2, Path.Combine(TestUtil.TempDir(), "z"))).Message);
    }

    /// <summary>
    /// A distillation checkpoint is a model: <c>RUN/checkpoint</c> (the latest), its step folder, and a run folder without
    /// generator.safetensors load as the generator the run writes when stopped there (the average, on the run's K levels),
    /// a damaged checkpoint is refused by name, and `dmd sample` draws from one.
    /// </summary>
    [Fact]
    public void ADistillationCheckpointLoadsAsTheGeneratorTheRunWouldWrite()
    {
        var cfg = new DmdConfig
        {
            Steps = 4, BatchSize = 4, LearningRate = 1e-3, WarmupSteps = 1, LambdaReg = 0, FakeUpdatesPerStep = 1, GeneratorSteps = 3,
            SigmaMax = 80, GeneratorSigmaMin = 2, EmaDecay = 0.9, GridEvery = 0, CheckpointEvery = 2, LogEvery = 1, Seed = 7,
        };
        var dir = TestUtil.TempDir();
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, null)) t.Run(dir, TeacherPath, null, new RunOptions { StopAfter = 2 });
        var written = OneStepGenerator.Load(dir); // what the stopped run wrote: the average at step 2
        var step = Path.Combine(dir, "checkpoint", "step-00000002");
        var raw = Checkpoint.LoadTensors(Path.Combine(step, "generator.safetensors"));
        foreach (var path in new[] { Path.Combine(dir, "checkpoint"), step })
        {
            Assert.True(ModelDraw.IsGenerator(path), path);
            var g = OneStepGenerator.Load(path);
            Assert.Equal(written.Sigmas, g.Sigmas);
            Assert.Equal(new[] { 80.0, Math.Round(Math.Sqrt(80 * 2), 9), 2 }, g.Sigmas.Select(s => Math.Round(s, 9)));
            Assert.Equal(written.Spec, g.Spec);
            var w = written.Net.state_dict();
            foreach (var (name, v) in g.Net.state_dict()) Assert.True(TestUtil.Same(w[name], v), $"{path}: {name} is not the average the run wrote");
            Assert.Contains(g.Net.state_dict(), kv => raw.ContainsKey(kv.Key) && !TestUtil.Same(raw[kv.Key], kv.Value)); // the average, not the raw weights
            Assert.DoesNotContain(g.Net.parameters(), p => p.requires_grad);
        }
        Assert.Equal(Path.Combine("runs", "eval", Path.GetFileName(dir) + "-step2.json"), Evaluation.DefaultOut(Path.Combine(dir, "checkpoint")));
        // a run folder whose generator.safetensors is not written yet: its latest checkpoint
        File.Delete(Path.Combine(dir, "generator.safetensors"));
        File.Delete(Path.Combine(dir, "generator.json"));
        Assert.True(ModelDraw.IsGenerator(dir));
        Assert.True(TestUtil.Same(written.Net.state_dict().First().Value, OneStepGenerator.Load(dir).Net.state_dict().First().Value));
        var png = Path.Combine(TestUtil.TempDir(), "s.png");
        var (code, output) = CliTests.Run("sample", "--model", Path.Combine(dir, "checkpoint"), "--n", "2", "--out", png, "--threads", "1");
        Assert.True(code == 0, output);
        Assert.True(File.Exists(png));
        // kept as a model folder (`dmd export`): the same generator, levels and spec; a second export there and an export
        // into the run's checkpoint folder are refused
        var kept = Path.Combine(TestUtil.TempDir(), "kept");
        (code, output) = CliTests.Run("export", "--model", step, "--out", kept);
        Assert.True(code == 0, output);
        Assert.Contains("step 2", output);
        var k = OneStepGenerator.Load(kept);
        Assert.True(ModelDraw.IsGenerator(kept));
        Assert.Null(DistillCheckpoint.Locate(kept)); // a plain generator folder now
        Assert.Equal(written.Sigmas, k.Sigmas);
        Assert.Equal(written.Spec, k.Spec);
        foreach (var (key, v) in k.Net.state_dict()) Assert.True(TestUtil.Same(written.Net.state_dict()[key], v), $"exported {key} differs");
        Assert.Equal(2, Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(kept, "config.json")).Config.Steps);
        Assert.Contains("already holds a generator", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportCheckpoint(step, kept)).Message);
        Assert.Contains("checkpoint/ folder", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportCheckpoint(step, Path.Combine(dir, "checkpoint", "x"))).Message);
        Assert.Contains("not a `dmd distill` run's checkpoint", Assert.Throws<DmdInputException>(() => OneStepGenerator.ExportCheckpoint(tiny.Dir, kept)).Message);
        // a teacher is not a checkpoint, and a damaged checkpoint is refused with the file's name
        Assert.False(ModelDraw.IsGenerator(tiny.Dir));
        var ema = Path.Combine(step, "ema.safetensors");
        var bytes = File.ReadAllBytes(ema);
        bytes[^1] ^= 1;
        File.WriteAllBytes(ema, bytes);
        var e = Assert.ThrowsAny<DmdException>(() => OneStepGenerator.Load(Path.Combine(dir, "checkpoint")));
        Assert.Contains("ema.safetensors", e.Message);
    }

    [Fact]
    public void GeneratorAverageFollowsItsFormulaIsSavedAndSurvivesResume()
    {
        var pairs = Pairs();
        var cfg = Small() with { Steps = 6, EmaDecay = 0.5 };
        var dirA = TestUtil.TempDir(); var dirB = TestUtil.TempDir();
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs))
        {
            // recompute the average by hand from the raw weights after every step: beta_n = min(0.5, (1 + n) / (10 + n))
            var expected = t.Generator.Net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
            for (int n = 0; n < cfg.Steps; n++)
            {
                t.TrainStep();
                double beta = Math.Min(0.5, (1.0 + n) / (10.0 + n));
                foreach (var (k, w) in t.Generator.Net.state_dict())
                    expected[k] = w.is_floating_point() ? beta * expected[k] + (1 - beta) * w.detach() : w.detach().clone();
            }
            foreach (var (k, e) in t.Ema!.Net.state_dict())
                Assert.True(e.allclose(expected[k], rtol: 1e-5, atol: 1e-7), $"average of {k} is off");
            Assert.False(TestUtil.Same(t.Ema.Net.state_dict().First().Value, t.Generator.Net.state_dict().First().Value));
            Assert.Same(t.Ema, t.Output);
        }
        // a run saves the average as its generator and resumes it bit for bit
        using (var a = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs)) a.Run(dirA, TeacherPath, null);
        using (var b = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs)) b.Run(dirB, TeacherPath, null, new RunOptions { StopAfter = 3 });
        using (var c = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg, pairs)) c.Run(dirB, TeacherPath, null);
        var ga = Checkpoint.LoadTensors(Path.Combine(dirA, "generator.safetensors"));
        var ema = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirA), "ema.safetensors"));
        var raw = Checkpoint.LoadTensors(Path.Combine(TestUtil.CheckpointFolder(dirA), "generator.safetensors"));
        var gb = Checkpoint.LoadTensors(Path.Combine(dirB, "generator.safetensors"));
        foreach (var k in ga.Keys)
        {
            Assert.True(TestUtil.Same(ga[k], ema[k]), $"{k}: generator.safetensors is not the average");
            Assert.True(TestUtil.Same(ga[k], gb[k]), $"{k} differs after resume");
        }
        Assert.Contains(ga.Keys, k => !TestUtil.Same(ga[k], raw[k]));
        Assert.Throws<DmdInputException>(() => new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, cfg with { EmaDecay = 1 }, pairs));
    }

    [Fact]
    public void GeneratorCanStartFromAnEarlierStudentOfTheSameArchitectureOnly()
    {
        var pairs = Pairs();
        var dir = TestUtil.TempDir();
        using (var a = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small(DmdMode.RegressionOnly) with { Steps = 3 }, pairs)) a.Run(dir, TeacherPath, null);
        var saved = Checkpoint.LoadTensors(Path.Combine(dir, "generator.safetensors"));
        using (var b = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { InitGenerator = dir }, pairs))
        {
            foreach (var (k, w) in b.Generator.Net.state_dict()) Assert.True(TestUtil.Same(saved[k], w), $"{k} not taken from the earlier student");
            // the fake denoiser still starts from the teacher (the paper)
            var teacher = DenoiserFile.Load(TeacherPath).Net.state_dict();
            foreach (var (k, w) in b.Fake.state_dict()) Assert.True(TestUtil.Same(teacher[k], w), $"fake {k} not the teacher's");
        }
        // a run started from it resumes without it; a fresh start without it is refused with the fix
        var runDir = TestUtil.TempDir();
        var moved = dir + "-moved";
        using (var c = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { InitGenerator = dir, Steps = 4 }, pairs)) c.Run(runDir, TeacherPath, null, new RunOptions { StopAfter = 2 });
        Directory.Move(dir, moved);
        using (var c = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { InitGenerator = dir, Steps = 4 }, pairs))
        {
            c.Run(runDir, TeacherPath, null);
            Assert.Equal(4, c.Step);
        }
        using (var c = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { InitGenerator = dir, Steps = 4 }, pairs))
        {
            var missing = Assert.Throws<DmdInputException>(() => c.Run(TestUtil.TempDir(), TeacherPath, null));
            Assert.Contains("not found", missing.Message);
            Assert.Throws<DmdInputException>(() => c.TrainStep());
        }
        var other = Path.Combine(TestUtil.TempDir(), "other.safetensors");
        var otherSpec = tiny.Spec with { ModelChannels = tiny.Spec.ModelChannels * 2 };
        DenoiserFile.Save(otherSpec.Build(), otherSpec, other);
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { InitGenerator = other }, pairs));
        Assert.Contains("another architecture", e.Message);
    }

    [Fact]
    public void ImageDistillationUsesTheSameDmGradientCodeAsPoints()
    {
        // loss_dm's gradient w.r.t. x is DmGradient / numel for images (4-D) exactly as for points (2-D)
        foreach (var shape in new[] { new long[] { 3, 2 }, new long[] { 3, 1, 4, 4 } })
        {
            var real = new GaussianDenoiser(zeros(shape[1..]), 0.5);
            var fake = new GaussianDenoiser(full(shape[1..], 0.3), 0.7);
            var x = randn(shape).requires_grad_(true);
            var sigma = full(shape[0], 1.5);
            using var g1 = new torch.Generator(7); using var g2 = new torch.Generator(7);
            DmdLoss.DistributionMatching(x, real, fake, sigma, null, g1).backward();
            var xt = x.detach() + DenoiserExtensions.Broadcast(sigma, x) * Rng.NormalLike(x.detach(), g2);
            var expected = DmdLoss.DmGradient(x.detach(), real.Denoise(xt, sigma), fake.Denoise(xt, sigma)) / x.numel();
            Assert.True(x.grad!.allclose(expected, rtol: 1e-5, atol: 1e-8), $"shape [{string.Join(",", shape)}]");
        }
    }

    [Fact]
    public void PairShardsResumeToTheSameSetAndIncompleteFoldersAreNamed()
    {
        var teacher = DenoiserFile.Load(TeacherPath).Net;
        var dir = Path.Combine(TestUtil.TempDir(), "pairs");
        var whole = RegressionPairs.Generate(teacher, tiny.Spec.SampleShape, 20, steps: 3, seed: 4, batchSize: 8, shardDir: dir);
        Assert.Equal(3, Directory.GetFiles(dir, "shard-*.safetensors").Length); // 8 + 8 + 4
        var kept = File.GetLastWriteTimeUtc(Path.Combine(dir, "shard-00000.safetensors"));
        File.Delete(Path.Combine(dir, "shard-00001.safetensors"));
        var e = Assert.Throws<DmdInputException>(() => RegressionPairs.Load(dir));
        Assert.Contains("incomplete (1 of 3 shards)", e.Message);

        var resumed = RegressionPairs.Generate(teacher, tiny.Spec.SampleShape, 20, steps: 3, seed: 4, batchSize: 8, shardDir: dir);
        Assert.Equal(kept, File.GetLastWriteTimeUtc(Path.Combine(dir, "shard-00000.safetensors"))); // read, not recomputed
        foreach (var p in new[] { resumed, RegressionPairs.Load(dir) })
        {
            Assert.True(TestUtil.Same(whole.Z, p.Z));
            Assert.True(whole.X.allclose(p.X, rtol: 0, atol: 1e-6));
            Assert.True(TestUtil.Same(whole.Y!, p.Y!));
        }
        Assert.Equal(new PairInfo("heun", 3, 5, 1.0, 4, 20, 8), RegressionPairs.Load(dir).Info);
        // other settings into the same folder are refused instead of mixing two sets
        e = Assert.Throws<DmdInputException>(() => RegressionPairs.Generate(teacher, tiny.Spec.SampleShape, 20, steps: 4, seed: 4, batchSize: 8, shardDir: dir));
        Assert.Contains("other settings", e.Message);
    }

    [Fact]
    public void OneStepGeneratorLoadsAndSamplesInTwoLines()
    {
        var dir = TestUtil.TempDir();
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small(DmdMode.DmOnly) with { Steps = 2 }, null)) t.Run(dir, TeacherPath, null);

        var images = OneStepGenerator.Load(dir).Sample(new[] { 1, 0, 1 }, seed: 5);

        Assert.Equal(new long[] { 3, 1, 16, 16 }, images.shape);
        // image i comes from noise seed 5 + i and its class, exactly as the generator maps them
        var g = OneStepGenerator.Load(Path.Combine(dir, "generator.safetensors"));
        using (no_grad())
        {
            var again = g.Generate(ImageSampling.SeededNoise(tiny.Spec.SampleShape, 6, 1), Rng.OneHot(tensor(new long[] { 0 }), 2));
            Assert.True(images[1].unsqueeze(0).allclose(again, rtol: 0, atol: 1e-6));
        }
        Assert.Throws<ArgumentException>(() => g.Sample(new[] { 2 }));
        Assert.Throws<ArgumentException>(() => g.Sample());
    }

    [Fact]
    public void RegressionDistancesAndTheLpipsFallback()
    {
        var a = randn(4, 1, 8, 8); var b = randn(4, 1, 8, 8);
        double c = 0.00054 * Math.Sqrt(64);
        var d2 = (a - b).square().reshape(4, -1).sum(1);
        double expected = ((d2 + c * c).sqrt() - c).mean().item<float>();
        Assert.Equal(expected, DmdLoss.RegressionPseudoHuber(a, b).item<float>(), 5);
        Assert.Equal(0, DmdLoss.RegressionPseudoHuber(a, a).item<float>(), 6);
        // near the target the constant matters: |a - b| = 8e-4 per sample against c = 0.00054 sqrt(64) = 0.00432
        var near = a + 1e-4f;
        double nearExpected = Math.Sqrt(64 * 1e-8 + c * c) - c; // 7.3e-5 (with c = 0.00054 it would be 4.2e-4)
        Assert.Equal(nearExpected, DmdLoss.RegressionPseudoHuber(near, a).item<float>(), nearExpected * 1e-2);

        var pairs = Pairs(8);
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small(), pairs)) Assert.Equal("l2", t.RegressionLoss); // auto, no weights
        using (var t = new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { RegressionLoss = "pseudo-huber" }, pairs)) Assert.Equal("pseudo-huber", t.RegressionLoss);
        var e = Assert.Throws<DmdInputException>(() => new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { RegressionLoss = "lpips" }, pairs));
        Assert.Contains("convert_lpips_weights.py", e.Message);
        e = Assert.Throws<DmdInputException>(() => new DmdTrainer(DenoiserFile.Load(TeacherPath).Net, tiny.Spec, Small() with { RegressionLoss = "l1" }, pairs));
        Assert.Contains("auto, l2, lpips or pseudo-huber", e.Message);
    }

    [Fact]
    public void DemoWritesItsReportWithPicturesOnASmallBudget()
    {
        // an untrained Fashion-MNIST-shaped teacher: the demo's machinery, not its quality, is under test here
        torch.manual_seed(3);
        var spec = new UNetOptions { ModelChannels = 8, NumBlocks = 1, Dropout = 0 }.FashionMnistTeacher();
        var teacherDir = TestUtil.TempDir();
        DenoiserFile.Save(spec.Build(), spec, Path.Combine(teacherDir, "teacher.safetensors"));
        var outDir = TestUtil.TempDir();
        var (code, output) = CliTests.Run("--threads", "1", "demo", "--teacher", teacherDir, "--budget-minutes", "0.4", "--pair-count", "20",
            "--pair-steps", "2", "--pair-batch", "10", "--dmd-batch-size", "4", "--dmd-regression-batch-size", "4", "--dmd-grid-every", "3", "--out", outDir);
        log.WriteLine(output);
        Assert.Equal(0, code);
        Assert.Contains("faster than the teacher", output);
        // DMD's progress counts against DMD's own share of the budget (what it announced), not the whole demo's
        var share = System.Text.RegularExpressions.Regex.Match(output, @"distilling for (\d+) s");
        Assert.True(share.Success, output);
        var totals = System.Text.RegularExpressions.Regex.Matches(output, @"dmd \(seconds of its budget\): \d+/(\d+)").Select(m => m.Groups[1].Value).ToList();
        Assert.NotEmpty(totals);
        Assert.All(totals, t => Assert.Equal(share.Groups[1].Value, t));
        var report = File.ReadAllText(Path.Combine(outDir, "report.md"));
        foreach (var row in new[] { "| teacher (Heun 2 steps) | 3 |", "| teacher, 1 step | 1 |", "| DMD student | 1 |" }) Assert.Contains(row, report);
        Assert.Contains("Speed-up of the student", report);
        // per class, beside the judge's own accuracy on real test images (the shipped judge's training.json: Shirt 74 %)
        var real = Dmd.Metrics.FdFmnist.ReadRealPerClassAccuracy()!;
        Assert.InRange(real[6], 0.70, 0.78);
        Assert.Contains("| real test images (the judge's own accuracy) | "
                        + string.Join(" | ", real.Select(v => (100 * v).ToString("F0", System.Globalization.CultureInfo.InvariantCulture))) + " |", report);
        var pictures = System.Text.RegularExpressions.Regex.Matches(report, @"\]\(([^)]+\.png)\)").Select(m => m.Groups[1].Value).ToList();
        Assert.True(pictures.Count >= 3, report); // start grid, end grid, losses
        foreach (var p in pictures) Assert.True(File.Exists(Path.Combine(outDir, p)), p);
        var res = Checkpoint.LoadJson<ImageDemoResults>(Path.Combine(outDir, "results.json"));
        Assert.True(res.DmdSteps > 0, "the demo makes at least one DMD step, whatever the budget");
        Assert.All(res.Rows, r => Assert.True(r.FdFmnist is double fd && double.IsFinite(fd)));
        Assert.True(File.Exists(Path.Combine(outDir, "dmd", "generator.safetensors")));
    }

    [Fact]
    public void BenchTimesTeacherTrainingAndDistillationAndJudgesRssLogs()
    {
        var (code, output) = CliTests.Run("--threads", "1", "bench", "--model", tiny.Dir, "--batch", "4", "--repeats", "1", "--steps", "2",
                                          "--train", "2", "--train-batch", "4", "--distill", "2", "--distill-batch", "2", "-o", Path.Combine(TestUtil.TempDir(), "b.json"));
        log.WriteLine(output);
        Assert.Equal(0, code);
        Assert.Contains("teacher training:", output);
        Assert.Contains("DMD (1 fake update, pairs), batch 2:", output);
        Assert.Contains("DMD2 (5 fake updates, GAN, no pairs), batch 2:", output);
        Assert.Contains("SiD's loss (5 fake updates, no GAN, no pairs), batch 2:", output);
        Assert.Contains("% of the peak", output);
        Assert.Contains("convolution peak:", output);
        Assert.Contains("peak RSS", output);

        var dir = TestUtil.TempDir();
        string Log(string name, Func<int, double> rss)
        {
            var path = Path.Combine(dir, name);
            File.WriteAllLines(path, new[] { "step,loss,rss_mb" }.Concat(Enumerable.Range(1, 100).Select(i => $"{10 * i},0.5,{rss(i).ToString(System.Globalization.CultureInfo.InvariantCulture)}")));
            return path;
        }
        (code, output) = CliTests.Run("bench", "--rss-log", Log("flat.csv", i => 1000 + (i % 7)));
        Assert.Equal(0, code);
        Assert.Contains("flat, under 5 %", output);
        (code, output) = CliTests.Run("bench", "--rss-log", Log("leak.csv", i => 1000 + 2 * i));
        Assert.Equal(1, code); // 1020 MB at 10 % -> 1200 MB at the end: +17 %
        Assert.Contains("GROWS", output);
        (code, output) = CliTests.Run("bench", "--rss-log", Log("leak2.csv", i => 1000 + 2 * i), "--rss-steps", "500:600");
        Assert.Equal(2, code); // 11 rows in that window
        Assert.Contains("need at least 20", output);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    static extern int SendSignal(int pid, int signal);

    [Fact]
    public async Task CliDistillStopsAfterItsMinutesWithAGeneratorAndContinuesTheRun()
    {
        var pairsDir = Path.Combine(TestUtil.TempDir(), "pairs");
        var (code, output) = CliTests.Run("--threads", "1", "pairs", "--teacher", tiny.Dir, "--count", "16", "--steps", "2", "--batch", "8", "--out", pairsDir);
        Assert.Equal(0, code);
        Assert.Equal(2, Directory.GetFiles(pairsDir, "shard-*.safetensors").Length);
        var outDir = TestUtil.TempDir();
        string[] Args(string minutes) => new[] { "--threads", "1", "distill", "--teacher", tiny.Dir, "--pairs", pairsDir, "--out", outDir, "--steps", "1000",
                                                 "--batch-size", "4", "--regression-batch-size", "4", "--grid-every", "0", "--minutes", minutes };
        (code, output) = CliTests.Run(Args("0.0001"));
        log.WriteLine(output);
        Assert.Equal(0, code);
        Assert.Contains("the same command continues the run", output);
        Assert.True(File.Exists(Path.Combine(outDir, "generator.safetensors")));
        int first = TestUtil.CheckpointStep(outDir);
        Assert.InRange(first, 1, 999); // a spent budget still lets each call make a step
        (code, output) = CliTests.Run(Args("0.0001"));
        Assert.Equal(0, code);
        Assert.True(TestUtil.CheckpointStep(outDir) > first);

        // SIGTERM (as Ctrl-C) stops it cleanly too: checkpoint and generator saved, exit code 0
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Dmd.Cli.dll"));
        foreach (var arg in Args("60").Concat(new[] { "--log-every", "1" })) psi.ArgumentList.Add(arg);
        int before = TestUtil.CheckpointStep(outDir);
        var csv = Path.Combine(outDir, "losses.csv");
        int rows = File.ReadAllLines(csv).Length;
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync(); var outText = p.StandardOutput.ReadToEndAsync();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (File.ReadAllLines(csv).Length <= rows + 2 && clock.Elapsed.TotalSeconds < 60 && !p.HasExited) Thread.Sleep(100);
        Assert.Equal(0, SendSignal(p.Id, 15)); // SIGTERM (no `kill` program on a bare machine)
        Assert.True(p.WaitForExit(60_000), "distill did not stop after SIGTERM");
        string stdout = await outText, stderr = await err;
        log.WriteLine(stdout + stderr);
        Assert.Equal(0, p.ExitCode);
        Assert.Contains("stopped on request", stdout);
        Assert.True(TestUtil.CheckpointStep(outDir) > before + 2);
    }
}
