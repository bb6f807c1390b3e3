using System.Diagnostics;
using Dmd.Networks;

namespace Dmd.Tests;

/// <summary>The command-line tool as a user meets it: run as a separate process.</summary>
public class CliTests
{
    internal static (int Code, string Output) Run(params string[] args) => RunIn(null, args);

    internal static (int Code, string Output) RunIn(string? workingDirectory, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (workingDirectory is not null) psi.WorkingDirectory = workingDirectory;
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Dmd.Cli.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["COLUMNS"] = "200";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    [Fact]
    public void WrongPathsGiveOneLineErrorsThatNameTheFix()
    {
        var (code, output) = Run("train-teacher", "--data", "csv:/no/such/points.csv", "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("error: CSV file not found: /no/such/points.csv", output);
        Assert.DoesNotContain("   at ", output); // no stack trace

        (code, output) = Run("distill", "--teacher", "/no/such/teacher", "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("model not found", output);
        Assert.Contains("dmd train-teacher", output);
    }

    [Fact]
    public void EveryExpectedFailureIsOneLineAndANonZeroExit()
    {
        var dir = TestUtil.TempDir();
        var teacher = EvalAndBenchCliTests.TinyModel(dir, "teacher.safetensors");
        var aFile = Path.Combine(dir, "a-file");
        File.WriteAllText(aFile, "");
        var cases = new (string[] Args, string Expected)[]
        {
            (new[] { "distill", "--teacher", teacher, "--batch-size", "-3", "--mode", "DmOnly", "--out", Path.Combine(dir, "d") }, "batch-size -3: must be at least 1"),
            (new[] { "distill", "--teacher", teacher, "--generator-steps", "3", "--generator-levels", "80,2", "--lambda-reg", "0", "--out", Path.Combine(dir, "d") }, "generator-levels \"80,2\": 2 levels for a 3-step generator"),
            (new[] { "sample", "--model", teacher, "--n", "-4" }, "--n -4: must be at least 1"),
            (new[] { "sample", "--model", teacher, "--steps", "0" }, "--steps 0: must be at least 1"),
            (new[] { "pairs", "--teacher", teacher, "--steps", "0", "--out", Path.Combine(dir, "p") }, "--steps 0: must be at least 1"),
            (new[] { "train-teacher", "--steps", "0", "--out", Path.Combine(dir, "t0") }, "steps 0: must be at least 1"),
            (new[] { "train-teacher", "--steps", "-5", "--out", Path.Combine(dir, "t0") }, "steps -5: must be at least 1"),
            (new[] { "train-teacher", "--batch-size", "0", "--out", Path.Combine(dir, "t0") }, "batch-size 0: must be at least 1"),
            (new[] { "train-teacher", "--learning-rate", "1,5", "--out", Path.Combine(dir, "t0") }, "--learning-rate: '1,5' is not a valid value"),
            (new[] { "train-teacher", "--learning-rate", "NaN", "--out", Path.Combine(dir, "t0") }, "--learning-rate: 'NaN' is not a valid value"),
            (new[] { "--threads", "100000", "train-teacher", "--out", Path.Combine(dir, "t0") }, "--threads 100000: give 1 to"),
            (new[] { "train-teacher", "--out", aFile }, "is a file, not a folder"),
            (new[] { "eval", "--model", teacher, "--n", "100", "--data", "ring8", "--out", dir }, "is a folder; name a file"),
            (new[] { "eval", "--model", teacher, "--n", "100", "--data", "ring8", "--out", Path.Combine(aFile, "eval.json") }, "is a file, not a folder"),
            (new[] { "bench", "--model", teacher, "--out", "/proc/no/bench.json" }, "--out: cannot write to /proc/no"),
        };
        foreach (var (args, expected) in cases)
        {
            var (code, output) = Run(args);
            Assert.True(code == 2, $"{string.Join(" ", args)}: exit {code}\n{output}");
            Assert.Contains("error: " , output);
            Assert.Contains(expected, output);
            Assert.DoesNotContain("   at ", output); // no stack trace
            Assert.Single(output.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("error:"));
        }
        Assert.False(Directory.Exists(Path.Combine(dir, "t0", "checkpoint")));
        Assert.False(File.Exists(Path.Combine(dir, "t0", "teacher.safetensors")));
        Assert.False(Directory.Exists(Path.Combine(dir, "d"))); // a refused distill setting leaves no --out folder behind
    }

    [Fact]
    public void ConfigFilesWithUnknownKeysAreRefused()
    {
        var dir = TestUtil.TempDir();
        var cfg = Path.Combine(dir, "settings.json");
        File.WriteAllText(cfg, "{ \"Stepz\": 10 }");
        var (code, output) = Run("train-teacher", "--config", cfg, "--out", Path.Combine(dir, "t"));
        Assert.Equal(2, code);
        Assert.Contains("Stepz", output);
        Assert.False(Directory.Exists(Path.Combine(dir, "t", "checkpoint")));
    }

    [Fact]
    public void BadOptionValuesAreRejectedClearly()
    {
        var (code, output) = Run("train-teacher", "--steps", "many", "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("--steps: 'many' is not a valid value", output);
        (code, output) = Run("distill", "--teacher", "x", "--mode", "sideways");
        Assert.Equal(2, code);
        Assert.Contains("Full, RegressionOnly, DmOnly", output);
    }

    [Fact]
    public void EveryHyperParameterIsAnOption()
    {
        var (code, output) = Run("toy2d", "--help");
        Assert.Equal(0, code);
        foreach (var o in new[] { "--teacher-steps", "--dmd-lambda-reg", "--dmd-min-step", "--dmd-guidance-real", "--dmd-mode", "--data", "--quick" })
            Assert.Contains(o, output);
    }

    [Fact]
    public void ASettingsHelpNamesTheOptionsItRefersTo()
    {
        // the regression loss's summary refers to <see cref="LpipsWeights"/>: help shows the option, nested prefix and all
        static string Flat(string s) => System.Text.RegularExpressions.Regex.Replace(s, @"\s+", " "); // help wraps long lines
        var (code, output) = Run("distill", "--help");
        Assert.Equal(0, code);
        Assert.Contains("\"lpips\" (needs --lpips-weights;", Flat(output));
        (code, output) = Run("toy2d", "--help");
        Assert.Equal(0, code);
        Assert.Contains("\"lpips\" (needs --dmd-lpips-weights;", Flat(output));
        Assert.False(output.Contains('\u0001'), "a reference mark left in the help");
    }
}

public class EvalAndBenchCliTests
{
    internal static string TinyModel(string dir, string name)
    {
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 0, SigmaData = 1.0, Width = 16, Depth = 1 };
        var path = Path.Combine(dir, name);
        Dmd.Networks.DenoiserFile.Save(spec.Build(), spec, path);
        return path;
    }

    [Fact]
    public void EvalWritesTheMetricsOfAModelAsJson()
    {
        var dir = TestUtil.TempDir();
        var teacher = TinyModel(dir, "teacher.safetensors");
        var outPath = Path.Combine(dir, "eval.json");
        var (code, output) = CliTests.Run("eval", "--model", teacher, "--n", "300", "--steps", "3", "--data", "ring8", "--out", outPath);
        Assert.True(code == 0, output);
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(outPath)).RootElement;
        Assert.Equal(5, json.GetProperty("Nfe").GetInt32());
        Assert.Equal("heun", json.GetProperty("Sampler").GetString());
        var m = json.GetProperty("Metrics");
        Assert.True(m.GetProperty("energy_distance").GetDouble() > 0.1); // an untrained net is far from the ring
        Assert.InRange(m.GetProperty("recall").GetDouble(), 0, 1);
    }

    [Fact]
    public void EvalWithAGuidanceIntervalIntoAFolderNamedWithBracketsPrintsBothAndKeepsTheJson()
    {
        // Spectre.Console reads [ and ] as markup: "(0.1, 1]" in the table and a path like runs/[a] once failed
        // after the whole evaluation, before the JSON was written
        var dir = Path.Combine(TestUtil.TempDir(), "[a]");
        Directory.CreateDirectory(dir);
        var spec = new MlpSpec { Shape = new[] { 2 }, LabelDim = 8, SigmaData = 1.0, Width = 16, Depth = 1 };
        var teacher = Path.Combine(dir, "teacher.safetensors");
        Dmd.Networks.DenoiserFile.Save(spec.Build(), spec, teacher);
        var outPath = Path.Combine(dir, "eval.json");
        var (code, output) = CliTests.Run("eval", "--model", teacher, "--n", "200", "--steps", "3", "--data", "ring8",
                                          "--guidance", "2", "--guidance-interval", "0.1,1", "--out", outPath);
        Assert.True(code == 0, output);
        Assert.Contains("2 at sigma in (0.1, 1]", output);
        Assert.Contains("wrote " + outPath, output.Replace("\r", "").Replace("\n", ""));
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(outPath)).RootElement;
        Assert.Equal(2, json.GetProperty("Guidance").GetDouble());
        Assert.Equal("(0.1, 1]", json.GetProperty("GuidanceInterval").GetString());
    }

    [Fact]
    public void EvalOfAClassConditionalImageModelShowsEachClassAgainstTheJudgesAccuracyOnRealImages()
    {
        var model = Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-student");
        var outPath = Path.Combine(TestUtil.TempDir(), "eval.json");
        var (code, output) = CliTests.Run("eval", "--model", model, "--n", "100", "--out", outPath);
        Assert.True(code == 0, output);
        output = output.Replace("\r", "").Replace("\n", ""); // the console wraps long lines between words
        // the judge's own test accuracy per class (its training.json; the classifier's card: Shirt 74.3, Bag 98.4) beside each class
        Assert.Contains("in brackets: the judge on real test images", output);
        Assert.Matches(@"Shirt -?[ 0-9.]+%? ?\(74\.3\)", output);
        Assert.Matches(@"Bag -?[ 0-9.]+%? ?\(98\.4\)", output);
        var real = System.Text.Json.JsonDocument.Parse(File.ReadAllText(outPath)).RootElement.GetProperty("RealPerClassAccuracy");
        Assert.Equal(10, real.GetArrayLength());
        Assert.Equal(0.743, real[6].GetDouble(), 6);
    }

    [Fact]
    public void EvalNeverWritesIntoTheModelFolderAndUsesTheModelsOwnData()
    {
        var work = TestUtil.TempDir();
        var run = Path.Combine(work, "moons-teacher");
        var (code, output) = CliTests.RunIn(work, "train-teacher", "--data", "moons", "--train-points", "500", "--width", "16", "--depth", "1",
                                   "--steps", "3", "--batch-size", "16", "--out", run);
        Assert.True(code == 0, output);
        var before = Directory.GetFiles(run).Order().ToArray();
        (code, output) = CliTests.RunIn(work, "eval", "--model", run, "--n", "100", "--steps", "2");
        Assert.True(code == 0, output);
        Assert.Contains("reference: moons", output);
        Assert.Equal(before, Directory.GetFiles(run).Order().ToArray());
        var written = Path.Combine(work, "runs", "eval", "moons-teacher.json");
        Assert.True(File.Exists(written), output);
        Assert.Equal("moons", System.Text.Json.JsonDocument.Parse(File.ReadAllText(written)).RootElement.GetProperty("Reference").GetString());

        // a bare model file with no run beside it: the reference must be named
        var bare = TinyModel(TestUtil.TempDir(), "teacher.safetensors");
        (code, output) = CliTests.RunIn(work, "eval", "--model", bare, "--n", "100", "--steps", "2");
        Assert.Equal(2, code);
        Assert.Contains("--data", output);
    }

    [Fact]
    public void BenchComparesTwoModelsAndReportsTheirRatio()
    {
        var dir = TestUtil.TempDir();
        var teacher = TinyModel(dir, "teacher.safetensors");
        var gen = TinyModel(dir, "generator.safetensors");
        var outPath = Path.Combine(dir, "bench.json");
        var (code, output) = CliTests.Run("bench", "--model", teacher, "--model", gen, "--batch", "256", "--repeats", "3", "--steps", "4", "--out", outPath);
        Assert.True(code == 0, output);
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(outPath)).RootElement;
        var models = json.GetProperty("Models");
        Assert.Equal(7, models[0].GetProperty("Nfe").GetInt32());
        Assert.Equal(1, models[1].GetProperty("Nfe").GetInt32());
        Assert.True(json.GetProperty("SpeedUp").GetDouble() > 0, output); // the ratio itself is a speed: judged by bench runs, not by tests
        Assert.Contains("speed ratio", output);
    }

    [Fact]
    public void SamplingOnOneThreadPrintsNothingFromLibtorch()
    {
        // libtorch tried NNPACK for each small-batch convolution on one thread and, on CPUs NNPACK does not support,
        // printed "Could not initialize NNPACK!" every time (22 lines here); NativeSetup switches NNPACK off
        Assert.False(NativeSetup.NnpackEnabled() ?? false);
        var png = Path.Combine(TestUtil.TempDir(), "s.png");
        var (code, output) = CliTests.Run("--threads", "1", "sample", "--model", Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-student"),
            "--n", "10", "--out", png);
        Assert.Equal(0, code);
        Assert.True(File.Exists(png));
        Assert.DoesNotContain("NNPACK", output);
        Assert.DoesNotContain("[W", output);
    }
}
