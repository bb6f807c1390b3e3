using System.CommandLine;
using Dmd.Distillation;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd export`: a distillation checkpoint written as a generator folder (to keep a good step of a run).</summary>
internal static class ExportCommand
{
    public static Command Build()
    {
        var cmd = new Command("export", "Write a `dmd distill` run's checkpoint (RUN/checkpoint for the latest, or RUN/checkpoint/step-NNNNNNNN) as a " +
                                        "generator folder that sample, eval, bench, --init-generator and OneStepGenerator.Load read: the generator the run " +
                                        "would write if stopped there (its weight average with --ema-decay), to keep a good step before the run goes on past it (a run keeps only its latest checkpoint).");
        var model = new Option<string>("--model") { Description = "the checkpoint: RUN/checkpoint (the latest; a run keeps only that one) or its folder RUN/checkpoint/step-NNNNNNNN", Required = true };
        var outOpt = new Option<string>("--out", "-o") { Description = "the folder to write (must not hold a generator yet)", Required = true };
        cmd.Options.Add(model);
        cmd.Options.Add(outOpt);
        cmd.SetAction(r =>
        {
            string outDir = r.GetValue(outOpt)!;
            int step = OneStepGenerator.ExportCheckpoint(r.GetValue(model)!, outDir);
            AnsiConsole.MarkupLine(Markup.Escape($"wrote the generator of step {step} to {Path.Combine(outDir, OneStepGenerator.FileName)} (and config.json)"));
            return 0;
        });
        return cmd;
    }
}
