using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd;

/// <summary>
/// A thin binding of the few MPI calls data-parallel runs need, to the system's Open MPI (<c>libmpi.so.40</c>, Debian's
/// <c>libopenmpi3</c> / <c>openmpi-bin</c>). It is loaded only when the process was started by an MPI launcher
/// (<c>mpirun</c>, <c>srun</c>: <see cref="Launched"/>); otherwise every call here is the one-process case (rank 0 of 1,
/// collectives return their input) and nothing needs MPI installed.
/// Open MPI's handles (<c>MPI_COMM_WORLD</c>, <c>MPI_FLOAT</c>, <c>MPI_SUM</c>, ...) are the addresses of its global
/// objects (<c>ompi_mpi_comm_world</c>, ...), read with <see cref="NativeLibrary.GetExport"/>; MPICH-family libraries
/// use integer handles and are not supported by this binding.
/// </summary>
public static class Mpi
{
    /// <summary>Environment variables that launchers set in each process they start (Open MPI, PMI/Slurm, PMIx).</summary>
    static readonly string[] LauncherVariables = { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK" };

    /// <summary>Whether this process was started by an MPI launcher (one of its environment variables is set).</summary>
    public static bool Launched => LauncherVariables.Any(v => Environment.GetEnvironmentVariable(v) is not null);

    /// <summary>Whether MPI is initialised in this process (<see cref="Init"/> ran under a launcher).</summary>
    public static bool Active { get; private set; }

    /// <summary>This process's rank in the job (0 without MPI).</summary>
    public static int Rank { get; private set; }

    /// <summary>Processes in the job (1 without MPI).</summary>
    public static int Size { get; private set; } = 1;

    /// <summary>Rank 0: the process that writes logs, checkpoints and results.</summary>
    public static bool IsRoot => Rank == 0;

    /// <summary>Seconds spent inside all-reduce calls so far, and how many were made (the benchmark reports them).</summary>
    public static double AllreduceSeconds { get; private set; }
    /// <summary>All-reduce calls made so far.</summary>
    public static long AllreduceCalls { get; private set; }

    const string Library = "libmpi.so.40";
    const int ThreadFunneled = 1;          // MPI_THREAD_FUNNELED: only the main thread calls MPI
    static readonly IntPtr InPlace = 1;    // Open MPI's MPI_IN_PLACE
    static IntPtr lib, commWorld, mpiFloat, mpiDouble, mpiByte, opSum;

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int InitThreadFn(IntPtr argc, IntPtr argv, int required, out int provided);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int CommIntFn(IntPtr comm, out int value);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int AllreduceFn(IntPtr send, IntPtr recv, int count, IntPtr type, IntPtr op, IntPtr comm);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int BcastFn(IntPtr buffer, int count, IntPtr type, int root, IntPtr comm);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int CommFn(IntPtr comm);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int SetErrhandlerFn(IntPtr comm, IntPtr handler);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int AbortFn(IntPtr comm, int code);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int VoidFn();

    static AllreduceFn? allreduce;
    static BcastFn? bcast;
    static CommFn? barrier;
    static AbortFn? abort;
    static VoidFn? finalize;

    /// <summary>
    /// Under a launcher: loads Open MPI, initialises it (MPI_THREAD_FUNNELED) and reads the rank and size. Without one:
    /// nothing. A launcher without a loadable Open MPI is a <see cref="DmdInputException"/> naming the package, and so is
    /// a task of a multi-task srun step started without MPI (srun --mpi=none).
    /// </summary>
    public static void Init()
    {
        if (Active) return;
        if (!Launched)
        {
            // a task of a multi-task srun step without MPI wiring (srun --mpi=none, a cluster whose MpiDefault is none):
            // each task would run the whole job alone, all of them writing the same run folder
            if (int.TryParse(Environment.GetEnvironmentVariable("SLURM_STEP_NUM_TASKS"), out int tasks) && tasks > 1 &&
                Environment.GetEnvironmentVariable("SLURM_PROCID") is string task)
                throw new DmdInputException($"started by srun as task {task} of {tasks} without MPI (no PMIx variables): run srun with --mpi=pmix " +
                                            "(Debian's Open MPI has no PMI-2), or start one task");
            return;
        }
        // Open MPI opens its plugins with dlopen and they resolve symbols of libmpi itself, so it must be loaded globally
        if (OperatingSystem.IsLinux()) DlopenGlobal(Library);
        if (!NativeLibrary.TryLoad(Library, out lib))
            throw new DmdInputException($"started by an MPI launcher, but {Library} (Open MPI) cannot be loaded: install it (apt-get install openmpi-bin) " +
                                        "or run the command without mpirun/srun");
        T Fn<T>(string name) where T : Delegate => Marshal.GetDelegateForFunctionPointer<T>(NativeLibrary.GetExport(lib, name));
        if (!NativeLibrary.TryGetExport(lib, "ompi_mpi_comm_world", out commWorld))
            throw new DmdInputException($"{Library} is not Open MPI (no ompi_mpi_comm_world): this binding supports Open MPI only");
        mpiFloat = NativeLibrary.GetExport(lib, "ompi_mpi_float");
        mpiDouble = NativeLibrary.GetExport(lib, "ompi_mpi_double");
        mpiByte = NativeLibrary.GetExport(lib, "ompi_mpi_byte");
        opSum = NativeLibrary.GetExport(lib, "ompi_mpi_op_sum");
        allreduce = Fn<AllreduceFn>("MPI_Allreduce");
        bcast = Fn<BcastFn>("MPI_Bcast");
        barrier = Fn<CommFn>("MPI_Barrier");
        abort = Fn<AbortFn>("MPI_Abort");
        finalize = Fn<VoidFn>("MPI_Finalize");
        Check(Fn<InitThreadFn>("MPI_Init_thread")(IntPtr.Zero, IntPtr.Zero, ThreadFunneled, out _), "MPI_Init_thread");
        // errors come back as return codes (then a one-line error here) instead of ending the process inside the library
        Check(Fn<SetErrhandlerFn>("MPI_Comm_set_errhandler")(commWorld, NativeLibrary.GetExport(lib, "ompi_mpi_errors_return")), "MPI_Comm_set_errhandler");
        Check(Fn<CommIntFn>("MPI_Comm_rank")(commWorld, out int rank), "MPI_Comm_rank");
        Check(Fn<CommIntFn>("MPI_Comm_size")(commWorld, out int size), "MPI_Comm_size");
        (Rank, Size, Active) = (rank, size, true);
    }

    [DllImport("libc", EntryPoint = "dlopen")] static extern IntPtr Dlopen(string file, int mode);
    static void DlopenGlobal(string name)
    {
        try { Dlopen(name, 0x101); } // RTLD_LAZY | RTLD_GLOBAL; a failure shows in TryLoad below
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

    /// <summary>Ends MPI after a run that finished normally (every rank must call it). Nothing without MPI.</summary>
    public static void Shutdown()
    {
        if (!Active) return;
        Active = false;
        finalize!();
    }

    /// <summary>Ends every process of the job with <paramref name="code"/> (after an error on one rank, so that the others do not wait for it).</summary>
    public static void Abort(int code)
    {
        if (Active) abort!(commWorld, code);
    }

    /// <summary>Waits until every rank has reached this call.</summary>
    public static void Barrier()
    {
        if (Active) Check(barrier!(commWorld), "MPI_Barrier");
    }

    /// <summary>Replaces each element of <paramref name="values"/> by its sum over all ranks.</summary>
    public static void AllreduceSum(float[] values) => Pinned(values, p => Allreduce(p, values.Length, mpiFloat));

    /// <summary>Replaces each element of <paramref name="values"/> by its sum over all ranks.</summary>
    public static void AllreduceSum(double[] values) => Pinned(values, p => Allreduce(p, values.Length, mpiDouble));

    static void Pinned(Array values, Action<IntPtr> call)
    {
        if (!Active || values.Length == 0) return;
        var h = GCHandle.Alloc(values, GCHandleType.Pinned);
        try { call(h.AddrOfPinnedObject()); }
        finally { h.Free(); }
    }

    static void Allreduce(IntPtr buffer, int count, IntPtr type)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Check(allreduce!(InPlace, buffer, count, type, opSum, commWorld), "MPI_Allreduce");
        AllreduceSeconds += clock.Elapsed.TotalSeconds;
        AllreduceCalls++;
    }

    /// <summary>
    /// The sum over all ranks of a float32 or float64 tensor, as a new tensor on its device (through host memory: the
    /// binding does not assume a CUDA-aware MPI). Without MPI, a copy of the tensor.
    /// </summary>
    public static Tensor AllreduceSum(Tensor t)
    {
        if (!Active) return t.clone();
        using var host = t.detach().cpu().contiguous();
        if (t.dtype == ScalarType.Float64)
        {
            var buf = host.data<double>().ToArray();
            AllreduceSum(buf);
            return torch.tensor(buf, host.shape, dtype: ScalarType.Float64).to(t.device);
        }
        if (t.dtype != ScalarType.Float32) throw new ArgumentException($"all-reduce of {t.dtype} tensors is not supported (float32, float64)");
        var f = host.data<float>().ToArray();
        AllreduceSum(f);
        return torch.tensor(f, host.shape, dtype: ScalarType.Float32).to(t.device);
    }

    /// <summary>Copies <paramref name="bytes"/> of rank <paramref name="root"/> into every rank's array (same length everywhere).</summary>
    public static void Broadcast(byte[] bytes, int root = 0) =>
        Pinned(bytes, p => Check(bcast!(p, bytes.Length, mpiByte, root, commWorld), "MPI_Bcast"));

    static void Check(int rc, string call)
    {
        if (rc != 0)
            throw new DmdException($"{call} failed with MPI error {rc} on rank {Rank} of {Size}: another process of the job has probably " +
                                   "failed or been killed (see the launcher's message). Checkpoints already written are intact: run the same command again to resume");
    }
}
