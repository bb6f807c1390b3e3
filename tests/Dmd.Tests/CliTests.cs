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
