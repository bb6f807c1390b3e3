using System.CommandLine;
using Dmd.Data;
using Dmd.IO;
using Dmd.Metrics;
using Dmd.Training;
using Spectre.Console;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>
/// `dmd train-classifier`: trains the Fashion-MNIST feature network of FD-FMNIST on the training split, reports its
/// test accuracy, and writes the weights with the test split's feature statistics (the shipped models/fmnist-classifier).
/// </summary>
internal static class ClassifierCommand
{
    public static Command Build()
    {
        var cmd = new Command("train-classifier", "Train the Fashion-MNIST classifier behind FD-FMNIST (train split only) and save it with the test split's feature statistics; resumes if --out holds a checkpoint.");
        var data = new Option<string>("--data")
        {
            Description = $"fashion-mnist (the files in {FashionMnist.DebianFolder}) or fashion-mnist:FOLDER", DefaultValueFactory = _ => "fashion-mnist",
        };
        var outOpt = Common.Out("runs/fmnist-classifier"); // the shipped one (models/fmnist-classifier) is replaced only when named
        var cfgFile = Common.ConfigFile();
        var allow = Common.AllowChanges();
        foreach (var o in new Option[] { data, outOpt, cfgFile, allow }) cmd.Options.Add(o);
        var opts = new ConfigOptions<FmnistClassifierConfig>(cmd);
        cmd.SetAction(r =>
        {
            Threads.Apply(r, smallModel: false);
            var cfg = Common.LoadConfig(r, cfgFile, opts);
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            using var trainer = ClassifierTrainer.ForFashionMnist(r.GetValue(data)!, cfg);
            Console.WriteLine($"classifier: {FmnistClassifier.ParameterCount:N0} parameters; {trainer.TrainImages:N0} training images, " +
                              $"{cfg.Epochs} epochs of batch {cfg.BatchSize}, {Wording.Threads(torch.get_num_threads())}");
            using var signal = new StopSignal();
            ClassifierRunInfo? info = null;
            ProgressView.Run(report => info = trainer.RunAndSave(outDir, Common.RunOptions(r, allow,
                (s, n, l) => report("classifier", s, n, l), () => signal.Requested)));
            if (info is null)
            {
                AnsiConsole.MarkupLine($"stopped on request at step {trainer.Step} of {trainer.TotalSteps} (checkpoint written); the same command continues the run");
                return 0;
            }
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, FdFmnist.WeightsFile))}, {FdFmnist.StatsFile} and {FdFmnist.TrainingFile} " +
                                   $"(training took {info.TrainSeconds / 60:F1} min)");
            return 0;
        });
        return cmd;
    }
}
