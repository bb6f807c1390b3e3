using System.CommandLine;
using Dmd.Cli;
using Dmd.IO;
using Spectre.Console;

// Logs and pipes get Spectre's 80-column default, which wraps the results tables; give them room.
if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 132);

var root = new RootCommand("Distribution Matching Distillation: turn a diffusion teacher into a one-step generator.");
root.Options.Add(Threads.Option);
root.Subcommands.Add(DemoCommand.Build());
root.Subcommands.Add(Toy2dCommand.Build());
root.Subcommands.Add(TeacherCommand.Build());
root.Subcommands.Add(ImageTeacherCommand.Build());
root.Subcommands.Add(PairsCommand.Build());
root.Subcommands.Add(DistillCommand.Build());
root.Subcommands.Add(SampleCommand.Build());
root.Subcommands.Add(BenchCommand.Build());
root.Subcommands.Add(EvalCommand.Build());
root.Subcommands.Add(ClassifierCommand.Build());

try
{
    return root.Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (DmdInputException e)
{
    // one plain line on stderr (no wrapping, no markup), so scripts and people both read it
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
