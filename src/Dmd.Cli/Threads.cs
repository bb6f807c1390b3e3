using System.CommandLine;
using System.Globalization;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>
/// CPU threads for libtorch. Point-data models are tiny matrices: one thread is fastest, and with several
/// threads OpenMP's spin-waiting makes them many times slower when other processes share the cores
/// (measured: 100 DMD steps in 5 s with 1 thread vs 76 s with 2 on a loaded 2-core machine). Image models use the
/// cores that are idle when the command starts: on a 2-core machine with the other core busy, 2 threads ran 6-10x
/// slower than 1, while on a quiet one 2 threads are ~1.5x faster than 1.
/// </summary>
internal static class Threads
{
    public static readonly Option<int?> Option = new("--threads")
    {
        Description = "CPU threads for libtorch (default: 1 for point data; for images, the cores idle at start)",
        Recursive = true,
    };

    public static void Apply(ParseResult r, bool smallModel)
    {
        int max = 4 * Environment.ProcessorCount;
        if (r.GetValue(Option) is int n && (n < 1 || n > max))
            throw new DmdInputException($"--threads {n}: give 1 to {max} (this machine has {Environment.ProcessorCount} cores)");
        // set explicitly in every case: under mpirun libtorch otherwise starts with one thread per rank
        torch.set_num_threads(r.GetValue(Option) ?? (smallModel ? 1 : Math.Max(1, IdleCores() / RanksOnThisMachine())));
    }

    /// <summary>Processes of an MPI job on this machine (they share its cores); 1 outside a job.</summary>
    static int RanksOnThisMachine()
    {
        if (!Mpi.Active) return 1;
        foreach (var v in new[] { "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE" })
            if (int.TryParse(Environment.GetEnvironmentVariable(v), out int n) && n > 0) return n;
        return 1;
    }

    /// <summary>Cores not busy with other work, from two readings of /proc/stat 200 ms apart (all cores where it cannot tell).</summary>
    internal static int IdleCores()
    {
        int cores = Environment.ProcessorCount;
        static (double Idle, double Total)? Read()
        {
            try
            {
                var f = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1)
                    .Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
                return (f[3] + (f.Length > 4 ? f[4] : 0), f.Sum());
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException) { return null; }
        }
        var a = Read();
        if (a is null) return cores;
        Thread.Sleep(200);
        var b = Read();
        if (b is null || b.Value.Total <= a.Value.Total) return cores;
        double idleShare = (b.Value.Idle - a.Value.Idle) / (b.Value.Total - a.Value.Total);
        return Math.Clamp((int)Math.Round(idleShare * cores), 1, cores);
    }
}
