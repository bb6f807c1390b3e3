using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Pipelines;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>
/// What each rank of a data-parallel job (mpirun/srun) prints at the end of a training command, on stdout, even the ranks
/// whose other output is silenced: <c>rank R/N weights HEX</c> (a checksum of the trained weights: equal on every rank),
/// the steps this process made and their rate, and the time spent in all-reduce per step. Nothing without a launcher.
/// </summary>
internal sealed class RankReport
{
    readonly Stopwatch clock = new();
    int steps;

    /// <summary>Call after each step (the clock starts at the first, so start-up is not counted).</summary>
    public void Step()
    {
        if (steps++ == 0) { clock.Restart(); allreduceAtStart = Mpi.AllreduceSeconds; }
    }
    double allreduceAtStart;

    public void Print(params TorchSharp.torch.nn.Module?[] trained)
    {
        if (!Mpi.Active) return;
        double secs = clock.Elapsed.TotalSeconds;
        string rate = steps > 1 ? string.Create(CultureInfo.InvariantCulture, $"; {steps} steps, {(steps - 1) / secs:F2} it/s after the first, all-reduce {1000 * (Mpi.AllreduceSeconds - allreduceAtStart) / (steps - 1):F2} ms/step (with waiting for the slowest rank)") : "";
        Console.WriteLine($"rank {Mpi.Rank}/{Mpi.Size} weights {DataParallel.Checksum(trained)}{rate}{(steps > 1 && Mpi.Size > 1 ? "; " + TransferTime(trained) : "")}");
    }

    /// <summary>The all-reduce of one flat buffer the size of the trained networks' parameters, after a barrier: the transfer alone (median of 10).</summary>
    static string TransferTime(TorchSharp.torch.nn.Module?[] trained)
    {
        long n = trained.Where(m => m is not null).Sum(m => m!.parameters().Where(p => p.requires_grad).Sum(p => p.numel()));
        var buf = new float[n];
        var times = new List<double>();
        for (int i = 0; i < 11; i++)
        {
            Mpi.Barrier();
            var c = Stopwatch.StartNew();
            Mpi.AllreduceSum(buf);
            if (i > 0) times.Add(c.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        return string.Create(CultureInfo.InvariantCulture, $"one all-reduce of all trained parameters ({n:N0} floats, {n * 4 / 1e6:F2} MB) alone: {times[times.Count / 2]:F2} ms");
    }
}

internal static class Common
{
    public static Option<string> Out(string def) => new("--out", "-o") { Description = "output folder", DefaultValueFactory = _ => def };
    public static Option<string?> ConfigFile() => new("--config") { Description = "JSON file with the run's settings, or a run's own config.json (command-line options override it)" };
    /// <summary>`sample`/`eval --step-noise-carry`: a K-step generator sampled with another carry than its own (<see cref="ModelDraw.WithStepNoiseCarry"/>).</summary>
    public static Option<double?> StepNoiseCarry() => new("--step-noise-carry") { Description = "a K-step generator: the share of the noise re-injected between its steps carried over from the step's input, in [0, 1) (default: the one it was trained with, recorded in its file; 0 = fresh noise, as DMD2)" };
    public static Option<bool> AllowChanges() => new("--allow-changes") { Description = "continue the run in --out even though its settings differ from the saved ones" };

    /// <summary>What a training command passes to its trainer: progress, status lines, a clean stop on Ctrl-C/SIGTERM.</summary>
    public static RunOptions RunOptions(ParseResult r, Option<bool> allowChanges, Action<int, int, IReadOnlyDictionary<string, double>> onStep, Func<bool> stop) => new()
    {
        OnStep = onStep,
        OnMessage = m => AnsiConsole.MarkupLine(Markup.Escape(m)),
        Stop = stop,
        AllowChanges = r.GetValue(allowChanges),
    };

    public static T LoadConfig<T>(ParseResult r, Option<string?> file, ConfigOptions<T> opts) where T : class, new()
    {
        var path = r.GetValue(file);
        return opts.Bind(r, path is null ? null : Checkpoint.LoadSettings<T>(path));
    }

    /// <summary>Whole-number options that must be at least 1 (counts, sizes, repeats): a one-line error otherwise.</summary>
    /// <summary>The error for <c>--prompts</c> with a teacher that is not a diffusers text-to-image folder (an SD single file is named as one).</summary>
    public static DmdInputException PromptsNeedTextToImage(string teacherPath) =>
        new(DenoiserFile.IsStableDiffusionSingleFile(teacherPath) ? DenoiserFile.SingleFileHint(teacherPath)
            : "--prompts: the teacher is not a text-to-image (diffusers Stable Diffusion) folder; prompts condition only those");

    public static void RequirePositive(ParseResult r, params Option[] options)
    {
        foreach (var o in options)
        {
            long? v = o switch { Option<int> i => r.GetValue(i), Option<int?> ni => r.GetValue(ni), Option<long> l => r.GetValue(l), _ => null };
            if (v is long x && x < 1) throw new DmdInputException($"{o.Name} {x}: must be at least 1");
        }
    }

    public static void ResultsTable(IEnumerable<ModelResult> rows)
    {
        var t = new Table().AddColumns("model", "NFE", "energy dist.", "precision", "recall", "modes", "in-mode", "samples/s");
        foreach (var r in rows)
            t.AddRow(Markup.Escape(r.Model), r.Nfe.ToString(), r.EnergyDistance.ToString("F4", CultureInfo.InvariantCulture),
                     r.Precision.ToString("F3", CultureInfo.InvariantCulture), r.Recall.ToString("F3", CultureInfo.InvariantCulture),
                     r.Modes is null ? "-" : $"{r.ModesCovered}/{r.Modes}", r.HighQuality?.ToString("P1", CultureInfo.InvariantCulture) ?? "-",
                     r.SamplesPerSecond.ToString("N0", CultureInfo.InvariantCulture));
        AnsiConsole.Write(t);
    }
}
