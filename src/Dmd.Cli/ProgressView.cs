using System.Diagnostics;
using System.Globalization;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>
/// Progress with ETA for long work: live bars in a terminal (Spectre.Console), a line every 10 % otherwise
/// (logs, CI). Stages appear as they start.
/// </summary>
internal sealed class ProgressView
{
    public static void Run(Action<Action<string, int, int, IReadOnlyDictionary<string, double>?>> work)
    {
        if (!Mpi.IsRoot) { work((_, _, _, _) => { }); return; } // in an MPI job rank 0 alone shows progress
        if (AnsiConsole.Profile.Capabilities.Interactive && !Console.IsOutputRedirected)
        {
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                         new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                .Start(ctx =>
                {
                    var tasks = new Dictionary<string, ProgressTask>();
                    work((stage, done, total, values) =>
                    {
                        if (!tasks.TryGetValue(stage, out var t)) tasks[stage] = t = ctx.AddTask(stage, maxValue: total);
                        t.MaxValue = total;
                        t.Value = done;
                        t.Description = Markup.Escape(stage + Format(values));
                    });
                });
        }
        else
        {
            // the rate counts only work done since the first report, so a resumed run's ETA is not fooled by what it skipped
            var clocks = new Dictionary<string, (Stopwatch Clock, int FirstDone, int LastDecile)>();
            work((stage, done, total, values) =>
            {
                if (!clocks.TryGetValue(stage, out var c)) clocks[stage] = c = (Stopwatch.StartNew(), done, -1);
                int decile = total == 0 ? 10 : (int)(10L * done / total);
                if (decile == c.LastDecile) return;
                clocks[stage] = (c.Clock, c.FirstDone, decile);
                double elapsed = c.Clock.Elapsed.TotalSeconds;
                double eta = done >= total ? 0 : done > c.FirstDone ? elapsed / (done - c.FirstDone) * (total - done) : double.NaN;
                Console.WriteLine($"{stage}: {done}/{total} ({100.0 * done / Math.Max(1, total):F0} %), {elapsed:F0} s elapsed, ETA {(double.IsNaN(eta) ? "?" : eta.ToString("F0", CultureInfo.InvariantCulture) + " s")}{Format(values)}");
            });
        }
    }

    static string Format(IReadOnlyDictionary<string, double>? values) =>
        values is null ? "" : "  " + string.Join("  ", values.Where(kv => kv.Key == "step" || kv.Key.StartsWith("loss")).Select(kv => $"{kv.Key} {kv.Value.ToString(kv.Key == "step" ? "F0" : "G3", CultureInfo.InvariantCulture)}"));
}
