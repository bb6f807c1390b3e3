using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Data-parallel runs of the command-line tool under Open MPI's <c>mpirun</c> (2 ranks, loopback TCP only), on point
/// data so that they stay short. Skipped, with the reason, where mpirun is not installed.
/// </summary>
public class MpiTests
{
    static readonly string Cli = Path.Combine(AppContext.BaseDirectory, "Dmd.Cli.dll");

    /// <summary>Runs <c>mpirun -np N dotnet Dmd.Cli.dll ARGS</c> and returns its exit code and output (stdout + stderr).</summary>
    internal static (int Code, string Output) MpiRun(int ranks, params string[] args) => Wait(StartMpi(ranks, args, out var output), output);

    static Process StartMpi(int ranks, string[] args, out System.Text.StringBuilder output)
    {
        var psi = new ProcessStartInfo("mpirun") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        // as root in CI, any number of ranks on this machine's cores, TCP on the loopback interface only
        foreach (var a in new[] { "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,tcp",
                                  "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo", "-np", ranks.ToString(), "dotnet", Cli })
            psi.ArgumentList.Add(a);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["COLUMNS"] = "200";
        var p = Process.Start(psi)!;
        var sb = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (sb) sb.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (sb) sb.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        output = sb;
        return p;
    }

    static (int, string) Wait(Process p, System.Text.StringBuilder output)
    {
        if (!p.WaitForExit(120_000)) { p.Kill(entireProcessTree: true); p.WaitForExit(); }
        p.WaitForExit(); // flushes the output events
        lock (output) return (p.ExitCode, output.ToString());
    }

    /// <summary>The <c>rank R/N weights HEX</c> lines of a run: one checksum per rank, in rank order.</summary>
    static string[] Checksums(string output, int ranks)
    {
        var found = Regex.Matches(output, @"rank (\d+)/(\d+) weights ([0-9a-f]{16})")
            .Select(m => (Rank: int.Parse(m.Groups[1].Value), Size: int.Parse(m.Groups[2].Value), Sum: m.Groups[3].Value)).ToList();
        Assert.True(found.Count == ranks && found.All(f => f.Size == ranks), $"expected {ranks} checksum lines:\n{output}");
        return found.OrderBy(f => f.Rank).Select(f => f.Sum).ToArray();
    }

    static readonly string[] TeacherArgs = { "--width", "32", "--depth", "2", "--batch-size", "64", "--seed", "5" };

    [MpiFact]
    public void TwoRanksKeepIdenticalWeightsAndWriteTheShardsOfOneProcess()
    {
        var dir = TestUtil.TempDir();
        var teacher = Path.Combine(dir, "teacher");
        var (code, output) = MpiRun(2, new[] { "train-teacher", "--steps", "10", "--out", teacher }.Concat(TeacherArgs).ToArray());
        Assert.True(code == 0, output);
        var sums = Checksums(output, 2);
        Assert.Equal(sums[0], sums[1]);
        Assert.True(File.Exists(Path.Combine(teacher, "teacher.safetensors")), output);

        // pairs: the shards of a 2-rank run are those of one process
        (code, output) = MpiRun(2, "pairs", "--teacher", teacher, "--count", "200", "--batch", "64", "--out", Path.Combine(dir, "pairs2"));
        Assert.True(code == 0, output);
        var (code1, output1) = CliTests.Run("pairs", "--teacher", teacher, "--count", "200", "--batch", "64", "--out", Path.Combine(dir, "pairs1"));
        Assert.True(code1 == 0, output1);
        var one = RegressionPairs.Load(Path.Combine(dir, "pairs1"));
        var two = RegressionPairs.Load(Path.Combine(dir, "pairs2"));
        Assert.True(TestUtil.Same(one.Z, two.Z) && TestUtil.Same(one.X, two.X), "2-rank pairs differ from 1-process pairs");
        Assert.Equal(one.Info, two.Info);

        // DMD with regression, two fake updates and the GAN head: every trained network stays the same on both ranks
        (code, output) = MpiRun(2, "distill", "--teacher", teacher, "--pairs", Path.Combine(dir, "pairs2"), "--steps", "4", "--batch-size", "16",
                                "--regression-batch-size", "16", "--fake-updates-per-step", "2", "--gan-weight", "0.01", "--ema-decay", "0.9",
                                "--out", Path.Combine(dir, "dmd"));
        Assert.True(code == 0, output);
        sums = Checksums(output, 2);
        Assert.Equal(sums[0], sums[1]);
        Assert.Equal(4, TestUtil.CheckpointStep(Path.Combine(dir, "dmd")));

        // a 3-step generator with a network per step: the ranks draw the same level, so they train the same step's network
        (code, output) = MpiRun(2, "distill", "--teacher", teacher, "--lambda-reg", "0", "--steps", "4", "--batch-size", "16",
                                "--generator-steps", "3", "--separate-step-networks", "--fake-updates-per-step", "2", "--out", Path.Combine(dir, "steps"));
        Assert.True(code == 0, output);
        sums = Checksums(output, 2);
        Assert.Equal(sums[0], sums[1]);

        // a global batch the ranks cannot split is one line from rank 0 and a failed job
        (code, output) = MpiRun(2, "train-teacher", "--steps", "2", "--width", "32", "--depth", "2", "--batch-size", "63", "--out", Path.Combine(dir, "odd"));
        Assert.NotEqual(0, code);
        // (lines may start with the terminal codes .NET writes to the pseudo-terminal mpirun gives each rank)
        Assert.Single(Regex.Matches(output, "error: rank 0/2: batch-size 63 does not split evenly over 2 ranks"));
        Assert.DoesNotContain("rank 1/2: batch-size", output);
    }

    [MpiFact]
    public void TheFirstStepOfTwoRanksIsOneProcessStepOnTheWholeBatch()
    {
        var dir = TestUtil.TempDir();
        var teacherDir = Path.Combine(dir, "teacher");
        var (code, output) = MpiRun(2, new[] { "train-teacher", "--steps", "1", "--log-every", "1", "--out", teacherDir }.Concat(TeacherArgs).ToArray());
        Assert.True(code == 0, output);

        // the teacher: one process with both ranks' shares (each from its rank's stream), one backward through the mean loss
        using (var t = TeacherTrainer.ForPoints("ring8", 50_000, conditional: false, width: 32, depth: 2, new TeacherConfig { Seed = 5, BatchSize = 64 }))
        {
            var (set, spec) = (t.Data, t.Spec);
            t.Net.train();
            var losses = Enumerable.Range(0, 2).Select(r =>
            {
                using var g = RankGenerator(5, r);
                var (x, _) = set.Batch(32, g);
                return EdmLoss.Compute(t.Net, x, null, spec.SigmaData, g);
            }).ToArray();
            var loss = (losses[0] + losses[1]) / 2;
            loss.backward();
            AssertGradientsInCheckpoint(t.Net, Path.Combine(TestUtil.CheckpointFolder(teacherDir), "optimizer.pt"), "teacher");
            Assert.Equal(loss.item<float>(), LoggedAtStep1(teacherDir, "loss"), 1e-5 * Math.Abs(loss.item<float>()));
        }

        // DMD (DM loss, one fake update): the generator's and the fake denoiser's first gradients and losses
        var dmdDir = Path.Combine(dir, "dmd");
        (code, output) = MpiRun(2, "distill", "--teacher", teacherDir, "--mode", "DmOnly", "--steps", "1", "--batch-size", "16", "--seed", "7",
                                "--fake-updates-per-step", "1", "--log-every", "1", "--out", dmdDir);
        Assert.True(code == 0, output);
        var (net, tspec) = DenoiserFile.Load(teacherDir);
        var cfg = new DmdConfig { Mode = DmdMode.DmOnly, BatchSize = 16, Seed = 7 };
        using var d = new DmdTrainer(net, tspec, cfg, null);
        var grid = KarrasSchedule.AscendingGrid(cfg.GridLevels, cfg.SigmaMin, cfg.SigmaMax);
        Tensor lossDm = zeros(1).squeeze(), lossFake = zeros(1).squeeze();
        d.Generator.Net.train();
        d.Fake.train();
        for (int r = 0; r < 2; r++)
        {
            using var g = RankGenerator(7, r);
            var z = Rng.Normal(new long[] { 8, 2 }, g);
            var x = d.Generator.Generate(z, null);
            var sigma = grid.index_select(0, Rng.Integers(cfg.MinStep, cfg.MaxStep + 1, 8, g));
            lossDm = lossDm + DmdLoss.DistributionMatching(x, d.Real, d.Fake, sigma, null, g) / 2;
            var sigmaF = grid.index_select(0, Rng.Integers(0, cfg.GridLevels, 8, g));
            lossFake = lossFake + DmdLoss.FakeDenoising(d.Fake, x.detach(), sigmaF, null, tspec.SigmaData, g) / 2;
        }
        (lossDm + lossFake).backward();
        var ckpt = TestUtil.CheckpointFolder(dmdDir);
        AssertGradientsInCheckpoint(d.Generator.Net, Path.Combine(ckpt, "optim_generator.pt"), "generator");
        AssertGradientsInCheckpoint(d.Fake, Path.Combine(ckpt, "optim_fake.pt"), "fake denoiser");
        Assert.Equal(lossDm.item<float>(), LoggedAtStep1(dmdDir, "loss_dm"), 1e-5 * Math.Abs(lossDm.item<float>()) + 1e-12);
        Assert.Equal(lossFake.item<float>(), LoggedAtStep1(dmdDir, "loss_fake"), 1e-5 * Math.Abs(lossFake.item<float>()));
    }

    /// <summary>Rank r's generator at step 0 of a multi-rank run (<see cref="DataParallel.SeedStep"/>).</summary>
    static Generator RankGenerator(long seed, int rank)
    {
        var g = new Generator(0);
        g.manual_seed(unchecked((long)DataParallel.StepSeed(seed, rank, 0)));
        return g;
    }

    /// <summary>
    /// After one Adam/AdamW step the first moment is (1 - beta1) times the gradient the step used (weight decay is applied
    /// to the weights, not to it): the all-reduced gradient, read back from the checkpoint, against the one computed here.
    /// </summary>
    static void AssertGradientsInCheckpoint(nn.Module module, string optimizerFile, string what)
    {
        var ps = module.parameters().ToList();
        using var opt = optim.Adam(ps, 1e-3);
        ((TorchSharp.Modules.OptimizerHelper)opt).load_py(optimizerFile);
        var states = opt.state_dict().State;
        Assert.Equal(ps.Count, states.Count);
        for (int i = 0; i < ps.Count; i++)
        {
            var fromRun = ((TorchSharp.Modules.Adam.State)states[i]).exp_avg / 0.1;
            var here = ps[i].grad ?? zeros_like(ps[i]);
            double scale = Math.Max(here.abs().max().item<float>(), 1e-12);
            double err = (fromRun - here).abs().max().item<float>();
            Assert.True(err <= 1e-4 * scale + 1e-9, $"{what}: parameter {i} gradient differs by {err:G3} (largest {scale:G3})");
        }
    }

    static double LoggedAtStep1(string runDir, string column)
    {
        var lines = File.ReadAllLines(Path.Combine(runDir, "losses.csv"));
        int c = Array.IndexOf(lines[0].Split(','), column);
        Assert.True(c >= 0, $"{column} not in {lines[0]}");
        var row = lines.Skip(1).Select(l => l.Split(',')).First(f => f[0] == "1");
        return double.Parse(row[c], CultureInfo.InvariantCulture);
    }

    [MpiFact]
    public void TwoRanksEvaluateTheSamplesOfOneProcessFromGatheredFeatures()
    {
        // each rank samples half of the 60 images and computes their classifier features and logits; only those travel
        var model = Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-student");
        var dir = TestUtil.TempDir();
        var (code, output) = MpiRun(2, "eval", "--model", model, "--n", "60", "--out", Path.Combine(dir, "two.json"));
        Assert.True(code == 0, output);
        var (code1, output1) = CliTests.Run("eval", "--model", model, "--n", "60", "--out", Path.Combine(dir, "one.json"));
        Assert.True(code1 == 0, output1);
        double Metric(string file, string name) =>
            System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, file)))!["Metrics"]![name]!.GetValue<double>();
        Assert.Equal(Metric("one.json", "class_accuracy"), Metric("two.json", "class_accuracy"));
        double fd1 = Metric("one.json", "fd_fmnist"), fd2 = Metric("two.json", "fd_fmnist");
        Assert.True(Math.Abs(fd1 - fd2) <= 1e-4 * fd1, $"FD-FMNIST of 2 ranks {fd2} vs 1 process {fd1}");
    }

    [MpiFact]
    public void ACheckpointOfTwoRanksResumesOnOneAndTheReverse()
    {
        var dir = TestUtil.TempDir();
        var teacher = Path.Combine(dir, "teacher");
        var (code, output) = MpiRun(2, new[] { "train-teacher", "--steps", "6", "--checkpoint-every", "3", "--out", teacher }.Concat(TeacherArgs).ToArray());
        Assert.True(code == 0, output);
        (code, output) = CliTests.Run(new[] { "train-teacher", "--steps", "9", "--checkpoint-every", "3", "--out", teacher }.Concat(TeacherArgs).ToArray());
        Assert.True(code == 0, output);
        Assert.Contains("resuming from step 6", output);
        (code, output) = MpiRun(2, new[] { "train-teacher", "--steps", "12", "--checkpoint-every", "3", "--out", teacher }.Concat(TeacherArgs).ToArray());
        Assert.True(code == 0, output);
        Assert.Contains("resuming from step 9", output);
        Assert.Equal(12, TestUtil.CheckpointStep(teacher));
        var steps = File.ReadAllLines(Path.Combine(teacher, "losses.csv")).Skip(1).Select(l => l.Split(',')[0]).ToArray();
        Assert.Equal(steps.Distinct().Count(), steps.Length); // each step logged once, by rank 0
    }

    [MpiFact]
    public void AKilledRankFailsTheJobAndTheLastCheckpointStaysLoadable()
    {
        var dir = TestUtil.TempDir();
        var run = Path.Combine(dir, "teacher");
        var p = StartMpi(2, new[] { "train-teacher", "--steps", "100000", "--checkpoint-every", "20", "--out", run }.Concat(TeacherArgs).ToArray(), out var output);
        var pointer = Path.Combine(run, "checkpoint", "latest");
        var clock = Stopwatch.StartNew();
        while (!File.Exists(pointer) && clock.Elapsed.TotalSeconds < 60 && !p.HasExited) Thread.Sleep(100);
        Assert.True(File.Exists(pointer), "no checkpoint within 60 s:\n" + output);
        var rank1 = Process.GetProcesses().FirstOrDefault(q => IsRank1Of(q, run));
        Assert.True(rank1 is not null, "rank 1 not found");
        rank1!.Kill();
        var (code, text) = Wait(p, output);
        Assert.NotEqual(0, code);
        Assert.Matches(@"rank 1 .*(signal 9|Killed)", text); // the launcher names the rank that died and how
        // the checkpoint left behind is complete: one process continues from it
        int step = TestUtil.CheckpointStep(run);
        var (code1, output1) = CliTests.Run(new[] { "train-teacher", "--steps", (step + 2).ToString(), "--out", run }.Concat(TeacherArgs).ToArray());
        Assert.True(code1 == 0, output1);
        Assert.Contains($"resuming from step {step}", output1);
    }

    /// <summary>Whether a process is rank 1 of the job writing <paramref name="run"/> (its command line and environment).</summary>
    static bool IsRank1Of(Process q, string run)
    {
        try
        {
            var cmd = File.ReadAllText($"/proc/{q.Id}/cmdline");
            if (!cmd.Contains("Dmd.Cli.dll") || !cmd.Contains(run)) return false;
            return File.ReadAllText($"/proc/{q.Id}/environ").Split('\0').Contains("OMPI_COMM_WORLD_RANK=1");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    [Fact]
    public void ATaskOfAnSrunStepWithoutMpiIsRefusedInsteadOfRunningTheJobAlone()
    {
        // what srun --mpi=none gives each of 2 tasks (measured with Slurm 22.05): SLURM_* only, no PMIx/PMI variables
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Cli);
        foreach (var a in new[] { "train-teacher", "--steps", "2", "--out", TestUtil.TempDir() }.Concat(TeacherArgs)) psi.ArgumentList.Add(a);
        foreach (var v in new[] { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK" }) psi.Environment.Remove(v);
        psi.Environment["SLURM_STEP_NUM_TASKS"] = "2";
        psi.Environment["SLURM_PROCID"] = "1";
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(2, p.ExitCode);
        Assert.Contains("error: started by srun as task 1 of 2 without MPI", output);
        Assert.Contains("--mpi=pmix", output);
    }

    [Fact]
    public void WithoutALauncherNothingChanges()
    {
        Assert.False(Mpi.Active);
        Assert.Equal((0, 1), (DataParallel.Rank, DataParallel.Size));
        Assert.Equal(63, DataParallel.Share(63, "batch-size"));
        using var g = new Generator(11);
        var before = Dmd.IO.Checkpoint.GeneratorState(g);
        DataParallel.SeedStep(g, 11, 5); // one process: the run's one continuous stream is left alone
        Assert.Equal(before, Dmd.IO.Checkpoint.GeneratorState(g));
        var m = nn.Linear(3, 2);
        m.forward(ones(4, 3)).sum().backward();
        var grad = m.weight!.grad!.clone();
        DataParallel.AverageGradients(m);
        Assert.True(TestUtil.Same(grad, m.weight!.grad!));
    }
}

/// <summary>A test that runs Open MPI's <c>mpirun</c>: skipped, with the reason and the fix, where it is not installed.</summary>
internal sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        if (!path.Split(':').Any(d => d.Length > 0 && File.Exists(Path.Combine(d, "mpirun"))))
            Skip = "mpirun is not installed (apt-get install openmpi-bin); the data-parallel runs were not tested";
    }
}
