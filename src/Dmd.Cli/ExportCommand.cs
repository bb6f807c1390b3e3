using System.CommandLine;
using Dmd.Distillation;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd export`: a distillation checkpoint written as a generator folder (to keep a good step of a run), or the mean of several generators.</summary>
internal static class ExportCommand
{
    public static Command Build()
    {
        var cmd = new Command("export", "Write a `dmd distill` run's checkpoint (RUN/checkpoint for the latest, or RUN/checkpoint/step-NNNNNNNN) as a " +
                                        "generator folder that sample, eval, bench, --init-generator and OneStepGenerator.Load read: the generator the run " +
                                        "would write if stopped there (its weight average with --ema-decay), to keep a good step before the run goes on past it (a run keeps only its latest checkpoint); " +
                                        "or, with several --model, the mean of their weights.");
        var model = new Option<string[]>("--model")
        {
            Description = "the checkpoint: RUN/checkpoint (the latest; a run keeps only that one) or its folder RUN/checkpoint/step-NNNNNNNN; " +
                          "given more than once, the mean of those generators' weights (steps kept with `distill --keep-every`, RUN/kept/step-NNNNNNNN, " +
                          "checkpoints or generator folders of one run's settings): a longer weight average than the run's own",
            Required = true, Arity = ArgumentArity.OneOrMore,
        };
        var outOpt = new Option<string>("--out", "-o") { Description = "the folder to write (must not hold a generator yet)", Required = true };
        cmd.Options.Add(model);
        cmd.Options.Add(outOpt);
        cmd.SetAction(r =>
        {
            string outDir = r.GetValue(outOpt)!;
            var sources = r.GetValue(model)!;
            if (sources.Length > 1)
            {
                OneStepGenerator.ExportAverage(sources, outDir);
                AnsiConsole.MarkupLine(Markup.Escape($"wrote the mean of {sources.Length} generators' weights to {Path.Combine(outDir, OneStepGenerator.FileName)} (and average.json naming them)"));
                return 0;
            }
            int step = OneStepGenerator.ExportCheckpoint(sources[0], outDir);
            AnsiConsole.MarkupLine(Markup.Escape($"wrote the generator of step {step} to {Path.Combine(outDir, OneStepGenerator.FileName)} (and config.json)"));
            return 0;
        });
        return cmd;
    }
}
