using System.Diagnostics;

namespace Dmd.Tests;

/// <summary>The command-line tool as a user meets it: run as a separate process.</summary>
public class CliTests
{
    internal static (int Code, string Output) Run(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
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
}

public class EvalAndBenchCliTests
{
    static string TinyModel(string dir, string name)
    {
        var spec = new Dmd.Networks.NetworkSpec("mlp", new[] { 2 }, 0, 1.0, 16, 1);
        var path = Path.Combine(dir, name);
        Dmd.IO.DenoiserFile.Save(spec.Build(), spec, path);
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
        Assert.True(json.GetProperty("SpeedUp").GetDouble() > 1.5, output); // 7 NFE vs 1 NFE of the same network
        Assert.Contains("speed ratio", output);
    }
}
