using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Training;

/// <summary>
/// Data-parallel training over MPI (<see cref="Mpi"/>), as PyTorch's DDP does it: every rank builds the same networks
/// from the same seed, draws its own share of every batch, and before each optimiser step the gradients of each trained
/// network are averaged over the ranks through one flat buffer, so all ranks take the same step and keep identical
/// weights. Rank 0 alone writes logs, checkpoints and results.
/// With one process (no launcher, or a launcher with one rank) every method here leaves the run exactly as it was:
/// the batch is the option's value and the run's random generator one continuous stream, as before MPI existed.
/// </summary>
public static class DataParallel
{
    /// <summary>This process's rank (0 without MPI).</summary>
    public static int Rank => Mpi.Rank;
    /// <summary>Ranks in the job (1 without MPI).</summary>
    public static int Size => Mpi.Size;
    /// <summary>Whether this process writes the run's files (rank 0).</summary>
    public static bool IsRoot => Mpi.IsRoot;

    /// <summary>
    /// This rank's share of a global batch of <paramref name="global"/> samples (the option's value); a one-line error
    /// naming <paramref name="option"/> when the ranks cannot split it evenly.
    /// </summary>
    public static int Share(int global, string option)
    {
        if (global % Size != 0)
            throw new DmdInputException($"{option} {global} does not split evenly over {Size} ranks: give a multiple of {Size} " +
                                        "(it is the global batch; each rank draws an equal share of it)");
        return global / Size;
    }

    /// <summary>
    /// At the start of step <paramref name="step"/> of a run with more than one rank: seeds the run's generator and
    /// libtorch's global one (dropout) from (run seed, rank, step), so each rank draws its own share and a run resumed
    /// on any number of ranks draws from a state it can rebuild. With one rank: nothing (the run's generator stays the
    /// one continuous stream its checkpoints save).
    /// </summary>
    public static void SeedStep(Generator rng, long seed, int step)
    {
        if (Size == 1) return;
        ulong s = StepSeed(seed, Rank, step);
        rng.manual_seed(unchecked((long)s));
        torch.manual_seed(unchecked((long)SplitMix((s ^ 0xD1B54A32D192ED03UL))));
    }

    /// <summary>The seed of rank <paramref name="rank"/>'s draws at step <paramref name="step"/> of a multi-rank run.</summary>
    public static ulong StepSeed(long seed, int rank, int step) =>
        SplitMix(SplitMix(SplitMix((ulong)seed) ^ (ulong)(uint)rank) ^ (ulong)(uint)step) >> 1; // >> 1: a non-negative long

    /// <summary>
    /// A draw in [0, <paramref name="n"/>) that every rank makes alike: the <paramref name="index"/>-th of step
    /// <paramref name="step"/>, for choices the ranks must share (which network a step trains); the same in a one-process run.
    /// </summary>
    public static int SharedDraw(long seed, int step, int index, int n) =>
        (int)(SplitMix(StepSeed(seed, 0, step) ^ SplitMix((ulong)(uint)index + 1)) % (ulong)n);

    static ulong SplitMix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>
    /// Averages the gradients of the parameters of <paramref name="modules"/> over the ranks (MPI_Allreduce of their sum,
    /// divided by the number of ranks) through one flat buffer: one call per network per step, not one per tensor. Every
    /// rank must call it at the same point with the same networks (their gradients exist on every rank alike, as the
    /// ranks run the same code). With one rank: nothing.
    /// </summary>
    public static void AverageGradients(params nn.Module[] modules)
    {
        if (Size == 1) return;
        var ps = modules.SelectMany(m => m.parameters()).Where(p => p.grad is not null).ToList();
        if (ps.Count == 0) return;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var flat = cat(ps.Select(p => p.grad!.detach().reshape(-1)).ToArray());
        var mean = Mpi.AllreduceSum(flat).div_(Size);
        long offset = 0;
        foreach (var p in ps)
        {
            long n = p.grad!.numel();
            p.grad!.copy_(mean.narrow(0, offset, n).view(p.grad!.shape));
            offset += n;
        }
    }

    /// <summary>The mean over the ranks of each logged value (the same keys on every rank). With one rank: the values.</summary>
    public static Dictionary<string, double> Mean(Dictionary<string, double> values)
    {
        if (Size == 1) return values;
        var keys = values.Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();
        var buf = keys.Select(k => values[k]).ToArray();
        Mpi.AllreduceSum(buf);
        var mean = keys.Select((k, i) => (k, v: buf[i] / Size)).ToDictionary(t => t.k, t => t.v);
        return values.Keys.ToDictionary(k => k, k => mean[k]); // in the trainer's order (the log's columns)
    }

    /// <summary>The mean of one value over the ranks. With one rank: the value.</summary>
    public static double Mean(double value)
    {
        if (Size == 1) return value;
        var buf = new[] { value };
        Mpi.AllreduceSum(buf);
        return buf[0] / Size;
    }

    /// <summary>Whether any rank says true (e.g. a stop request that reached one process): all ranks then stop together.</summary>
    public static bool Any(bool value)
    {
        if (Size == 1) return value;
        var buf = new[] { value ? 1.0 : 0.0 };
        Mpi.AllreduceSum(buf);
        return buf[0] > 0;
    }

    /// <summary>
    /// A SHA-256 checksum (first 16 hex digits) of every parameter and buffer of <paramref name="modules"/> (nulls skipped),
    /// in order: equal on all ranks when they hold the same weights bit for bit.
    /// </summary>
    public static string Checksum(params nn.Module?[] modules)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var m in modules)
        {
            if (m is null) continue;
            foreach (var (name, t) in m.state_dict())
            {
                sha.AppendData(System.Text.Encoding.UTF8.GetBytes(name));
                using var host = t.detach().cpu().contiguous();
                sha.AppendData(host.bytes);
            }
        }
        return Convert.ToHexString(sha.GetHashAndReset())[..16].ToLowerInvariant();
    }
}
