using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Dmd.Data;
using Dmd.IO;
using Dmd.Metrics;
using Dmd.Training;
using Spectre.Console;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>What `dmd train-classifier` did, saved beside the weights as training.json.</summary>
public sealed record ClassifierRunInfo(FmnistClassifierConfig Config, long Parameters, int FeatureDim, double TestAccuracy,
                                       double[] TestAccuracyPerClass, double TrainSeconds, int Threads, string Machine,
                                       int StatsImages, string DataFolder);

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
            var folder = DataSource.Parse(r.GetValue(data)!).FashionMnistFolder("the classifier");
            var outDir = r.GetValue(outOpt)!;
            Checkpoint.EnsureWritableFolder(outDir, "--out");
            var train = FashionMnist.Load(test: false, folder, padTo32: true);
            var test = FashionMnist.Load(test: true, folder, padTo32: true);
            Console.WriteLine($"classifier: {FmnistClassifier.ParameterCount:N0} parameters; {train.Count:N0} training images, " +
                              $"{cfg.Epochs} epochs of batch {cfg.BatchSize}, {torch.get_num_threads()} thread(s)");

            var sw = Stopwatch.StartNew();
            using var trainer = new ClassifierTrainer(train, cfg);
            using var signal = new StopSignal();
            bool finished = true;
            ProgressView.Run(report => finished = trainer.Run(outDir, r.GetValue(data)!, Common.RunOptions(r, allow,
                (s, n, l) => report("classifier", s, n, l), () => signal.Requested)));
            if (!finished)
            {
                AnsiConsole.MarkupLine($"stopped on request at step {trainer.Step} of {trainer.TotalSteps} (checkpoint written); the same command continues the run");
                return 0;
            }
            var net = trainer.Net;
            double seconds = sw.Elapsed.TotalSeconds;
            if (TrainingUtils.ParameterCount(net) != FmnistClassifier.ParameterCount)
                throw new InvalidOperationException("FmnistClassifier.ParameterCount is out of date");

            var acc = FmnistClassifierTrainer.Evaluate(net, test);
            Console.WriteLine($"test accuracy: {acc}");
            Checkpoint.SaveModule(net, Path.Combine(outDir, FdFmnist.WeightsFile));

            var (mu, sigma) = FdFmnist.ReferenceStatistics(net, test);
            FrechetDistance.SaveStatistics(Path.Combine(outDir, FdFmnist.StatsFile), mu, sigma);

            var info = new ClassifierRunInfo(cfg, FmnistClassifier.ParameterCount, FmnistClassifier.FeatureDim, acc.Overall, acc.PerClass,
                                             Math.Round(seconds, 1), torch.get_num_threads(),
                                             $"{Environment.ProcessorCount} cores, {RuntimeInformation.OSDescription}", (int)test.Count,
                                             folder ?? FashionMnist.DebianFolder);
            Checkpoint.SaveJson(info, Path.Combine(outDir, "training.json"));
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, FdFmnist.WeightsFile))}, {FdFmnist.StatsFile} and training.json " +
                                   $"(training took {seconds / 60:F1} min)");
            return 0;
        });
        return cmd;
    }
}
