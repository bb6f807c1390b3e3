using System.CommandLine;
using Dmd.Cli;
using Dmd;
using Spectre.Console;

Dmd.NativeSetup.Apply(); // before libtorch runs anything (see there)

// Logs and pipes get Spectre's 80-column default, which wraps the results tables; give them room.
if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 132);

// a root named "dmd" (a RootCommand takes the assembly's name, Dmd.Cli, into every usage line), with the root's options
var root = new Command("dmd", "Distribution Matching Distillation: turn a diffusion teacher into a one-step generator.");
root.Options.Add(new System.CommandLine.Help.HelpOption());
root.Options.Add(new VersionOption());
root.Options.Add(Threads.Option);
root.Subcommands.Add(DemoCommand.Build());
root.Subcommands.Add(Toy2dCommand.Build());
root.Subcommands.Add(TeacherCommand.Build());
root.Subcommands.Add(ImageTeacherCommand.Build());
root.Subcommands.Add(TextToImageTeacherCommand.Build());
root.Subcommands.Add(PairsCommand.Build());
root.Subcommands.Add(DistillCommand.Build());
root.Subcommands.Add(SampleCommand.Build());
root.Subcommands.Add(ExportCommand.Build());
root.Subcommands.Add(Text2ImgCommand.Build());
root.Subcommands.Add(ConvertSdCommand.Build());
root.Subcommands.Add(BenchCommand.Build());
root.Subcommands.Add(EvalCommand.Build());
root.Subcommands.Add(ClassifierCommand.Build());

try
{
    // under mpirun/srun: one process of a data-parallel job (see Dmd.Training.DataParallel); rank 0 alone prints
    Mpi.Init();
    if (!Mpi.IsRoot) AnsiConsole.Console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) });
    var parsed = root.Parse(args);
    if (Mpi.Size > 1 && parsed.CommandResult.Command.Name is "demo" or "toy2d" or "sample" or "export" or "text2img" or "convert-sd" or "bench" or "train-classifier")
        throw new DmdInputException($"dmd {parsed.CommandResult.Command.Name} does not run data-parallel: run it without mpirun/srun " +
                                    "(train-teacher, train-image-teacher, distill, pairs and eval do)");
    int exit = parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
    Mpi.Shutdown();
    return exit;
}
catch (Exception e)
{
    // every failure is one plain line on stderr (no wrapping, no markup) and a non-zero exit, so scripts and people both read it:
    // 2 for bad input and runs that cannot continue, 74 for files that cannot be read or written, 70 for anything unexpected
    var inner = e is AggregateException a && a.InnerExceptions.Count == 1 ? a.InnerExceptions[0] : e;
    var (code, text) = inner switch
    {
        DmdException d => (2, d.Message),
        UnauthorizedAccessException u => (74, $"permission denied: {u.Message} (choose a folder you can write, e.g. with --out)"),
        IOException io when IsDiskFull(io) => (74, $"the disk is full: {io.Message} (free space or write elsewhere; checkpoints already written are intact)"),
        IOException io => (74, $"{io.Message} (check the path and that the disk has room)"),
        _ => (70, $"unexpected {inner.GetType().Name}: {inner.Message} (set DMD_DEBUG=1 for the stack trace; please report it)"),
    };
    // in a job of several processes, bad input fails every rank alike: rank 0 says it; other failures name their rank.
    // A failed rank exits without MPI_Finalize, and the launcher then ends the whole job with a non-zero code.
    if (Mpi.Size > 1 && !Mpi.IsRoot && inner is DmdInputException)
    {
        Thread.Sleep(5000); // give rank 0 the time to say it before the launcher ends the job for this rank's exit
        return code;
    }
    Console.Error.WriteLine($"error: {(Mpi.Size > 1 ? $"rank {Mpi.Rank}/{Mpi.Size}: " : "")}{text.ReplaceLineEndings(" ")}");
    if (Environment.GetEnvironmentVariable("DMD_DEBUG") is "1") Console.Error.WriteLine(e);
    return code;
}

static bool IsDiskFull(IOException e) => (e.HResult & 0xFFFF) == 28 /* ENOSPC */ || e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);
