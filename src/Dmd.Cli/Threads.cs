using System.CommandLine;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>
/// CPU threads for libtorch. Point-data models are tiny matrices: one thread is fastest, and with several
/// threads OpenMP's spin-waiting makes them many times slower when other processes share the cores
/// (measured: 100 DMD steps in 5 s with 1 thread vs 76 s with 2 on a loaded 2-core machine).
/// </summary>
internal static class Threads
{
    public static readonly Option<int?> Option = new("--threads")
    {
        Description = "CPU threads for libtorch (default: 1 for point data, all cores for images)",
        Recursive = true,
    };

    public static void Apply(ParseResult r, bool smallModel)
    {
        int n = r.GetValue(Option) ?? (smallModel ? 1 : Environment.ProcessorCount);
        torch.set_num_threads(Math.Max(1, n));
    }
}
