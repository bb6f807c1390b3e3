using System.CommandLine;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>
/// Where the networks compute: <c>--device cpu</c> (the default), <c>cuda</c> or <c>cuda:N</c>. The commands that train,
/// make pairs, sample or evaluate take it (each adds <see cref="Option"/>) and move their networks there; noise and data
/// are drawn on the host (so a run's numbers do not depend on the device's random generator) and moved batch by batch.
/// The others (bench, demo, toy2d, train-classifier) run on the CPU and do not accept it.
/// </summary>
internal static class Devices
{
    public static readonly Option<string> Option = new("--device")
    {
        Description = "where the networks compute: cpu, cuda or cuda:N (CUDA needs a build with -p:TorchSharpBackend=cuda-linux)",
        DefaultValueFactory = _ => "cpu",
    };

    /// <summary>The device the option names, checked: a device this build and machine cannot use is a one-line error.</summary>
    public static torch.Device Get(ParseResult r) => Parse(r.GetValue(Option) ?? "cpu");

    internal static torch.Device Parse(string text)
    {
        var t = text.Trim().ToLowerInvariant();
        if (t == "cpu") return torch.CPU;
        if (t == "cuda" || t.StartsWith("cuda:"))
        {
            int index = 0;
            if (t.Length > 4 && (!int.TryParse(t[5..], out index) || index < 0))
                throw new DmdInputException($"--device {text}: give cuda or cuda:N with N a device number");
            if (!torch.cuda.is_available())
                throw new DmdInputException($"--device {text}: libtorch finds no CUDA device (a TorchSharp-cpu build never does); " +
                                            "build with `dotnet build -p:TorchSharpBackend=cuda-linux` on a machine with an NVIDIA driver, or use --device cpu");
            if (index >= torch.cuda.device_count())
                throw new DmdInputException($"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered 0..{torch.cuda.device_count() - 1}");
            return new torch.Device(DeviceType.CUDA, index);
        }
        throw new DmdInputException($"--device {text}: use cpu, cuda or cuda:N");
    }
}
